"""What jobyard hands to sbatch: the options (resources, partition, limits) and the batch script.

One jobyard job is one Slurm batch job, or one element of a job array that carries several
one-task jobs with the same resources (each in its own arm of the script). A single task runs in
the batch step itself; a multi-worker job runs its tasks with one `srun` inside the allocation.
Each task runs under a small /bin/sh supervisor (as on the local executor) that records the
node it runs on and writes the task's exit code to `<task>.exit` next to its log, so exit codes
survive Slurm forgetting the job (MinJobAge) and a jobyard restart. Logs and exit files are
written by the compute nodes: on a multi-node cluster the data directory must be on a shared
filesystem.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jobyard.config import SlurmSettings
from jobyard.model import JobSpec

# The task runs in a session of its own (setsid), so that once it has ended whatever it left
# running is killed with its process group, as on the local executor: Slurm's proctrack/linuxproc
# loses track of processes whose parent exited. The supervisor waits for it again after each
# trapped signal (a stop's TERM interrupts `wait`) and then writes its exit code. The trap keeps
# the supervisor alive through that TERM; the task gets default dispositions back on exec. The
# supervisor's stderr is /dev/null and the task's is the log; stdin is passed on (fd 4).
_RUN = (
    "trap : TERM INT HUP; exec 3>&2 2>/dev/null 4<&0; "
    'if command -v setsid >/dev/null; then setsid -w "$@" <&4 2>&3 3>&- 4<&- & _jobyard_t=$!; '
    'else "$@" <&4 2>&3 3>&- 4<&- & _jobyard_t=$!; fi; '
    'while :; do wait "$_jobyard_t"; _jobyard_rc=$?; '
    'kill -0 "$_jobyard_t" 2>/dev/null || break; done; '
)
_REAP = 'kill -KILL -"$_jobyard_t" 2>/dev/null; exit "$_jobyard_rc"'
# The supervisors' own shell variables are named _jobyard_*: a shell exports every variable it
# was given in its environment, so a plain `x=...` would change a job's own $x under the task.
# $1 the exit file, $2 the node file, the rest the task's argv.
_SINGLE = (
    "_jobyard_x=$1; _jobyard_n=$2; shift 2; "
    'printf "%s\\n" "${SLURMD_NODENAME:-$(hostname)}" > "$_jobyard_n"; '
    f'{_RUN}printf "%s\\n" "$_jobyard_rc" > "$_jobyard_x"; {_REAP}'
)
# $1 the path prefix of the task files (<dir>/<display_id>-worker-), the rest the argv.
# Ranks come from Slurm's own variables, under the names the local executor uses.
_MULTI = (
    "_jobyard_p=$1; shift; _jobyard_i=$SLURM_PROCID; _jobyard_n=${SLURM_JOB_NUM_NODES:-1}; "
    "export RANK=$_jobyard_i WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID "
    "NODE_RANK=$SLURM_NODEID NNODES=$_jobyard_n "
    "NPROC_PER_NODE=${SLURM_NTASKS_PER_NODE:-$((SLURM_NTASKS / _jobyard_n))} "
    'JOBYARD_TASK_INDEX=$_jobyard_i JOBYARD_TASK_NAME="${_jobyard_p##*/}$_jobyard_i"; '
    "for _jobyard_v in MASTER_ADDR MASTER_PORT WORLD_SIZE RANK NODE_RANK LOCAL_RANK NNODES "
    'NPROC_PER_NODE; do eval "export JOBYARD_$_jobyard_v=\\"\\$$_jobyard_v\\""; done; '
    'printf "%s\\n" "${SLURMD_NODENAME:-$(hostname)}" > "$_jobyard_p$_jobyard_i.node"; '
    f'{_RUN}printf "%s\\n" "$_jobyard_rc" > "$_jobyard_p$_jobyard_i.exit"; {_REAP}'
)


@dataclass(frozen=True)
class Submission:
    args: list[str]  # sbatch's options; the script goes to its stdin
    script: str


def job_name(job_id: int, display_id: str) -> str:
    return f"jobyard-{job_id}-{display_id}"


def resource_args(
    spec: JobSpec, settings: SlurmSettings, *, gpu_type: str | None, grace: float
) -> list[str]:
    """The options that decide whether and where Slurm can run the job (also `--test-only`'s)."""
    res, n = spec.resources, spec.replicas
    args = [f"--ntasks={n}"]
    if n > 1 and settings.one_task_per_node:
        args += [f"--nodes={n}", "--ntasks-per-node=1"]
    cpus = math.ceil(res.cpus) if res.cpus > 0 else 0
    if cpus:
        args.append(f"--cpus-per-task={cpus}")
    if res.memory > 0:
        if n == 1 or settings.one_task_per_node:
            args.append(f"--mem={res.memory}M")
        else:  # tasks may share a node: memory goes with their CPUs
            args.append(f"--mem-per-cpu={math.ceil(res.memory / max(cpus, 1))}M")
    if res.gpus > 0:
        kind = f"{gpu_type}:" if gpu_type else ""
        if n == 1:
            args.append(f"--gres=gpu:{kind}{res.gpus}")
        else:  # each task its own GPUs (srun binds them per task)
            args.append(f"--gpus-per-task={kind}{res.gpus}")
    if spec.max_runtime is not None:
        # jobyard enforces max_runtime itself (with the stop grace period); Slurm's limit is a
        # backstop a minute later, in whole minutes.
        args.append(f"--time={math.ceil((spec.max_runtime + grace + 60) / 60)}")
    for option, value in (
        ("--partition", settings.partition),
        ("--account", settings.account),
        ("--qos", settings.qos),
    ):
        if value:
            args.append(f"{option}={value}")
    return [*args, *settings.sbatch_args]


def build_submission(
    *,
    name: str,
    spec: JobSpec,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    task_files: Sequence[Path],
    resources: list[str],
    srun: str,
    scontrol: str,
    master_port: int | None,
) -> Submission:
    """`task_files` are the per-task path prefixes (<dir>/<task name>); logs are <prefix>.log."""
    first = task_files[0]
    common = [*_sbatch_options(name, cwd), "--open-mode=append"]
    if spec.replicas == 1:
        launch = single_launch(argv=argv, env=env, task_file=first)
        output = f"{first}.log"
        header = ""
    else:
        prefix = str(first)[: -len("0")]  # <dir>/<display_id>-worker-
        step = ["--kill-on-bad-exit=0", "--input=none", f"--output={prefix}%t.log"]
        if spec.resources.cpus > 0:
            step.append(f"--cpus-per-task={math.ceil(spec.resources.cpus)}")
        if spec.resources.gpus > 0:
            step.append(f"--gpus-per-task={spec.resources.gpus}")
        port = str(master_port) if master_port else "$((20000 + SLURM_JOB_ID % 20000))"
        header = (
            f'MASTER_ADDR=$({shlex.quote(scontrol)} show hostnames "$SLURM_JOB_NODELIST" '
            "2>/dev/null | head -n 1)\n"
            f'export MASTER_ADDR="${{MASTER_ADDR:-$SLURMD_NODENAME}}" MASTER_PORT={port}\n'
        )
        launch = (
            f"exec /usr/bin/env -- {_env_words(env)} {shlex.quote(srun)} "
            f"{_words(step)} /bin/sh -c {shlex.quote(_MULTI)} "
            f"jobyard-task {shlex.quote(prefix)} {_words(argv)}"
        )
        output = f"{prefix}batch.log"
    script = f"#!/bin/sh\n# jobyard: {name}\n{header}{launch}\n"
    return Submission([*common, f"--output={output}", *resources], script)


def _sbatch_options(name: str, chdir: Path) -> list[str]:
    """What every sbatch of jobyard's says: print the id alone, the name, the directory, and
    the submitting environment exported (the tasks' own variables come in the script)."""
    return ["--parsable", f"--job-name={name}", f"--chdir={chdir}", "--export=ALL"]


def _words(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def _env_words(env: Mapping[str, str]) -> str:
    return _words([f"{k}={v}" for k, v in env.items()])


def single_launch(*, argv: Sequence[str], env: Mapping[str, str], task_file: Path) -> str:
    """The line that runs a one-task job under its supervisor (`task_file` is its path prefix)."""
    return (
        f"exec /usr/bin/env -- {_env_words(env)} /bin/sh -c {shlex.quote(_SINGLE)} jobyard-task "
        f"{shlex.quote(str(task_file) + '.exit')} {shlex.quote(str(task_file) + '.node')} "
        + _words(argv)
    )


@dataclass(frozen=True)
class ArrayMember:
    """One one-task job of a job array: what single_launch gave, its cwd and its log."""

    launch: str
    cwd: Path
    log: Path

    def branch(self, index: int) -> str:
        """Its arm of the array script's `case`: output to its own log, its own cwd."""
        cwd = shlex.quote(str(self.cwd))
        return (
            f"{index}) exec >>{shlex.quote(str(self.log))} 2>&1\n"
            f'  cd {cwd} || {{ echo "jobyard: cannot enter "{cwd} >&2; exit 1; }}\n'
            f"  {self.launch} ;;\n"
        )


_ARM = re.compile(r"^(\d+)\) exec >>(.+) 2>&1$", re.MULTILINE)


def array_logs(script: str) -> dict[int, Path]:
    """What `ArrayMember.branch` wrote, read back from an array's script (`scontrol write
    batch_script`): array index -> the log of the job that index runs."""
    found = {}
    for match in _ARM.finditer(script):
        words = shlex.split(match.group(2))
        if len(words) == 1:
            found[int(match.group(1))] = Path(words[0])
    return found


def build_array_submission(
    *, name: str, members: Sequence[ArrayMember], resources: list[str], chdir: Path
) -> Submission:
    """One-task jobs with the same resources as one Slurm job array (one sbatch for all):
    element i runs members[i], with its own log, cwd and environment. Slurm's own notices for
    an element (a time limit, say) go nowhere: each job's log is the one its arm opens."""
    arms = "".join(member.branch(i) for i, member in enumerate(members))
    script = (
        f"#!/bin/sh\n# jobyard: {name}, {len(members)} jobs, one per array index\n"
        f'case "$SLURM_ARRAY_TASK_ID" in\n{arms}'
        '*) echo "jobyard: no job for array index $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;\nesac\n'
    )
    args = [*_sbatch_options(name, chdir), f"--array=0-{len(members) - 1}", "--output=/dev/null"]
    return Submission([*args, *resources], script)
