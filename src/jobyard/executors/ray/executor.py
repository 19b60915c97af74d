"""Jobs on an existing Ray cluster, through Ray's Job Submission API.

One jobyard job is one Ray job: its entrypoint is the driver Ray's supervisor runs on the
cluster, with the job's env as runtime_env `env_vars`, its working directory uploaded through
Ray's package mechanism, its pip requirements installed by Ray, and its resources as
`entrypoint_num_cpus/_gpus/_memory/_resources`. Ray gives the driver RAY_ADDRESS, so
`ray.init()` inside the job joins this cluster and uses its CPUs and GPUs.

The handle is the Ray submission id (`jobyard-<job id>-<task name>`, `-2`, `-3` for later
attempts: deterministic, so a job submitted whose handle was never stored is found again)
plus the task's log and exit files. A watcher on the event loop asks Ray about the live jobs
(often while a job is young, less as it ages; one list instead of many gets when many are
due), copies each driver's log into the task's log file as it grows (so `read_log` works after
the Ray job, or the Ray head, is gone), writes the exit code beside it when the job ends, and
wakes the reconciler on every change. `poll` answers from what the watcher saw.

When the cluster does not answer, running jobs keep their last known state, and a job started
meanwhile is kept here, PENDING with reason EXECUTOR_UNAVAILABLE, and submitted once the
cluster answers again (its handle holds the whole submission, so a restarted server submits
it too). The pool's capacity is the cluster's (Ray's State API), refreshed every
`capacity_refresh_seconds` and saved, so a server that starts while the head is down
schedules on the last capacity it knew. It can grow (an autoscaler may add nodes) unless
`ray.pool_can_grow` says not: a job larger than the cluster waits for it, as on Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from jobyard.config import EnvironmentSpec, RayExecutorSettings
from jobyard.errors import ExecutorUnavailable
from jobyard.executors.base import (
    Capacity,
    Executor,
    Handle,
    InterruptedStart,
    StartedTask,
    StartFailed,
    TaskReport,
)
from jobyard.executors.environment import catalog_entry
from jobyard.executors.handles import RayHandle
from jobyard.executors.ray.client import RayClient, RayJob, RayRefused, Unreachable
from jobyard.executors.ray.status import (
    capacity_of,
    driver_output,
    job_processes,
    report_of,
    usage_of,
    was_killed,
)
from jobyard.executors.ray.submission import (
    Submission,
    base_id,
    build_submission,
    check_spec,
    submission_id,
)
from jobyard.executors.usage import ReportedUsage
from jobyard.model import JobSpec, PendingReason, Placement, TaskState, TerminationReason

log = logging.getLogger(__name__)

_MANY = 8  # more jobs due than this: one list of every job instead of a get for each
_MAX_IDS = 100  # ids tried per start (one per earlier attempt of the task)
_STOP_ATTEMPTS = 5


class RayExecutor(Executor):
    kind: ClassVar[str] = "ray"
    settings_type: ClassVar[type[RayExecutorSettings]] = RayExecutorSettings

    def __init__(self, settings: RayExecutorSettings) -> None:
        self._settings = settings
        self._ray = settings.ray
        token = settings.ray.token.get_secret_value() if settings.ray.token else None
        self._client = RayClient(
            settings.ray.address,
            token=token,
            timeout=settings.ray.request_timeout_seconds,
            max_concurrent=settings.ray.max_concurrent_requests,
        )
        self._logs_dir = settings.logs_dir.resolve()
        self._instance = f"{settings.node_name}:{settings.home.resolve()}"
        self._saved_capacity = settings.home / "ray-capacity.json"
        # Where the server unpacks the packages the Ray face takes (server.py gives
        # RuntimeEnvService <home>/runtime_env): a job's py_modules among them go to Ray.
        self._unpacked = settings.home / "runtime_env" / "working_dirs"
        self._unavailable: str | None = None  # why the cluster does not answer, while it does not
        self._node = f"ray:{(settings.ray.address or 'default').split('://')[-1]}"
        self._capacity = self._first_capacity()
        self._capacity_at = time.monotonic()
        self._watched: dict[str, Handle] = {}  # submission id -> handle, until released
        self._seen: dict[str, RayJob] = {}  # the last word of Ray on each live job
        self._finals: dict[str, TaskReport] = {}
        self._backlog: dict[str, Submission] = {}  # started while the cluster did not answer
        self._next_check: dict[str, float] = {}
        self._changed_at: dict[str, float] = {}
        self._log_at: dict[str, float] = {}
        self._final_logs: dict[str, str] = {}  # an ended job's whole log, as the look found it
        self._stop_asked: set[str] = set()
        self._stopping: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._work = asyncio.Event()  # set when there is something new to watch
        self._listed = False  # whether the last round listed every job

    # ---- capacity and refusals ----------------------------------------------------------------

    def capacity(self) -> Capacity:
        return self._capacity

    def _first_capacity(self) -> Capacity:
        try:
            return self._read_capacity(self._client.call_sync(lambda c: c.nodes()))
        except (Unreachable, RayRefused) as exc:
            saved = self._load_capacity()
            if saved is None:
                raise ExecutorUnavailable(
                    f"{exc.message}; its capacity was never read here, so jobyard cannot "
                    "schedule on it (start the cluster, or check ray.address and ray.token)"
                ) from exc
            self._mark_unavailable(exc.message)
            return saved

    def _read_capacity(self, nodes: list[dict[str, Any]]) -> Capacity:
        capacity = capacity_of(
            nodes,
            node=self._node,
            max_tasks=self._settings.max_tasks,
            can_grow=self._ray.pool_can_grow,
        )
        if not capacity.cpus and not capacity.gpus:
            raise ExecutorUnavailable(f"the Ray cluster at {self._client.where} has no live node")
        if capacity != getattr(self, "_capacity", None):
            with contextlib.suppress(OSError):
                self._saved_capacity.parent.mkdir(parents=True, exist_ok=True)
                _write_atomically(self._saved_capacity, capacity.model_dump_json())
        return capacity

    def _load_capacity(self) -> Capacity | None:
        try:
            saved = Capacity.model_validate_json(self._saved_capacity.read_text())
        except (OSError, ValueError):
            return None
        return saved.model_copy(update={"can_grow": self._ray.pool_can_grow})

    async def _refresh_capacity(self) -> None:
        self._capacity_at = time.monotonic()
        try:
            self._capacity = self._read_capacity(await self._client.nodes())
        except (Unreachable, RayRefused, ExecutorUnavailable) as exc:
            self._mark_unavailable(exc.message)  # keep the last known capacity
        else:
            self._mark_available()

    def check_spec_supported(self, placement_spec: Any) -> None:
        if isinstance(placement_spec, JobSpec):
            self._environment_of(placement_spec)
            check_spec(placement_spec)

    def _environment_of(self, spec: JobSpec) -> EnvironmentSpec | None:
        return catalog_entry(self._settings, spec, kind="ray")

    def _gpu_type(self, wanted: str | None) -> str | None:
        """The cluster's accelerator type a requested model names (exact, else contained)."""
        if not wanted:
            return None
        kinds = sorted({g.model for g in self._capacity.gpus} - {"unknown"})
        exact = [k for k in kinds if k.lower() == wanted.lower()]
        return next(iter(exact or [k for k in kinds if wanted.lower() in k.lower()]), None)

    def _mark_unavailable(self, why: str) -> None:
        if self._unavailable is None:
            log.warning("Ray executor: %s; new jobs wait until it answers", why)
        self._unavailable = why

    def _mark_available(self) -> None:
        if self._unavailable is not None:
            log.info("Ray executor: the cluster at %s answers again", self._client.where)
        self._unavailable = None

    # ---- start --------------------------------------------------------------------------------

    async def start(self, placement: Placement) -> list[StartedTask]:
        self._ensure_watcher()
        entry = self._environment_of(placement.spec)
        check_spec(placement.spec)
        working_dir = placement.spec.working_dir
        if working_dir and "://" not in working_dir and not Path(working_dir).is_dir():
            raise StartFailed(f"working_dir {working_dir!r} does not exist or is not a directory")
        path = self._files_of(placement)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            Path(f"{path}.exit").unlink(missing_ok=True)  # an earlier attempt's
            base = Path(f"{path}.log").stat().st_size if Path(f"{path}.log").exists() else 0
        except OSError as exc:
            raise StartFailed(f"cannot prepare job {placement.job_id}: {exc}") from exc
        submission = build_submission(
            placement,
            entry,
            stop_wait=self._settings.stop_grace_seconds,
            gpu_type=self._gpu_type(placement.spec.resources.gpu_model),
            instance=self._instance,
            log_base=base,
            unpacked=self._unpacked,
        )
        submitted, deferred = await self._submit(submission)
        handle = self._handle(placement, submitted.submission_id, base)
        handle["deferred"] = submitted.to_json() if deferred else None
        return [self._started(submitted.submission_id, handle)]

    def _files_of(self, placement: Placement) -> Path:
        """Where the task's log and exit files go (beside the other executors' ones)."""
        return self._logs_dir / str(placement.job_id) / placement.tasks[0].name

    def _handle(self, placement: Placement, sid: str, log_base: int) -> RayHandle:
        path = self._files_of(placement)
        return {
            "submission_id": sid,
            "task": placement.tasks[0].index,
            "log": f"{path}.log",
            "log_base": log_base,  # a retried task appends to the same log
            "exit": f"{path}.exit",
            "deferred": None,
        }

    def _started(self, sid: str, handle: Handle) -> StartedTask:
        """A task in Ray's hands: STARTING (its PENDING message the pending reason) until Ray
        runs it."""
        self._watch_new(sid, handle)
        if handle.get("deferred"):  # kept here until the cluster answers
            return StartedTask(
                index=0,
                pid=None,
                node=self._node,
                handle=handle,
                waiting=True,
                pending_reason=PendingReason.EXECUTOR_UNAVAILABLE,
                pending_message="Ray does not answer; the job goes to Ray when it does",
            )
        return StartedTask(index=0, pid=None, node=self._node, handle=handle, waiting=True)

    async def find_started(
        self, starts: Sequence[InterruptedStart]
    ) -> list[list[StartedTask | None]]:
        """The Ray job each interrupted start submitted: the last of the task's ids Ray holds,
        if this server submitted it during this attempt (its metadata says who, and when).
        Raises Unreachable while the cluster does not answer (the reconciler asks again)."""
        return [[await self._find_one(start)] for start in starts]

    async def _find_one(self, start: InterruptedStart) -> StartedTask | None:
        placement, latest = start.placement, None
        base = base_id(placement)
        for attempt in range(_MAX_IDS):  # ids are taken in order: the first free one ends them
            job = await self._client.job(submission_id(base, attempt))
            if job is None:
                break
            latest = job
        if latest is None or not self._made_for(latest, placement, since=start.since):
            return None
        log_base = int(latest.metadata.get("jobyard_log_base") or 0)
        return self._started(
            latest.submission_id, self._handle(placement, latest.submission_id, log_base)
        )

    def _made_for(self, job: RayJob, placement: Placement, *, since: float) -> bool:
        said = job.metadata
        try:
            submitted_at = float(said.get("jobyard_submitted_at") or 0)
        except ValueError:
            return False
        return (
            said.get("jobyard_instance") == self._instance
            and said.get("jobyard_task") == placement.tasks[0].name
            and submitted_at >= since
        )

    async def _submit(self, submission: Submission) -> tuple[Submission, bool]:
        """(what was submitted, whether it waits for the cluster to answer). Takes the first
        id Ray does not hold; a live job of this server's under an id is the one a start that
        never got recorded submitted: it is taken over rather than run twice."""
        if self._unavailable is not None:  # no call that would wait for a timeout: the
            return self._defer(submission), True  # watcher probes the cluster
        for attempt in range(_MAX_IDS):
            candidate = submission.with_id(submission_id(submission.submission_id, attempt))
            try:
                await self._client.submit(**candidate.kwargs())
                self._mark_available()
                return candidate, False
            except Unreachable as exc:
                self._mark_unavailable(exc.message)
                return self._defer(submission), True
            except RayRefused as exc:
                if "already exists" not in exc.message:
                    raise StartFailed(f"Ray refused the job: {_last_line(exc.message)}") from exc
            if await self._is_ours_and_live(candidate):
                return candidate, False
        raise StartFailed(f"Ray holds {_MAX_IDS} jobs named {submission.submission_id}[-n]")

    def _defer(self, submission: Submission) -> Submission:
        """Keep a submission until the cluster answers, under an id of its own (which ids Ray
        holds cannot be known now; the handle keeps the id, and the whole submission)."""
        deferred = submission.with_id(f"{submission.submission_id}-w{time.time_ns() // 10**6}")
        self._backlog[deferred.submission_id] = deferred
        self._work.set()
        return deferred

    async def _is_ours_and_live(self, candidate: Submission) -> bool:
        try:
            job = await self._client.job(candidate.submission_id)
        except (Unreachable, RayRefused):
            return False
        return (
            job is not None
            and not job.is_terminal
            and job.metadata.get("jobyard_instance") == self._instance
            and job.metadata.get("jobyard_task") == candidate.metadata["jobyard_task"]
        )

    async def _submit_backlog(self) -> bool:
        """Submit what waited for the cluster, in order; False if it still does not answer."""
        for sid, submission in list(self._backlog.items()):
            try:
                await self._client.submit(**submission.kwargs())
            except Unreachable as exc:
                self._mark_unavailable(exc.message)
                return False
            except RayRefused as exc:
                if "already exists" not in exc.message:  # else: it did get there before
                    message = f"Ray refused the job: {_last_line(exc.message)}"
                    self._finals[sid] = TaskReport(
                        TaskState.LOST, message=message, reason=TerminationReason.START_FAILED
                    )
            self._mark_available()
            self._backlog.pop(sid, None)
            self._changed_at[sid] = time.monotonic()
        return True

    # ---- poll and the watcher -----------------------------------------------------------------

    async def poll(self, handles: Sequence[Handle]) -> list[TaskReport]:
        self._ensure_watcher()
        unknown = []
        for handle in handles:
            sid = str(handle.get("submission_id") or "")
            if not sid:
                continue
            if sid not in self._watched:
                self._watch_new(sid, handle)
            if sid not in self._finals and sid not in self._backlog and sid not in self._seen:
                unknown.append(sid)  # never asked about (a restart): ask now
        if unknown and self._unavailable is None:  # asked later, when the cluster answers
            await self._check(unknown, time.monotonic())
        return [self._report(h) for h in handles]

    def _watch_new(self, sid: str, handle: Handle) -> None:
        """Watch a job started here or before a restart (its exit file: it has ended)."""
        self._watched[sid] = handle
        self._changed_at.setdefault(sid, time.monotonic())
        code = _exit_code(handle)
        if code is not None:
            self._finals[sid] = TaskReport(TaskState.EXITED, code)
        self._work.set()

    def _report(self, handle: Handle) -> TaskReport:
        sid = str(handle.get("submission_id") or "")
        if sid in self._finals:
            return self._finals[sid]
        code = _exit_code(handle)
        if code is not None:
            return TaskReport(TaskState.EXITED, code)
        if not sid:
            return TaskReport(TaskState.LOST, message="the handle names no Ray job")
        if sid in self._backlog:
            why = self._unavailable or "it did not answer when the job started"
            return TaskReport(
                TaskState.PENDING,
                message=f"Ray does not answer ({why}); the job goes to Ray when it does",
                pending_reason=PendingReason.EXECUTOR_UNAVAILABLE,
            )
        job = self._seen.get(sid)
        if job is None:
            return TaskReport(TaskState.PENDING, message=f"asking Ray about job {sid}")
        return report_of(job)

    def _ensure_watcher(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch(), name="jobyard-ray-watcher")

    async def _watch(self) -> None:
        while True:
            began = time.monotonic()
            try:
                if await self._round(began):
                    self.wakeup()
            except Exception:
                log.exception("Ray executor: a watcher round failed; going on")
            # A round every poll_interval_seconds, but at most a third of the time spent
            # asking Ray where a round listed every job (a list of many jobs costs it); a few
            # gets cost Ray little, and the time they take on a busy server is mostly waiting
            # for a CPU: resting twice that long would make the end of a job seen later.
            spent = time.monotonic() - began
            period = self._ray.poll_interval_seconds if self._unavailable is None else 1.0
            await self._rest(max(period - spent, 2 * spent if self._listed else spent / 2))

    async def _rest(self, pause: float) -> None:
        """Sleep `pause`; with nothing to watch, until a job starts or the capacity is due."""
        if self._live() or self._backlog:
            await asyncio.sleep(pause)
            return
        due = self._capacity_at + self._ray.capacity_refresh_seconds - time.monotonic()
        self._work.clear()
        # asyncio.timeout, not wait_for: 3.11's wait_for swallows a cancel that comes as the
        # event is set (close() right after a start), and the watcher would never end.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(pause, due)):
                await self._work.wait()

    def _live(self) -> list[str]:
        """The watched jobs whose end is not known yet, and that Ray holds."""
        return [s for s in self._watched if s not in self._finals and s not in self._backlog]

    async def _round(self, now: float) -> bool:
        """One look at what is due; True if anything changed."""
        changed = False
        if self._backlog:
            changed = await self._submit_backlog()
        live = self._live()
        due = [sid for sid in live if self._next_check.get(sid, 0.0) <= now]
        self._listed = len(due) > _MANY
        if self._listed:
            due = live  # one list of every job answers for all of them
        if due:
            changed = await self._check(due, now) or changed
        if now - self._capacity_at >= self._ray.capacity_refresh_seconds:
            await self._refresh_capacity()
        return changed

    async def _check(self, sids: list[str], now: float) -> bool:
        """Ask Ray about these jobs and take in what it says; True if anything changed."""
        found = await self._ask(sids)
        if found is None:
            return False
        changed = False
        for sid, job in found.items():
            handle = self._watched.get(sid)
            if handle is None:
                continue
            if job is None:
                changed = self._vanished(sid, handle) or changed
            elif job.is_terminal:
                await self._finish(sid, handle, job)
                changed = True
            else:
                changed = self._saw(sid, job, now) or changed
                if job.status == "RUNNING" and now - self._log_at.get(sid, 0.0) >= (
                    self._ray.log_interval_seconds
                ):
                    self._log_at[sid] = now
                    await self._copy_log(sid, handle, job, final=False)
        return changed

    async def _ask(self, sids: list[str]) -> dict[str, RayJob | None] | None:
        """Ray's word on each job (None: Ray does not know it); None if Ray does not answer."""
        try:
            if len(sids) > _MANY:
                every = await self._client.jobs()
                return {sid: every.get(sid) for sid in sids}
            answers = await asyncio.gather(
                *(self._client.look(sid) for sid in sids), return_exceptions=True
            )
        except Unreachable as exc:
            self._mark_unavailable(exc.message)
            return None
        except RayRefused as exc:
            log.warning("Ray executor: listing jobs failed: %s", exc.message)
            return None
        found: dict[str, RayJob | None] = {}
        for sid, answer in zip(sids, answers, strict=True):
            if isinstance(answer, Unreachable):
                self._mark_unavailable(answer.message)
            elif isinstance(answer, BaseException):
                log.warning("Ray executor: asking about %s failed: %s", sid, answer)
            else:
                found[sid], text = answer
                if text is not None:
                    self._final_logs[sid] = text  # _finish copies it without asking again
        if found:
            self._mark_available()
        return found

    def _saw(self, sid: str, job: RayJob, now: float) -> bool:
        before = self._seen.get(sid)
        self._seen[sid] = job
        changed = before is None or before.status != job.status
        if changed:
            self._changed_at[sid] = now
        # Look again soon while the job is young in its state, less often as it ages.
        age = now - self._changed_at.get(sid, now)
        pause = min(self._ray.poll_max_interval_seconds, max(0.0, age / 20))
        self._next_check[sid] = now + pause
        return changed

    def _vanished(self, sid: str, handle: Handle) -> bool:
        """Ray no longer knows the job: its head restarted (and kept no job table)."""
        deferred = handle.get("deferred")
        if deferred:  # it may never have got there (the server restarted meanwhile)
            self._backlog[sid] = Submission.from_json(deferred)
            return True
        self._seen.pop(sid, None)
        self._finals[sid] = TaskReport(
            TaskState.LOST,
            message=f"Ray no longer knows job {sid} (its head restarted, or it was deleted in "
            "Ray); its log up to then is kept",
            reason=TerminationReason.LOST,
        )
        return True

    async def _finish(self, sid: str, handle: Handle, job: RayJob) -> None:
        """The end of a job: the rest of its log, then its exit code beside the log, then the
        report (so whoever sees it ended finds the whole log)."""
        await self._copy_log(sid, handle, job, final=True)
        report = report_of(job, killed=job.status == "STOPPED" and await self._was_killed(job))
        with contextlib.suppress(OSError):
            if report.exit_code is not None:
                _write_atomically(Path(handle["exit"]), f"{report.exit_code} {sid}\n")
            else:
                with open(handle["log"], "ab") as out:
                    out.write(f"jobyard: {report.message}\n".encode())
        self._seen.pop(sid, None)
        self._finals[sid] = report
        self.wakeup()  # now, not at the end of the round: the reconciler records it at once

    async def _was_killed(self, job: RayJob) -> bool:
        try:
            return was_killed(await self._client.supervisor_log(job))
        except (Unreachable, RayRefused):
            return False

    async def _copy_log(self, sid: str, handle: Handle, job: RayJob, *, final: bool) -> None:
        """Append what the driver printed since the last copy to the task's log file."""
        text = self._final_logs.pop(sid, None) if final else None
        if text is None:
            try:
                text = await self._client.logs(sid)
            except (Unreachable, RayRefused) as exc:
                log.debug("Ray executor: no log of %s now: %s", sid, exc.message)
                return
        body = driver_output(text, job, final=final)
        path = Path(handle["log"])
        try:
            have = path.stat().st_size - int(handle.get("log_base") or 0)
        except FileNotFoundError:
            have = 0
        if len(body) > have:
            with contextlib.suppress(OSError), open(path, "ab") as out:
                out.write(body[max(have, 0) :])

    # ---- usage --------------------------------------------------------------------------------

    async def task_usage(self, handles: Sequence[Handle]) -> list[ReportedUsage | None]:
        """What Ray's dashboard says each running job's processes use: its driver (once
        `ray.init()` made it a Ray driver) and the workers of its tasks and actors, found in
        Ray's State API, their CPU and memory in the figures each node's reporter agent keeps
        (every few seconds; a job's first ones come some 5-20 s after it started). Three
        calls, plus one per node the jobs use; None for a job Ray has no figures of (a
        driver that never called ray.init(), a job not running) or while Ray does not answer."""
        jobs = [self._seen.get(str(h.get("submission_id") or "")) for h in handles]
        running = [j for j in jobs if j is not None and j.status == "RUNNING"]
        if not running or self._unavailable is not None:
            return [None] * len(handles)
        try:
            workers, tasks, actors = await asyncio.gather(
                self._client.state("workers", is_alive="True", worker_type="DRIVER"),
                self._client.state("tasks", state="RUNNING"),
                self._client.state("actors", state="ALIVE"),
            )
            processes = {j.submission_id: job_processes(j, workers, tasks, actors) for j in running}
            wanted = sorted({node for found in processes.values() for node in found})
            stats = await asyncio.gather(*(self._client.node_stats(n) for n in wanted))
        except (Unreachable, RayRefused) as exc:
            log.debug("Ray executor: no usage figures now: %s", exc.message)
            return [None] * len(handles)
        nodes = dict(zip(wanted, stats, strict=True))
        return [usage_of(processes[j.submission_id], nodes) if j in running else None for j in jobs]

    # ---- stop, release, close -----------------------------------------------------------------

    async def stop(self, handle: Handle, grace: float) -> None:  # noqa: ARG002 - see below
        """Ray's stop: TERM to the driver and everything it started, KILL after the job's
        RAY_JOB_STOP_WAIT_TIME_S, which every job is submitted with: the server's
        stop_grace_seconds (Ray reads it when the job starts, so a different `grace` here
        cannot change it). Idempotent; asked again while the cluster does not answer."""
        sid = str(handle.get("submission_id") or "")
        if not sid or sid in self._stopping or sid in self._stop_asked:
            return
        if sid in self._finals or _exit_code(handle) is not None:
            return
        self._stop_asked.add(sid)
        if self._backlog.pop(sid, None) is not None:  # it never reached Ray
            self._finals[sid] = TaskReport(TaskState.EXITED, 128 + 15, "stopped before Ray ran it")
            self.wakeup()
            return
        self._stopping[sid] = asyncio.create_task(self._stop_job(sid))

    async def _stop_job(self, sid: str) -> None:
        try:
            for attempt in range(_STOP_ATTEMPTS):
                try:
                    await self._client.stop(sid)
                except Unreachable as exc:
                    log.warning("Ray executor: stop %s (attempt %d): %s", sid, attempt + 1, exc)
                    await asyncio.sleep(min(2.0**attempt, 10.0))
                    continue
                except RayRefused as exc:
                    if exc.status != 404:
                        log.warning("Ray executor: Ray refused to stop %s: %s", sid, exc.message)
                break
        finally:
            self._stopping.pop(sid, None)
            self._next_check[sid] = 0.0  # look at it on the next round
            self.wakeup()

    def release(self, handle: Handle, *, remove_files: bool) -> None:
        sid = str(handle.get("submission_id") or "")
        ended = sid in self._finals
        for cache in (
            self._watched,
            self._seen,
            self._finals,
            self._backlog,
            self._next_check,
            self._changed_at,
            self._log_at,
            self._final_logs,
        ):
            cache.pop(sid, None)
        self._stop_asked.discard(sid)
        if not remove_files:
            return
        for key in ("log", "exit"):
            with contextlib.suppress(OSError, KeyError, TypeError):
                os.unlink(handle[key])
        with contextlib.suppress(OSError, KeyError):
            Path(handle["log"]).parent.rmdir()
        if ended:  # the job is deleted here: so is Ray's record of it (best effort)
            self._in_background(self._client.delete(sid))

    def _in_background(self, coro: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop: nothing to do it with
            coro.close()
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def close(self) -> None:
        tasks = [*self._stopping.values(), *self._background]
        if self._watcher is not None:
            tasks.append(self._watcher)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._client.close()


def _last_line(text: str) -> str:
    """Ray's errors end in the line that says what went wrong, after a server traceback."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip(" .")]
    return lines[-1] if lines else text


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _exit_code(handle: Handle) -> int | None:
    """The code in the task's exit file, if this Ray job wrote it (`<code> <submission id>`):
    a retried task has the same files, and a late word on its earlier attempt is not this
    one's."""
    try:
        code, _, sid = Path(handle["exit"]).read_text().strip().partition(" ")
        return int(code) if sid == handle.get("submission_id") else None
    except (OSError, KeyError, TypeError, ValueError):
        return None
