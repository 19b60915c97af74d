"""Reading what the Slurm tools print, and mapping Slurm's job states onto task reports. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from jobyard.model.capacity import GpuInfo

# squeue -o: a separator that never occurs in ids, states, reasons or node lists. %i is the id
# jobyard holds (12, or 12_3 for an array's element); %A the element's own job id (srun wants it).
SQUEUE_FORMAT = "%i|%T|%r|%N|%A|%j"

# squeue -o for finding the jobs a crash left unrecorded: id, state, submit time, name (last: the
# names of other programs' jobs may hold anything).
LISTING_FORMAT = "%i|%T|%V|%j"

# Slurm job states (squeue %T) by what they mean for jobyard's task.
WAITING = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED"}
)
ACTIVE = frozenset({"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "STOPPED"})
ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "DEADLINE"})
# The job's processes are gone without their own exit code: the node (not the program) failed.
VANISHED = frozenset({"NODE_FAIL", "BOOT_FAIL", "PREEMPTED", "REVOKED", "SPECIAL_EXIT"})

_MEANING = {
    "CANCELLED": "cancelled in Slurm",
    "TIMEOUT": "reached its Slurm time limit",
    "OUT_OF_MEMORY": "ran out of memory (Slurm OUT_OF_MEMORY)",
    "DEADLINE": "missed its Slurm deadline",
    "NODE_FAIL": "its Slurm node failed",
    "BOOT_FAIL": "its Slurm node failed to boot",
    "PREEMPTED": "was preempted by Slurm",
    "REVOKED": "was revoked by Slurm (federation)",
    "SPECIAL_EXIT": "ended in Slurm state SPECIAL_EXIT",
}


@dataclass(frozen=True)
class SlurmJob:
    """One line of squeue: a Slurm job's state now."""

    job_id: str
    state: str
    reason: str
    nodes: str
    name: str
    own_id: str  # an array element's own job id (for srun --jobid); a job's is its id

    @property
    def base_state(self) -> str:
        # "CANCELLED by 0" in some outputs; squeue -t all prints the bare word.
        return self.state.split()[0] if self.state else ""


def parse_squeue(text: str) -> dict[str, SlurmJob]:
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|", 5)
        if len(parts) == 6 and parts[0]:
            job_id, state, reason, nodes, own_id, name = parts
            jobs[job_id] = SlurmJob(job_id, state, reason, nodes, name, own_id or job_id)
    return jobs


@dataclass(frozen=True)
class ListedJob:
    """One line of `squeue -o LISTING_FORMAT`."""

    job_id: str
    state: str
    submitted: float  # seconds since the epoch (Slurm prints whole seconds, local time)
    name: str


def parse_listing(text: str) -> list[ListedJob]:
    jobs = []
    for line in text.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) == 4 and parts[0]:
            job_id, state, submitted, name = parts
            jobs.append(
                ListedJob(job_id, state.split()[0] if state else "", _epoch(submitted), name)
            )
    return jobs


def _epoch(local_time: str) -> float:
    try:
        return datetime.fromisoformat(local_time).timestamp()
    except ValueError:  # N/A, Unknown
        return 0.0


def parse_sacct(text: str) -> dict[str, tuple[str, str]]:
    """`sacct -n -P -X -o JobID,State,ExitCode`: id -> (state, "rc:signal")."""
    found = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0]:
            found[parts[0]] = (parts[1].split()[0] if parts[1] else "", parts[2])
    return found


def scontrol_fields(text: str) -> dict[str, str]:
    """`scontrol show job -o <id>`: Key=Value words (values without spaces are enough here)."""
    fields = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if sep and key not in fields:
            fields[key] = value
    return fields


def exit_code_of(slurm_exit: str) -> int | None:
    """Slurm's "rc:signal" as a shell would say it: the code, or 128+signal when killed."""
    rc, _, sig = slurm_exit.partition(":")
    try:
        code, signal = int(rc), int(sig or 0)
    except ValueError:
        return None
    return 128 + signal if signal else code


def meaning(state: str) -> str:
    return _MEANING.get(state, f"ended in Slurm state {state}")


@dataclass(frozen=True)
class NodeInfo:
    name: str
    cpus: int
    memory_mib: int
    gpus: list[tuple[str, int]]  # (type, count)


SINFO_FORMAT = "%N|%c|%m|%G"


def parse_sinfo(text: str) -> list[NodeInfo]:
    """`sinfo -h -N -o '%N|%c|%m|%G'`: one line per node (and partition)."""
    nodes: dict[str, NodeInfo] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4 or not parts[0]:
            continue
        try:
            cpus, memory = int(parts[1].rstrip("+")), int(parts[2].rstrip("+"))
        except ValueError:
            continue
        nodes[parts[0]] = NodeInfo(parts[0], cpus, memory, parse_gres(parts[3]))
    return list(nodes.values())


def parse_gres(gres: str) -> list[tuple[str, int]]:
    """ "gpu:a100:2,gpu:t4:1(S:0)" -> [("a100", 2), ("t4", 1)]; an untyped "gpu:2" -> ("", 2)."""
    found = []
    for item in gres.split(","):
        fields = item.split("(")[0].split(":")
        if fields[0] != "gpu" or len(fields) < 2:
            continue
        count = fields[-1]
        kind = fields[1] if len(fields) >= 3 else ""
        if count.isdigit():
            found.append((kind, int(count)))
    return found


def gpu_inventory(nodes: list[NodeInfo]) -> list[GpuInfo]:
    """Every GPU of the partition, numbered across nodes; the model is Slurm's gres type."""
    gpus: list[GpuInfo] = []
    for node in nodes:
        for kind, count in node.gpus:
            gpus += [GpuInfo(index=len(gpus) + i, model=kind or "gpu") for i in range(count)]
    return gpus


# sstat -P -a -j <ids> --format: the step, its task count, and the per-task averages (TRES).
SSTAT_FORMAT = "JobID,NTasks,TRESUsageInAve"
_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}


@dataclass(frozen=True)
class StepUsage:
    """One line of sstat: a running step's figures, averaged over its tasks (jobacct_gather)."""

    step: str  # "<own job id>.<step>": "12.batch", "12.0"
    tasks: int
    cpu_seconds: float | None  # CPU time per task so far
    rss_bytes: int | None  # resident memory per task at the last gather

    @property
    def job_id(self) -> str:
        return self.step.partition(".")[0]

    @property
    def step_name(self) -> str:
        return self.step.partition(".")[2]


def parse_sstat(text: str) -> list[StepUsage]:
    """`sstat -n -P -a --format JobID,NTasks,TRESUsageInAve`: one StepUsage a line."""
    steps = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3 or "." not in parts[0]:
            continue
        tres = dict(word.partition("=")[::2] for word in parts[2].split(",") if "=" in word)
        steps.append(
            StepUsage(
                step=parts[0],
                tasks=int(parts[1]) if parts[1].isdigit() else 0,
                cpu_seconds=cpu_seconds(tres.get("cpu", "")),
                rss_bytes=size_bytes(tres.get("mem", "")),
            )
        )
    return steps


def cpu_seconds(text: str) -> float | None:
    """Slurm's CPU time, `[D-]HH:MM:SS`, `MM:SS.mmm` or `SS.mmm`, in seconds; None if not one."""
    days, _, clock = text.rpartition("-")
    try:
        parts = [float(part) for part in clock.split(":")]
        whole_days = int(days) if days else 0
    except ValueError:
        return None
    if not 1 <= len(parts) <= 3:
        return None
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    return whole_days * 86400 + seconds


def size_bytes(text: str) -> int | None:
    """Slurm's size, `15000K`, `1.50G` or plain bytes, in bytes; None if not one."""
    number, unit = (text[:-1], text[-1].upper()) if text[-1:].isalpha() else (text, "")
    if unit not in _SIZE_UNITS:
        return None
    try:
        return round(float(number) * _SIZE_UNITS[unit])
    except ValueError:
        return None
