"""Jobs on an existing Slurm cluster, through its command-line tools.

One jobyard job is one Slurm batch job (`sbatch --parsable`, script on stdin); its tasks are the
job's Slurm tasks. One-task jobs that start in the same pass with the same resources go in one
sbatch, as the elements of a job array (`12_0`, `12_1`, ...; `max_array_size`). Polling is one
`squeue` for every live job per pass (rate-limited); a job's final exit code comes from the
supervisor's `.exit` file, else from `scontrol show job` or `sacct`. Stop is
`scancel --signal=TERM --full`, then Slurm's cancel after the grace period (which kills what is
left after the cluster's KillWait).
A terminal is `srun --jobid <id> --overlap --pty` into the running allocation. Handles carry
the Slurm job id, so a restarted server reattaches by polling; a job Slurm no longer knows
(and that left no exit code) is LOST. A job sbatch took but whose id a crash kept from being
stored is found in squeue by its name, or by the arm of its array's script that writes its log
(find_started).

Why the CLI rather than slurmrestd: the tools work on every cluster where the server's user
may submit, with the site's own auth (munge) and no JWT or REST deployment; slurmrestd's API
versions change with every Slurm release. What it costs (a process per call) is bounded by
batching the polls and a small pool of concurrent commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pwd
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from jobyard.config import EnvironmentSpec, SlurmExecutorSettings
from jobyard.errors import Conflict, ExecutorRefused, ExecutorUnavailable
from jobyard.executors import containers
from jobyard.executors.base import (
    Capacity,
    Executor,
    Handle,
    InterruptedStart,
    ShellCommand,
    StartedTask,
    StartFailed,
    TaskReport,
)
from jobyard.executors.environment import catalog_entry, task_environment
from jobyard.executors.handles import ContainerFields, SlurmHandle
from jobyard.executors.slurm import parse, usage
from jobyard.executors.slurm.commands import Result, Tools
from jobyard.executors.slurm.script import (
    ArrayMember,
    Submission,
    array_logs,
    build_array_submission,
    build_submission,
    job_name,
    resource_args,
    single_launch,
)
from jobyard.executors.usage import ReportedUsage
from jobyard.model import JobSpec, Placement, TaskState
from jobyard.model.registry import login_for

log = logging.getLogger(__name__)

_CHECK_TTL = 60.0  # seconds a --test-only verdict for one resource shape is reused
_ENV_FILE = "container.env"  # beside the logs: a container job's variables, for its tasks
_CAPACITY_TTL = 60.0
_CANCEL_ATTEMPTS = 5  # scancel tries before a stop gives up (with a warning)
_SIGNALLED = {"CANCELLED": 128 + 15, "TIMEOUT": 128 + 15, "OUT_OF_MEMORY": 128 + 9}
_SLURM_ID = re.compile(r"\d+(_\d+)?")  # a job, or an element of a job array
# Slurm's submit times are whole seconds: a job submitted this much before a start began is
# still taken for it (an earlier attempt's job was submitted before that attempt ended).
_SUBMIT_SLACK = 2.0
_ARRAY_PREFIX = "jobyard-array-"


@dataclass(frozen=True)
class _Gathered:
    """A one-task job waiting for the sbatch it shares: where its (Slurm id, name) goes."""

    placement: Placement
    task_file: Path
    member: ArrayMember
    future: asyncio.Future[tuple[str, str]]


class SlurmExecutor(Executor):
    kind: ClassVar[str] = "slurm"
    settings_type: ClassVar[type[SlurmExecutorSettings]] = SlurmExecutorSettings
    capabilities: ClassVar[frozenset[str]] = frozenset({"shell"})

    def __init__(self, settings: SlurmExecutorSettings) -> None:
        self._settings = settings
        self._slurm = settings.slurm
        self._tools = Tools(settings.slurm)
        self._logs_dir = settings.logs_dir.resolve()
        self._jobs_dir = settings.jobs_dir.resolve()
        self._node = f"slurm:{settings.slurm.partition or 'default'}"
        self._capacity = self._read_capacity(self._tools.run_sync("sinfo", self._sinfo_args()))
        self._capacity_at = time.monotonic()
        self._checked: dict[tuple[str, ...], tuple[float, str | None]] = {}
        self._seen: dict[str, parse.SlurmJob] = {}  # last squeue line per Slurm job id
        self._seen_at = 0.0
        self._finals: dict[str, TaskReport] = {}  # ended jobs' reports (exit code looked up)
        self._sacct_disabled = False
        self._gathers: bool | None = None  # does the cluster gather usage (sstat)? None: ask
        self._stopping: dict[str, asyncio.Task[None]] = {}
        self._stopped: set[str] = set()
        self._names: dict[str, str] = {}  # Slurm job id -> the job name jobyard gave it
        self._gathering: dict[tuple[str, ...], list[_Gathered]] = {}  # by resource options
        self._submitting: set[asyncio.Task[None]] = set()

    # ---- capacity and refusals ----------------------------------------------------------------

    def capacity(self) -> Capacity:
        return self._capacity

    def _sinfo_args(self) -> list[str]:
        args = ["-h", "-N", "-o", parse.SINFO_FORMAT]
        if self._slurm.partition:
            args += ["-p", self._slurm.partition]
        return args

    def _read_capacity(self, result: Result) -> Capacity:
        nodes = parse.parse_sinfo(result.stdout) if result.ok else []
        if not nodes:
            where = f"partition {self._slurm.partition!r}" if self._slurm.partition else "Slurm"
            why = "no nodes" if result.ok else result.error
            raise ExecutorUnavailable(f"cannot read the nodes of {where} (sinfo: {why})")
        return Capacity(
            node=self._node,
            cpus=float(sum(n.cpus for n in nodes)),
            memory_mib=sum(n.memory_mib for n in nodes),
            gpus=parse.gpu_inventory(nodes),
            max_tasks=self._settings.max_tasks,
        )

    async def _refresh_capacity(self) -> None:
        if time.monotonic() - self._capacity_at < _CAPACITY_TTL:
            return
        self._capacity_at = time.monotonic()
        with contextlib.suppress(ExecutorUnavailable):  # keep the last known inventory
            self._capacity = self._read_capacity(await self._tools.run("sinfo", self._sinfo_args()))

    def check_spec_supported(self, placement_spec: Any) -> None:
        """Images are refused; anything else is asked of Slurm (`sbatch --test-only`), once per
        resource shape a minute: a miss costs one sbatch run (about 10 ms) in the caller."""
        if not isinstance(placement_spec, JobSpec):
            return
        self._check_image(placement_spec)
        if not self._slurm.check_submissions:
            return
        shape = tuple(self._resources(placement_spec))
        cached = self._checked.get(shape)
        if cached is None or time.monotonic() - cached[0] > _CHECK_TTL:
            cached = (time.monotonic(), self._test_only(list(shape)))
            self._checked[shape] = cached
        if cached[1] is not None:
            raise ExecutorRefused(f"Slurm cannot run this job: {cached[1]}", field="resources")

    def _test_only(self, shape: list[str]) -> str | None:
        args = ["--test-only", "--chdir=/", "--output=/dev/null", *shape, "--wrap=true"]
        result = self._tools.run_sync("sbatch", args, timeout=5)
        if result.ok:
            return None
        if result.unreachable:
            raise ExecutorUnavailable(f"Slurm does not answer: {result.error}")
        return result.error.removeprefix("allocation failure: ")

    def _resources(self, spec: JobSpec) -> list[str]:
        return resource_args(
            spec,
            self._slurm,
            gpu_type=self._gpu_type(spec.resources.gpu_model),
            grace=self._settings.stop_grace_seconds,
        )

    def _gpu_type(self, wanted: str | None) -> str | None:
        """The gres type a requested model names: exact, else the one it is part of; an unknown
        model goes to Slurm as given (and Slurm refuses it)."""
        if not wanted:
            return None
        kinds = {g.model for g in self._capacity.gpus}
        for kind in sorted(kinds):
            if kind.lower() == wanted.lower():
                return kind
        for kind in sorted(kinds):
            if wanted.lower() in kind.lower():
                return kind
        return wanted

    def _environment_of(self, spec: JobSpec) -> EnvironmentSpec | None:
        return catalog_entry(self._settings, spec, kind="slurm")

    def _check_image(self, spec: JobSpec) -> None:
        """A container image needs a runtime (on the nodes: this server's tells which, and
        its arguments); anything else, an environment of the catalog."""
        image = containers.container_image(self._settings, spec)
        if image is None:
            self._environment_of(spec)
            return
        containers.require_runtime(self._settings, self.kind, image)
        containers.check_env(spec.env)

    def _node_runtime(self, image: str) -> containers.Runtime:
        """The runtime as the nodes run it: by name on their PATH, with the configured args."""
        found = containers.require_runtime(self._settings, self.kind, image)
        return dataclasses.replace(found, argv=(found.name, *found.argv[1:]))

    # ---- start --------------------------------------------------------------------------------

    async def start(self, placement: Placement) -> list[StartedTask]:
        self._check_image(placement.spec)
        try:
            files, cwd = self._prepare(placement)
        except OSError as exc:
            raise StartFailed(f"cannot prepare job {placement.job_id}: {exc}") from exc
        if placement.spec.replicas == 1 and self._slurm.max_array_size > 1:
            slurm_id, name = await self._submit_together(placement, files[0], cwd)
        else:
            slurm_id, name = await self._submit_alone(placement, files, cwd)
        return self._started(placement, slurm_id, name, cwd)

    def _started(
        self, placement: Placement, slurm_id: str, name: str, cwd: Path
    ) -> list[StartedTask]:
        """The tasks of the Slurm job `slurm_id` (in Slurm's queue until squeue says otherwise)."""
        files = self._task_files(placement)
        return [
            StartedTask(
                index=task.index,
                pid=None,
                node=self._node,
                waiting=True,
                handle=SlurmHandle(
                    slurm_job_id=slurm_id,
                    name=name,
                    task=task.index,
                    log=f"{path}.log",
                    exit=f"{path}.exit",
                    node_file=f"{path}.node",
                    batch_log=f"{str(files[0])[:-1]}batch.log" if len(files) > 1 else None,
                    cwd=str(cwd),
                    **self._container_fields(placement, task.name, path),
                ),
            )
            for task, path in zip(placement.tasks, files, strict=True)
        ]

    def _container_fields(self, placement: Placement, task: str, path: Path) -> ContainerFields:
        image = containers.container_image(self._settings, placement.spec)
        if image is None:
            return {}
        runtime = self._node_runtime(image)
        home = self._logs_dir.parent
        fields = containers.handle_fields(runtime, image, placement.job_id, task, home, path)
        return {**fields, "env_file": str(path.parent / _ENV_FILE)}  # one for all its tasks

    def _task_files(self, placement: Placement) -> list[Path]:
        """Each task's path prefix (<logs>/<job id>/<task name>): .log, .exit, .node."""
        return [self._logs_dir / str(placement.job_id) / task.name for task in placement.tasks]

    def _cwd(self, spec: JobSpec, job_id: int) -> Path:
        return Path(spec.working_dir) if spec.working_dir else self._jobs_dir / str(job_id)

    async def _submit_alone(
        self, placement: Placement, files: list[Path], cwd: Path
    ) -> tuple[str, str]:
        """One sbatch for the job: (Slurm job id, job name)."""
        name = job_name(placement.job_id, placement.display_id)
        submission = build_submission(
            name=name,
            spec=placement.spec,
            argv=self._argv(placement, files, cwd),
            env=self._job_env(placement),
            cwd=cwd,
            task_files=files,
            resources=self._resources(placement.spec),
            srun=self._tools.path("srun"),
            scontrol=self._tools.path("scontrol"),
            master_port=placement.master_port,
        )
        return await self._sbatch(submission, name), name

    async def _sbatch(self, submission: Submission, name: str) -> str:
        result = await self._tools.run("sbatch", submission.args, stdin=submission.script)
        slurm_id = _submitted_id(result)
        if slurm_id is None:
            raise StartFailed(f"sbatch refused {name}: {result.error}")
        return slurm_id

    # One-task jobs started in the same pass with the same resources share one sbatch: a job
    # array whose element i runs the i-th of them. sbatch costs slurmctld and this machine
    # about as much for 200 elements as for one job; the reconciler starts a pass's jobs at
    # once, so they gather here until the loop next runs, then go in one call per shape.

    async def _submit_together(
        self, placement: Placement, task_file: Path, cwd: Path
    ) -> tuple[str, str]:
        """(Slurm id: `<array id>_<index>`, or the job's own id if it went alone; job name)."""
        member = ArrayMember(
            launch=single_launch(
                argv=self._argv(placement, [task_file], cwd),
                env=self._job_env(placement),
                task_file=task_file,
            ),
            cwd=cwd,
            log=Path(f"{task_file}.log"),
        )
        loop = asyncio.get_running_loop()
        waiting = _Gathered(placement, task_file, member, loop.create_future())
        if not self._gathering:
            loop.call_soon(self._submit_gathered)
        self._gathering.setdefault(tuple(self._resources(placement.spec)), []).append(waiting)
        return await waiting.future

    def _submit_gathered(self) -> None:
        gathered, self._gathering = self._gathering, {}
        for shape, entries in gathered.items():
            for at in range(0, len(entries), self._slurm.max_array_size):
                group = entries[at : at + self._slurm.max_array_size]
                task = asyncio.create_task(self._submit_group(list(shape), group))
                self._submitting.add(task)
                task.add_done_callback(self._submitting.discard)

    async def _submit_group(self, resources: list[str], group: list[_Gathered]) -> None:
        if len(group) == 1:
            await self._submit_waiting_alone(group[0])
            return
        first = group[0].placement
        name = f"jobyard-array-{first.job_id}-{first.display_id}"
        submission = build_array_submission(
            name=name,
            members=[waiting.member for waiting in group],
            resources=resources,
            chdir=self._logs_dir,  # each arm enters its own job's cwd
        )
        try:
            result = await self._tools.run("sbatch", submission.args, stdin=submission.script)
        except Exception as exc:
            _settle(group, exc)
            return
        array_id = _submitted_id(result)
        if array_id is not None:
            for i, waiting in enumerate(group):
                if not waiting.future.done():
                    waiting.future.set_result((f"{array_id}_{i}", name))
        elif result.unreachable:
            _settle(group, StartFailed(f"sbatch refused {name}: {result.error}"))
        else:  # refused as a whole (over the cluster's MaxArraySize, say): each its own answer
            log.warning(
                "sbatch refused the job array %s (%s); submitting its %d jobs one by one",
                name,
                result.error,
                len(group),
            )
            await asyncio.gather(*(self._submit_waiting_alone(waiting) for waiting in group))

    async def _submit_waiting_alone(self, waiting: _Gathered) -> None:
        files = [waiting.task_file]
        try:
            outcome = await self._submit_alone(waiting.placement, files, waiting.member.cwd)
        except Exception as exc:
            _settle([waiting], exc)
            return
        if not waiting.future.done():
            waiting.future.set_result(outcome)

    def _prepare(self, placement: Placement) -> tuple[list[Path], Path]:
        tasks = placement.tasks
        if len(tasks) > 1 and any(
            t.name != f"{tasks[0].name[:-1]}{t.index}" or t.index != i for i, t in enumerate(tasks)
        ):
            raise StartFailed("multi-worker task names must be <prefix><index>, from 0")
        files = self._task_files(placement)
        files[0].parent.mkdir(parents=True, exist_ok=True)
        for path in files:
            for suffix in (".exit", ".node"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{path}{suffix}")
        cwd = self._cwd(placement.spec, placement.job_id)
        if placement.spec.working_dir:
            if not cwd.is_dir():
                raise StartFailed(f"working_dir {str(cwd)!r} does not exist or is not a directory")
        else:
            cwd.mkdir(parents=True, exist_ok=True)
        return files, cwd

    def _job_env(self, placement: Placement) -> dict[str, str]:
        """What the job's tasks get on top of the environment sbatch exports (the server's,
        without JOBYARD_* and Slurm options): catalog, spec env, JOBYARD_*. For a container,
        the runtime on the node gets only jobyard's ids (the rest is in the env file)."""
        if containers.container_image(self._settings, placement.spec) is not None:
            env = task_environment(placement, placement.tasks[0], None, "")
            return {k: v for k, v in env.items() if k in containers.NODE_VARIABLES}
        entry = self._environment_of(placement.spec)
        path = self._tools.env.get("PATH", os.defpath)
        env = task_environment(placement, placement.tasks[0], entry, path)
        if placement.spec.resources.gpus == 0:
            env["CUDA_VISIBLE_DEVICES"] = ""  # no GPUs asked for: see none
        return env

    def _argv(self, placement: Placement, files: list[Path], cwd: Path) -> list[str]:
        """What each task runs under its supervisor: the spec's argv, or for a container the
        node's script that pulls the image and runs it (its env file written here first)."""
        image = containers.container_image(self._settings, placement.spec)
        if image is None:
            return placement.spec.argv()
        task = containers.NodeTask(
            image=image,
            job_id=placement.job_id,
            home=self._logs_dir.parent,
            files_dir=files[0].parent,
            cwd=cwd,
            env_file=files[0].parent / _ENV_FILE,
            argv=tuple(placement.spec.argv()),
            grace=self._settings.stop_grace_seconds,
        )
        entry = self._settings.find_environment(placement.spec.image or image)
        env = dict(entry.env) if entry is not None and entry.image else {}
        env.update(task_environment(placement, placement.tasks[0], None, ""))
        for name in containers.NODE_VARIABLES:  # each task's own, from its node
            env.pop(name, None)
        containers.write_env_file(task.env_file, env)
        timeout = self._settings.container_pull_timeout_seconds
        runtime, login = self._node_runtime(image), login_for(image, placement.registry_logins)
        if login is not None:  # one per task: each removes its own once its image is there
            for path in files:
                containers.write_auth(Path(f"{path}.auth"), runtime, login)
        script = containers.node_script(runtime, task, pull_timeout=timeout, auth=login is not None)
        return ["/bin/sh", "-c", script, "jobyard-container"]

    # ---- finding what a crash left ------------------------------------------------------------

    async def find_started(
        self, starts: Sequence[InterruptedStart]
    ) -> list[list[StartedTask | None]]:
        """The Slurm job of each interrupted start: among this user's jobs in squeue submitted
        since that start began, the one named after it (a job alone), or the element of an
        array whose arm writes its log (read from the array's script). Adopted as start()
        would have returned it; where Slurm has forgotten it, a fresh exit file still says how
        it ended. Raises ExecutorUnavailable when squeue does not answer."""
        if not starts:
            return []
        earliest = min(start.since for start in starts) - _SUBMIT_SLACK
        listed = [
            job
            for job in await self._listing()
            if job.name.startswith("jobyard-") and job.submitted >= earliest
        ]
        owners = await self._owners(listed)
        return [self._found(start, listed, owners) for start in starts]

    async def _listing(self) -> list[parse.ListedJob]:
        user = pwd.getpwuid(os.getuid()).pw_name
        args = ["-h", "-r", "-t", "all", "-u", user, "-o", parse.LISTING_FORMAT]
        result = await self._tools.run("squeue", args)
        if not result.ok:
            raise ExecutorUnavailable(f"cannot list the Slurm jobs (squeue: {result.error})")
        return parse.parse_listing(result.stdout)

    async def _owners(self, listed: list[parse.ListedJob]) -> dict[str, int]:
        """Slurm id -> the jobyard job id an element of a listed array runs (its arm's log is
        <logs>/<job id>/<task>.log); one `scontrol write batch_script` per array."""
        arrays = sorted(
            {j.job_id.split("_")[0] for j in listed if j.name.startswith(_ARRAY_PREFIX)}
        )
        owners: dict[str, int] = {}
        for array in arrays:
            result = await self._tools.run("scontrol", ["write", "batch_script", array, "-"])
            for index, log_path in array_logs(result.stdout if result.ok else "").items():
                if log_path.parent.parent == self._logs_dir and log_path.parent.name.isdigit():
                    owners[f"{array}_{index}"] = int(log_path.parent.name)
        return owners

    def _found(
        self, start: InterruptedStart, listed: list[parse.ListedJob], owners: dict[str, int]
    ) -> list[StartedTask | None]:
        placement = start.placement
        name = job_name(placement.job_id, placement.display_id)
        mine = [
            job
            for job in listed
            if job.submitted >= start.since - _SUBMIT_SLACK
            and (job.name == name or owners.get(job.job_id) == placement.job_id)
        ]
        cwd = self._cwd(placement.spec, placement.job_id)
        if mine:
            job = max(mine, key=lambda j: (j.submitted, _id_order(j.job_id)))
            self._names[job.job_id] = job.name
            return list(self._started(placement, job.job_id, job.name, cwd))
        # Slurm forgot it (MinJobAge) before the restart: its exit file may still say how it ended
        found: list[StartedTask | None] = []
        for task in self._started(placement, "", name, cwd):
            exit_file = str(task.handle["exit"])
            fresh = _modified_since(exit_file, start.since - _SUBMIT_SLACK)
            found.append(task if fresh else None)
        return found

    # ---- poll ---------------------------------------------------------------------------------

    async def poll(self, handles: Sequence[Handle]) -> list[TaskReport]:
        ids = sorted({str(h.get("slurm_job_id", "")) for h in handles} - {""} - set(self._finals))
        self._names.update(
            (str(h["slurm_job_id"]), str(h["name"]))
            for h in handles
            if h.get("slurm_job_id") and h.get("name")
        )
        if ids:
            await self._query(ids)
            # Only an ended job with a task that left no exit file needs its code from Slurm.
            unsettled = {str(h.get("slurm_job_id")) for h in handles if not _has_exit(h)}
            await self._settle([i for i in ids if i in unsettled and self._is_ended(i)])
        await self._refresh_capacity()
        return [self._container_report(h) for h in handles]

    async def task_usage(self, handles: Sequence[Handle]) -> list[ReportedUsage | None]:
        """The running tasks' figures from one sstat (executors/slurm/usage.py)."""
        own = [self._running_own_id(h) for h in handles]
        ids = sorted({i for i in own if i is not None})
        if not ids or not await self._gathers_usage():
            return [None] * len(handles)
        # A job that ended since squeue saw it makes sstat complain; the others are answered.
        result = await self._tools.run("sstat", usage.sstat_args(ids))
        if not result.ok and not result.stdout and not result.unreachable:
            log.debug("sstat failed: %s", result.error)
        steps = usage.by_job(parse.parse_sstat(result.stdout))
        return [
            None if i is None else usage.task_figures(h, steps.get(i, []))
            for h, i in zip(handles, own, strict=True)
        ]

    def _running_own_id(self, handle: Handle) -> str | None:
        job = self._seen.get(str(handle.get("slurm_job_id", "")))
        return job.own_id if job is not None and job.base_state == "RUNNING" else None

    async def _gathers_usage(self) -> bool:
        if self._gathers is None:
            result = await self._tools.run("scontrol", ["show", "config"])
            if not result.ok:
                return False  # asked again next pass
            kind = usage.gather_type(result.stdout)
            self._gathers = kind not in (None, usage.NO_GATHER)
            if not self._gathers:
                log.info("no usage figures for Slurm jobs: JobAcctGatherType is %s", kind)
        return self._gathers

    def _container_report(self, handle: Handle) -> TaskReport:
        """As Slurm and the task's files say; for a container, as its pull says too."""
        report = self._report(handle)
        if not containers.in_container(handle):
            return report
        return containers.task_report(handle, report, self._settings.container_pull_timeout_seconds)

    async def _query(self, ids: list[str]) -> None:
        """One squeue for every live job; skipped when the last one is fresh and saw them all."""
        fresh = time.monotonic() - self._seen_at < self._slurm.poll_min_interval_seconds
        if fresh and all(i in self._seen for i in ids):
            return
        result = await self._tools.run(
            # -r: array elements one per line, never folded into 12_[3-9] (elements asked for
            # by their own id are listed one by one either way)
            "squeue",
            ["-h", "-r", "-t", "all", "-j", ",".join(ids), "-o", parse.SQUEUE_FORMAT],
        )
        if not result.ok and "Invalid job id" not in result.stderr:
            if not result.unreachable:
                log.warning("squeue failed: %s", result.error)
            return  # Slurm unreachable: keep the last known states, lose nothing
        self._seen_at = time.monotonic()
        # A job id Slurm reused for someone else's job (its state was wiped) is not ours.
        seen = {
            i: job
            for i, job in parse.parse_squeue(result.stdout).items()
            if job.name == self._names.get(i, job.name)
        }
        self._seen.update(seen)
        missing = [i for i in ids if i not in seen]
        if missing:
            await self._look_up_gone(missing)

    async def _look_up_gone(self, ids: list[str]) -> None:
        """Jobs squeue no longer shows (purged after MinJobAge): ask accounting, if it is on."""
        known: dict[str, tuple[str, str]] = {}
        if not self._sacct_disabled:
            result = await self._tools.run(
                "sacct", ["-n", "-P", "-X", "-j", ",".join(ids), "-o", "JobID,State,ExitCode"]
            )
            if "accounting storage is disabled" in result.stderr + result.stdout:
                self._sacct_disabled = True
            elif result.ok:
                known = parse.parse_sacct(result.stdout)
        for slurm_id in ids:
            self._seen.pop(slurm_id, None)
            if slurm_id in known:
                state, code = known[slurm_id]
                self._finals[slurm_id] = _ended(state, parse.exit_code_of(code))
            else:
                self._finals[slurm_id] = TaskReport(
                    TaskState.LOST,
                    message=f"Slurm no longer knows job {slurm_id} and it left no exit code",
                )

    def _is_ended(self, slurm_id: str) -> bool:
        job = self._seen.get(slurm_id)
        return job is not None and (job.base_state in parse.ENDED | parse.VANISHED)

    async def _settle(self, ids: list[str]) -> None:
        """The final report of each ended job (its exit code asked of scontrol once)."""
        for slurm_id in ids:
            state = self._seen[slurm_id].base_state
            if state in parse.VANISHED:
                self._finals[slurm_id] = TaskReport(
                    TaskState.LOST, message=f"Slurm job {slurm_id} {parse.meaning(state)}"
                )
                continue
            result = await self._tools.run("scontrol", ["show", "job", "-o", slurm_id])
            code = parse.exit_code_of(parse.scontrol_fields(result.stdout).get("ExitCode", ""))
            self._finals[slurm_id] = _ended(state, code)

    def _report(self, handle: Handle) -> TaskReport:
        code = _read_int(handle.get("exit"))
        if code is not None:
            return TaskReport(TaskState.EXITED, code)
        slurm_id = str(handle.get("slurm_job_id", ""))
        if not slurm_id:
            return TaskReport(TaskState.LOST, message="the handle names no Slurm job")
        final = self._finals.get(slurm_id)
        if final is not None:
            return final
        job = self._seen.get(slurm_id)
        started = bool(handle.get("node_file")) and os.path.exists(handle["node_file"])
        if job is None or job.base_state in parse.ACTIVE or started:  # squeue may lag behind
            return TaskReport(TaskState.RUNNING)
        return TaskReport(
            TaskState.PENDING, message=f"Slurm job {slurm_id} is pending ({job.reason})"
        )

    def pending_reason(self, handle: Handle) -> str | None:
        """Slurm's reason (Resources, Priority, QOSMaxJobsPerUserLimit, ...) while it waits;
        poll() reports it too, and the reconciler makes it the job's pending reason."""
        job = self._seen.get(str(handle.get("slurm_job_id", "")))
        if job is None or self._report(handle).state is not TaskState.PENDING:
            return None
        return job.reason

    # ---- stop ---------------------------------------------------------------------------------

    async def stop(self, handle: Handle, grace: float) -> None:
        slurm_id = str(handle.get("slurm_job_id", ""))
        if not _SLURM_ID.fullmatch(slurm_id):
            return
        if slurm_id in self._stopping or slurm_id in self._stopped or slurm_id in self._finals:
            return
        self._stopping[slurm_id] = asyncio.create_task(self._stop_job(slurm_id, grace))

    async def _stop_job(self, slurm_id: str, grace: float) -> None:
        try:
            self._seen_at = 0.0
            await self._query([slurm_id])
            job = self._seen.get(slurm_id)
            # Only a running job is signalled: a signal to a pending one is refused, and in
            # Slurm 22.05 `--full` even marks it COMPLETED. Anything else is simply cancelled.
            running = job is not None and job.base_state in parse.ACTIVE
            if grace > 0 and running:
                term = await self._tools.run("scancel", ["--signal=TERM", "--full", slurm_id])
                if not term.ok:
                    log.warning("scancel --signal=TERM %s: %s", slurm_id, term.error)
                await asyncio.sleep(grace)
                await self._query([slurm_id])
                if slurm_id in self._finals or self._is_ended(slurm_id):
                    return
            # Slurm's cancel: TERM to every process of the job, KILL after the cluster's
            # KillWait (`scancel --signal=KILL` takes the same path, so there is no faster kill).
            # A busy or restarting slurmctld can refuse it: ask again rather than leave a job
            # running that its user stopped.
            for attempt in range(_CANCEL_ATTEMPTS):
                cancel = await self._tools.run("scancel", [slurm_id])
                if cancel.ok or "already completing or completed" in cancel.stderr:
                    break
                if "Invalid job id" in cancel.stderr:
                    break
                log.warning("scancel %s (attempt %d): %s", slurm_id, attempt + 1, cancel.error)
                await asyncio.sleep(min(2.0**attempt, 10.0))
        finally:
            self._stopping.pop(slurm_id, None)
            self._stopped.add(slurm_id)
            self._seen_at = 0.0  # the next poll asks squeue again
            self.wakeup()

    # ---- logs, terminal, release --------------------------------------------------------------

    def shell_command(
        self,
        placement: Placement,
        task_index: int,  # noqa: ARG002 - the handle already names the task
        handle: Handle,
        command: str | None = None,
    ) -> ShellCommand:
        """`srun --jobid <id> --overlap --pty` on the task's node, in its cwd and environment:
        an interactive shell, or the shell running the command line `command`."""
        slurm_id = str(handle.get("slurm_job_id", ""))
        report = self._container_report(handle)
        if report.state is not TaskState.RUNNING:
            raise Conflict(f"the task is not running in Slurm ({report.state.value})", field="task")
        seen = self._seen.get(slurm_id)
        own_id = seen.own_id if seen is not None else slurm_id
        if not own_id.isdigit():  # an array element srun cannot name: its own id is not known
            raise Conflict(f"Slurm has not told the job id of {slurm_id} yet", field="task")
        cwd = str(handle.get("cwd") or "/")
        argv = [
            self._tools.path("srun"),
            f"--jobid={own_id}",
            "--overlap",
            "--pty",
            "--nodes=1",
            "--ntasks=1",
            f"--chdir={cwd}",
            "--quiet",
        ]
        node = _read_text(handle.get("node_file"))
        if node:
            argv.append(f"--nodelist={node}")
        env = {**self._tools.env, **self._job_env(placement)}
        shell = "/bin/bash" if os.access("/bin/bash", os.X_OK) else "/bin/sh"
        env.setdefault("TERM", "xterm-256color")
        env["SHELL"] = shell
        here = cwd if os.path.isdir(cwd) else "/"
        tail = [shell, "-c", command] if command is not None else [shell, "-i"]
        runtime = containers.runtime_in(handle)
        if runtime is not None:  # inside the task's container, on its node
            tail = containers.exec_command(runtime, handle["container"], cwd, command)
        return ShellCommand(argv=[*argv, *tail], env=env, cwd=here)

    def release(self, handle: Handle, *, remove_files: bool) -> None:
        slurm_id = str(handle.get("slurm_job_id", ""))
        for cache in (self._seen, self._finals, self._names):
            cache.pop(slurm_id, None)
        self._stopped.discard(slurm_id)
        containers.forget_auth(handle)
        if remove_files:
            keys = ("log", "exit", "node_file", "batch_log", "env_file", "pull_state", "pull_log")
            for key in keys:
                with contextlib.suppress(OSError, KeyError, TypeError):
                    os.unlink(handle[key])
            with contextlib.suppress(OSError, KeyError):
                Path(handle["log"]).parent.rmdir()

    async def close(self) -> None:
        for task in self._stopping.values():
            task.cancel()
        self._tools.close()


def _submitted_id(result: Result) -> str | None:
    """The job id `sbatch --parsable` printed (`<id>` or `<id>;<cluster>`), if it took the job."""
    slurm_id = result.stdout.strip().split(";")[0]
    return slurm_id if result.ok and slurm_id.isdigit() else None


def _settle(group: list[_Gathered], exc: BaseException) -> None:
    for waiting in group:
        if not waiting.future.done():
            waiting.future.set_exception(exc)


def _ended(state: str, code: int | None) -> TaskReport:
    """An ended job whose task left no exit file (killed, or never started)."""
    if state == "COMPLETED":
        return TaskReport(TaskState.EXITED, code or 0)
    if not code:
        code = _SIGNALLED.get(state, 1)
    return TaskReport(TaskState.EXITED, code, message=f"the Slurm job {parse.meaning(state)}")


def _id_order(slurm_id: str) -> tuple[int, int]:
    job, _, element = slurm_id.partition("_")
    return int(job) if job.isdigit() else 0, int(element) if element.isdigit() else 0


def _modified_since(path: str, since: float) -> bool:
    try:
        return os.stat(path).st_mtime >= since
    except OSError:
        return False


def _has_exit(handle: Handle) -> bool:
    return bool(handle.get("exit")) and os.path.exists(handle["exit"])


def _read_int(path: Any) -> int | None:
    text = _read_text(path)
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _read_text(path: Any) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None
