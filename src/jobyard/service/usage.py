"""Per-task usage: the sampler, the stored samples a job's owner reads, and idle_gpu_timeout.

Every `usage_interval_seconds` one pass (`UsageService.sample`):

1. reads the started tasks of live jobs from the store (one query);
2. asks the executor for each task's processes on this machine (`Executor.task_pids`); for a
   task it cannot see (it runs elsewhere), for the figures it measured there
   (`Executor.task_usage`: Slurm's sstat, Ray's dashboard); a task with neither gets no sample;
3. off the event loop, scans /proc once and reads every GPU once (executors/usage.py);
4. stores one sample per task (a ring of `usage_samples` per task, store/usage.py) in one write;
5. checks the jobs that set idle_gpu_timeout (`IdleGpus`): a Warning event (IdleGpu) when all
   of a job's GPUs stayed below `idle_gpu_threshold_percent` for that long, and, with
   idle_gpu_action "stop", the job is stopped (FAILED, reason IDLE_GPU).

The sampler counts its own CPU time (each step, in whichever thread runs it): the
`jobyard_usage_sampler_cpu_seconds_total` figure of /metrics, which bench/usage.py reads.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import ParamSpec, TypeVar

from prometheus_client.core import CounterMetricFamily, Metric
from sqlalchemy import Connection

from jobyard.config import Settings
from jobyard.errors import InvalidInput, NotFound
from jobyard.executors.base import Executor
from jobyard.executors.usage import (
    CpuMeter,
    GpuReading,
    GpuSource,
    NoGpus,
    ProcessTable,
    ReportedUsage,
    TreeUsage,
)
from jobyard.metrics import Source
from jobyard.model import EventType, TerminationReason
from jobyard.model.job import IdleGpuAction
from jobyard.model.usage import GpuUsage, JobUsage, TaskUsage, UsageSample
from jobyard.service.auth import User
from jobyard.service.jobs import JobService
from jobyard.service.logs import LogQuery, LogService
from jobyard.store import usage as store_usage
from jobyard.store.db import Database
from jobyard.store.usage import IdleSpell, NumberedSample, RunningTask, TaskKey

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

IDLE_EVENT = "IdleGpu"
UNMEASURED_EVENT = "IdleGpuUnmeasured"


@dataclass(frozen=True)
class IdleVerdict:
    """What is due for one job: an IdleGpu event (and a stop), or the one-off word that its
    idle_gpu_timeout cannot be applied here (`measurable` False)."""

    job_id: int
    message: str
    stop: bool = False
    measurable: bool = True


class IdleGpus:
    """idle_gpu_timeout: since when each watched job's GPUs have all been idle, and what is due.

    A job is idle while every one of its GPUs is measured below the threshold; a pass where
    any is busy, or any is not measured, starts the count again (no figure is no evidence).
    The event comes once per idle spell; after a busy pass, a new spell may bring another.

    What it knows of each job is kept in the store too (`changes`, `load`): a restarted server
    goes on with a spell, rather than starting it again."""

    def __init__(self, threshold_percent: float) -> None:
        self.threshold = threshold_percent
        self._since: dict[int, float] = {}
        self._acted: set[int] = set()
        self._unmeasured: set[int] = set()
        self._changed: set[int] = set()  # jobs whose state changed since `changes` was called
        self.loaded = False

    def load(self, spells: Iterable[IdleSpell]) -> None:
        """Go on from what a previous server stored."""
        for spell in spells:
            if spell.since is not None:
                self._since[spell.job_id] = spell.since
            if spell.acted:
                self._acted.add(spell.job_id)
            if spell.unmeasured:
                self._unmeasured.add(spell.job_id)
        self.loaded = True

    def changes(self) -> tuple[list[IdleSpell], list[int]]:
        """(the spells to store, the jobs to forget) since the last call."""
        keep, forget = [], []
        for job_id in sorted(self._changed):
            spell = IdleSpell(
                job_id,
                self._since.get(job_id),
                job_id in self._acted,
                job_id in self._unmeasured,
            )
            if spell == IdleSpell(job_id):
                forget.append(job_id)
            else:
                keep.append(spell)
        self._changed.clear()
        return keep, forget

    def observe(
        self,
        job_id: int,
        timeout: float,
        action: IdleGpuAction,
        gpus: Sequence[GpuUsage] | None,
        expected: int,
        now: float,
    ) -> IdleVerdict | None:
        """One pass's figures of all the job's GPUs (None: some task has none), of the
        `expected` GPUs it holds."""
        if gpus is None or expected == 0 or len(gpus) < expected:
            return self._not_measured(job_id)
        if any(g.utilization_percent >= self.threshold for g in gpus):
            self._end_spell(job_id)
            return None
        if job_id not in self._since:
            self._since[job_id] = now
            self._changed.add(job_id)
        since = self._since[job_id]
        if now - since < timeout or job_id in self._acted:
            return None
        self._acted.add(job_id)
        self._changed.add(job_id)
        indices = ", ".join(str(g.index) for g in sorted(gpus, key=lambda g: g.index))
        message = (
            f"GPU {indices} below {self.threshold:g}% busy for {now - since:.0f} s "
            f"(idle_gpu_timeout {timeout:g} s)"
        )
        stop = action is IdleGpuAction.STOP
        return IdleVerdict(job_id, message + ("; stopping the job" if stop else ""), stop)

    def _end_spell(self, job_id: int) -> None:
        if job_id in self._since or job_id in self._acted:
            self._since.pop(job_id, None)
            self._acted.discard(job_id)
            self._changed.add(job_id)

    def _not_measured(self, job_id: int) -> IdleVerdict | None:
        if job_id in self._since:
            del self._since[job_id]
            self._changed.add(job_id)
        if job_id in self._unmeasured:
            return None
        self._unmeasured.add(job_id)
        self._changed.add(job_id)
        message = (
            "idle_gpu_timeout cannot be applied yet: no GPU figures for this job's GPUs on "
            "this server (NVML not found, or its tasks run elsewhere)"
        )
        return IdleVerdict(job_id, message, measurable=False)

    def keep_only(self, job_ids: Iterable[int]) -> None:
        """Forget the jobs not watched any more."""
        wanted = set(job_ids)
        known = set(self._since) | self._acted | self._unmeasured
        self._changed |= known - wanted
        for job_id in [j for j in self._since if j not in wanted]:
            del self._since[job_id]
        self._acted &= wanted
        self._unmeasured &= wanted


@dataclass(frozen=True)
class _Measured:
    """What one pass found, off the event loop."""

    usage: dict[TaskKey, TreeUsage]
    gpus: dict[int, GpuReading] | None
    at: float
    log_sizes: dict[TaskKey, int]


_LONGEST_LINE = 64 * 1024  # a followed line longer than this goes out in stamped pieces
LOG_MARKS = 17_280  # log marks kept per task: a day of passes at 5 s while the log grows


def stamp_lines(data: bytes, start: int, marks: Sequence[tuple[int, float]], late: float) -> bytes:
    """Each line of `data` (log bytes from offset `start`) behind the time its last byte was
    first seen there: the first mark (log size, when) that covers it; `late` for the bytes no
    pass has seen yet. RFC 3339 in UTC, then a space, as `kubectl logs --timestamps`."""
    sizes, times, most = [], [], 0
    for size, at in marks:  # a log only grows; a mark below an earlier one is ignored
        if size > most:
            most = size
            sizes.append(size)
            times.append(at)
    out, end = [], start
    for line in data.splitlines(keepends=True):
        end += len(line)
        i = bisect.bisect_left(sizes, end)
        at = times[i] if i < len(times) else late
        stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds")
        out.append(stamp.replace("+00:00", "Z").encode() + b" " + line)
    return b"".join(out)


class UsageService:
    def __init__(
        self,
        db: Database,
        executor: Executor,
        jobs: JobService,
        settings: Settings,
        gpus: GpuSource | None = None,
        clock: Callable[[], float] = time.time,
        logs: LogService | None = None,
    ) -> None:
        self._db = db
        self._executor = executor
        self._jobs = jobs
        self._settings = settings
        self._gpus: GpuSource = gpus if gpus is not None else NoGpus()
        self._clock = clock
        self._cpu = CpuMeter()
        self._reported_cpu = CpuMeter()  # for the tasks whose executor reports their figures
        self._seq: dict[TaskKey, int] = {}
        self._marks: dict[TaskKey, tuple[int, int]] = {}  # (number, log size) of the last mark
        self._logs = logs
        self.idle = IdleGpus(settings.idle_gpu_threshold_percent)
        self.cpu_seconds = 0.0  # the sampler's own CPU time, every thread it used
        self.passes = 0
        self.samples = 0

    @property
    def interval(self) -> float:
        return self._settings.usage_interval_seconds

    # ---- reading ------------------------------------------------------------------------------

    async def job_usage(
        self, user: User, ref: str, *, task: str | None = None, last: int | None = None
    ) -> JobUsage:
        """A job's samples, task by task, oldest first: the latest `last` of each (all that
        are kept by default). Only its owner and admins may read them (404 for others)."""
        if last is not None and last < 1:
            raise InvalidInput("last must be at least 1", field="last")
        job = await self._jobs.get(user, ref)
        tasks = [t for t in job.tasks if task in (None, "", t.name, str(t.index))]
        if not tasks:
            raise NotFound(f"job {job.display_id} has no task {task!r}", field="task")
        ring = self._settings.usage_samples
        limit = ring if last is None else min(last, ring)
        stored = await self._db.read(partial(store_usage.job_samples, job_id=job.id, last=limit))
        return JobUsage(
            job_id=job.id,
            display_id=job.display_id,
            interval_seconds=self.interval,
            tasks=[
                TaskUsage(index=t.index, name=t.name, samples=stored.get(t.index, []))
                for t in tasks
            ],
        )

    def figures(self) -> Source:
        """The sampler's own cost, for /metrics."""

        async def read() -> Iterable[Metric]:
            return [
                CounterMetricFamily(
                    "jobyard_usage_sampler_cpu_seconds",
                    "CPU time the usage sampler spent, in every thread it used.",
                    value=self.cpu_seconds,
                ),
                CounterMetricFamily(
                    "jobyard_usage_sampler_passes", "Usage sampling passes.", value=self.passes
                ),
                CounterMetricFamily(
                    "jobyard_usage_samples", "Usage samples stored.", value=self.samples
                ),
            ]

        return read

    # ---- sampling -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Sample every interval until cancelled (never, with an interval of 0)."""
        if self.interval <= 0:
            return
        try:
            while True:
                began = time.monotonic()
                try:
                    await self.sample()
                except Exception:  # a pass that fails (a busy store) is only a gap
                    log.exception("usage sampling pass failed")
                await asyncio.sleep(max(self.interval - (time.monotonic() - began), 0.01))
        finally:
            with contextlib.suppress(Exception):
                self._gpus.close()

    async def sample(self) -> list[NumberedSample]:
        """One pass: a sample of every running task this server can measure, stored."""
        tasks = await self._db.read(self._timed(store_usage.running_tasks))
        pids = self._timed(self._pids)(tasks)
        reported = await self._reported(tasks, pids)
        measured = await asyncio.to_thread(self._timed(self._measure), tasks, pids)
        samples = self._timed(self._samples)(tasks, pids, measured)
        samples.update(self._timed(self._reported_samples)(reported, measured.at))
        new = [key for key in samples if key not in self._seq]
        if new:
            found = await self._db.read(self._timed(partial(store_usage.last_numbers, keys=new)))
            self._seq.update({key: found.get(key, -1) for key in new})
        numbered = self._timed(self._number)(samples)
        marks = await self._new_marks(measured)
        stored = await self._db.write(
            self._timed(partial(self._store, samples=numbered, marks=marks))
        )
        self.passes += 1
        self.samples += stored
        await self._check_idle(tasks, samples, measured.at)
        return numbered

    def _pids(self, tasks: Sequence[RunningTask]) -> dict[TaskKey, Sequence[int]]:
        found = {}
        for task in tasks:
            roots = self._executor.task_pids(task.handle)
            if roots:
                found[(task.job_id, task.task_index)] = roots
        return found

    async def _reported(
        self, tasks: Sequence[RunningTask], pids: dict[TaskKey, Sequence[int]]
    ) -> dict[TaskKey, ReportedUsage]:
        """What the executor measured of the tasks with no processes here (none, mostly)."""
        elsewhere = [t for t in tasks if (t.job_id, t.task_index) not in pids]
        if not elsewhere:
            return {}
        answers = await self._executor.task_usage([t.handle for t in elsewhere])
        return {
            (t.job_id, t.task_index): answer
            for t, answer in zip(elsewhere, answers, strict=True)
            if answer is not None
        }

    def _reported_samples(
        self, reported: dict[TaskKey, ReportedUsage], at: float
    ) -> dict[TaskKey, UsageSample]:
        """Samples of the figures an executor reported. CPU cores are the rate it gives, else
        the growth of the CPU time since the task's last sample (none for its first: the
        executor does not say since when); GPUs those it reports (Ray's dashboard), else None:
        this machine's NVML does not see the nodes' GPUs."""
        when = datetime.fromtimestamp(at, UTC)
        samples = {}
        for key, figures in reported.items():
            cores = figures.cpu_cores
            if cores is None and figures.cpu_seconds is not None:
                tree = TreeUsage(figures.cpu_seconds, 0, started_at=at, processes=0)
                cores = self._reported_cpu.cores(key, tree, at)
            gpus = None if figures.gpus is None else _task_gpus(
                [g.index for g in figures.gpus], {g.index: g for g in figures.gpus}
            )  # fmt: skip
            samples[key] = UsageSample(
                timestamp=when, cpu_cores=cores, memory_rss_bytes=figures.rss_bytes, gpus=gpus
            )
        self._reported_cpu.keep_only(samples)
        return samples

    def _measure(
        self, tasks: Sequence[RunningTask], pids: dict[TaskKey, Sequence[int]]
    ) -> _Measured:
        table = ProcessTable.scan() if pids else ProcessTable({})
        gpus = self._gpus.read() if pids else None
        sizes = {(t.job_id, t.task_index): self._executor.log_size(t.handle) for t in tasks}
        at = self._clock()
        usage = {}
        for key, roots in pids.items():
            found = table.usage(roots)
            if found is not None:
                usage[key] = found
        return _Measured(usage, gpus, at, sizes)

    async def _new_marks(self, measured: _Measured) -> list[store_usage.LogMark]:
        """A mark for each log that grew since its last one (logs of tasks seen for the first
        time: their last stored mark is read first)."""
        sizes = measured.log_sizes
        new = [key for key in sizes if key not in self._marks]
        if new:
            found = await self._db.read(self._timed(partial(store_usage.last_marks, keys=new)))
            self._marks.update({key: found.get(key, (-1, 0)) for key in new})
        marks = []
        for key, size in sizes.items():
            seq, known = self._marks[key]
            if size > known:
                self._marks[key] = (seq + 1, size)
                marks.append(store_usage.LogMark(key[0], key[1], seq + 1, size, measured.at))
        for key in [k for k in self._marks if k not in sizes]:
            del self._marks[key]
        return marks

    def _store(
        self,
        conn: Connection,
        samples: Sequence[NumberedSample],
        marks: Sequence[store_usage.LogMark],
    ) -> int:
        store_usage.record_marks(conn, marks, LOG_MARKS)
        return store_usage.record(conn, samples, self._settings.usage_samples)

    # ---- log timestamps -----------------------------------------------------------------------

    async def stamped_log(self, user: User, ref: str, query: LogQuery) -> bytes:
        """The log as LogService.read gives it, each line behind the time a sampling pass
        first saw it (at the latest); lines no pass has seen yet: the task's end, or now."""
        if self._logs is None:
            raise NotFound("this server keeps no log timestamps", field="timestamps")
        job, task, start, data = await self._logs.read_from(user, ref, query)
        if not data:
            return b""
        read = partial(store_usage.task_marks, job_id=job.id, task_index=task.index)
        marks = await self._db.read(read)
        late = task.finished_at.timestamp() if task.finished_at else self._clock()
        return stamp_lines(data, start, marks, late)

    async def stamped_follow(self, user: User, ref: str, query: LogQuery) -> AsyncIterator[bytes]:
        """The log as LogService.follow streams it, each line behind its time as stamped_log
        gives it (the marks when following began; a line none covers: when it was read,
        which a follower does within its poll of the line's arrival). Lines go out whole: a
        line's bytes wait for its newline (or the end, or 64 KiB)."""
        if self._logs is None:
            raise NotFound("this server keeps no log timestamps", field="timestamps")
        job, task, chunks = await self._logs.follow_from(user, ref, query)
        read = partial(store_usage.task_marks, job_id=job.id, task_index=task.index)
        ended = task.finished_at.timestamp() if task.finished_at else None
        return self._stamped_chunks(chunks, read, ended)

    async def _stamped_chunks(
        self,
        chunks: AsyncGenerator[tuple[int, bytes]],
        read_marks: Callable[[Connection], list[tuple[int, float]]],
        ended: float | None,
    ) -> AsyncIterator[bytes]:
        marks: list[tuple[int, float]] | None = None
        pending, start = b"", 0
        async with contextlib.aclosing(chunks):  # a client gone: the follow ends now
            async for offset, chunk in chunks:
                if marks is None:  # read when the first bytes come: the backlog's times
                    marks = await self._db.read(read_marks)
                if not pending:
                    start = offset
                data = pending + chunk
                cut = data.rfind(b"\n") + 1
                if not cut and len(data) >= _LONGEST_LINE:
                    cut = len(data)
                if cut:
                    yield stamp_lines(data[:cut], start, marks, ended or self._clock())
                pending, start = data[cut:], start + cut
        if pending:
            yield stamp_lines(pending, start, marks or [], ended or self._clock())

    def _samples(
        self,
        tasks: Sequence[RunningTask],
        pids: dict[TaskKey, Sequence[int]],
        measured: _Measured,
    ) -> dict[TaskKey, UsageSample]:
        when = datetime.fromtimestamp(measured.at, UTC)
        samples = {}
        for task in tasks:
            key = (task.job_id, task.task_index)
            tree = measured.usage.get(key)
            if tree is None:
                continue
            samples[key] = UsageSample(
                timestamp=when,
                cpu_cores=self._cpu.cores((*key, *pids[key]), tree, measured.at),
                memory_rss_bytes=tree.rss_bytes,
                gpus=_task_gpus(task.gpus, measured.gpus),
            )
        self._cpu.keep_only((*key, *pids[key]) for key in samples)
        return samples

    def _number(self, samples: dict[TaskKey, UsageSample]) -> list[NumberedSample]:
        numbered = []
        for key, sample in samples.items():
            self._seq[key] += 1
            numbered.append(NumberedSample(key[0], key[1], self._seq[key], sample))
        for key in [k for k in self._seq if k not in samples]:
            del self._seq[key]  # ended: its number is read again if it ever comes back
        return numbered

    def _timed(self, fn: Callable[P, T]) -> Callable[P, T]:
        """`fn`, adding the CPU time of its thread while it runs to the sampler's own."""

        def timed(*args: P.args, **kwargs: P.kwargs) -> T:
            before = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu_seconds += time.thread_time() - before

        return timed

    # ---- idle GPUs ----------------------------------------------------------------------------

    async def _check_idle(
        self, tasks: Sequence[RunningTask], samples: dict[TaskKey, UsageSample], now: float
    ) -> None:
        if not self.idle.loaded:
            self.idle.load(await self._db.read(self._timed(store_usage.idle_spells)))
        verdicts = self._timed(self._idle_verdicts)(tasks, samples, now)
        for verdict in verdicts:
            reason = IDLE_EVENT if verdict.measurable else UNMEASURED_EVENT
            await self._jobs.record_event(
                verdict.job_id, EventType.WARNING, reason, verdict.message
            )
            if verdict.stop:
                await self._jobs.stop_for(
                    verdict.job_id, TerminationReason.IDLE_GPU, verdict.message
                )
        # After the events: a crash in between repeats an event rather than losing one.
        keep, forget = self.idle.changes()
        if keep or forget:  # rare: a spell begins or ends, a job is acted on or told
            save = partial(store_usage.save_idle_spells, spells=keep, forget=forget)
            await self._db.write(self._timed(save))

    def _idle_verdicts(
        self, tasks: Sequence[RunningTask], samples: dict[TaskKey, UsageSample], now: float
    ) -> list[IdleVerdict]:
        watched: dict[int, list[RunningTask]] = {}
        for task in tasks:
            if task.spec.get("idle_gpu_timeout"):
                watched.setdefault(task.job_id, []).append(task)
        self.idle.keep_only(watched)
        measures = "usage" in self._executor.capabilities
        verdicts = []
        for job_id, own in watched.items():
            sampled = [t for t in own if (job_id, t.task_index) in samples]
            if measures and not sampled:
                continue  # its processes are not seen this pass (ending, or not yet started)
            seen = [samples[(job_id, t.task_index)] for t in sampled]
            figures = (
                None
                if not seen or any(s.gpus is None for s in seen)
                else [g for s in seen for g in s.gpus or ()]
            )
            spec = own[0].spec
            verdict = self.idle.observe(
                job_id,
                float(spec["idle_gpu_timeout"]),
                IdleGpuAction(spec.get("idle_gpu_action") or IdleGpuAction.WARN),
                figures,
                sum(len(t.gpus) for t in (sampled or own)),
                now,
            )
            if verdict is not None:
                verdicts.append(verdict)
        return verdicts


def _task_gpus(
    indices: Sequence[int], readings: dict[int, GpuReading] | None
) -> list[GpuUsage] | None:
    """The figures of the task's own GPUs; None where this machine gives none."""
    if readings is None:
        return None
    return [
        GpuUsage(
            index=r.index,
            utilization_percent=r.utilization_percent,
            memory_used_bytes=r.memory_used_bytes,
            memory_total_bytes=r.memory_total_bytes,
        )
        for r in (readings.get(i) for i in indices)
        if r is not None
    ]
