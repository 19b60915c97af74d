"""The reconciler owns all slow work. `tick()` is one pass; `run()` loops it.

A pass: refresh its view of the live jobs (SCHEDULED..STOPPING); poll the executor for their
tasks and record what ended; finish jobs, or begin stopping the rest of a job whose worker
failed; signal the tasks of STOPPING jobs; enforce max_runtime; place queued jobs on free
capacity and start them. The API only records intent and wakes this loop.

The live jobs are kept in memory between passes. A pass reloads only the jobs it changed or
was told about (`wake(job_id)`), and all of them once per `reconcile_interval_seconds`, so a
pass costs what changed, not how many jobs run. Writes are batched: a few statements per pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import Connection

from jobyard.config import Settings
from jobyard.errors import JobyardError
from jobyard.executors.base import Executor, InterruptedStart, StartedTask, TaskReport
from jobyard.metrics import Metrics
from jobyard.model import (
    EventType,
    Job,
    JobSpec,
    JobState,
    PendingReason,
    Placement,
    TaskState,
    TerminationReason,
)
from jobyard.model.job import TaskPlacement
from jobyard.scheduler.outcome import Outcome, decide, for_reason
from jobyard.scheduler.policy import Candidate, Plan, plan
from jobyard.store import jobs as q, scheduling as sq
from jobyard.store.db import Database

log = logging.getLogger(__name__)

_WATCHED = (JobState.SCHEDULED, JobState.STARTING, JobState.RUNNING, JobState.STOPPING)
# A failed attempt is retried (when max_retries allows) unless a person or a deadline ended it.
_NOT_RETRIED = (
    TerminationReason.STOPPED_BY_USER,
    TerminationReason.MAX_RUNTIME_EXCEEDED,
    TerminationReason.IDLE_GPU,  # it would sit idle again
)
_NOT_FOUND = "server restarted while starting; the process was not found"


@dataclass(frozen=True)
class _Started:
    placement: Placement
    tasks: list[StartedTask]
    error: str | None = None
    found: bool = False  # found after a restart (find_started), not started by this server


class Reconciler:
    def __init__(
        self,
        db: Database,
        executor: Executor,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self._db = db
        self._metrics = metrics or Metrics()
        self._executor = executor
        self._settings = settings
        self._clock = clock
        self._wake = asyncio.Event()
        self._live: dict[int, Job] = {}
        self._specs: dict[int, JobSpec] = {}  # specs never change: parse each once
        self._dirty: set[int] = set()
        self._queue_changed = True
        self._next_full_reload = 0.0
        # The queued jobs, kept between passes: new ones are read by id, all ids once per
        # interval (to drop those stopped or deleted), changed ones when woken for them.
        self._queued: dict[int, Candidate] = {}
        self._queued_max_id = 0
        self._queued_full = True
        self._queued_dirty: set[int] = set()
        self._positions: dict[int, int] = {}
        self._queues = {item.name: item for item in settings.effective_queues}
        self._backoff_timer: asyncio.TimerHandle | None = None
        # Jobs a crash caught mid-start (their handles never stored), by when they began
        # starting: held (and never finished) until the executor says what of them it started.
        self._interrupted: dict[int, float] = {}
        self.leading = False  # whether this server schedules (holds the database's leadership)
        executor.set_wakeup(self._wake.set)

    def wake(self, job_id: int | None = None) -> None:
        """Ask for a pass: for a new submission (None) or a change to one job."""
        if not self.leading:
            return  # a standby: the leader finds everything on its own next pass
        if job_id is None:
            self._queue_changed = True
        else:
            self._dirty.add(job_id)
            self._queued_dirty.add(job_id)
            self._queue_changed = True
        self._wake.set()

    def queue_position(self, job_id: int) -> int | None:
        """Where a queued job stands in its queue at the last pass (1 is next), or None."""
        return self._positions.get(job_id)

    async def run(self) -> None:
        leadership = await self._lead()
        try:
            await self._run()
        finally:
            self.leading = False
            with contextlib.suppress(Exception):
                leadership.invalidate()  # really close it: the advisory lock goes with it

    async def _lead(self) -> Connection:
        """Wait until this server is the one that schedules (immediate on SQLite)."""
        waited = False
        while True:
            conn = await asyncio.to_thread(self._db.try_lead)
            if conn is not None:
                self.leading = True
                if waited:
                    log.info("this server now schedules and watches jobs")
                return conn
            if not waited:
                log.info("another server schedules this database's jobs; standing by")
                waited = True
            await asyncio.sleep(max(1.0, self._settings.reconcile_interval_seconds))

    async def _run(self) -> None:
        await self.recover()
        interval = self._settings.reconcile_interval_seconds
        while True:
            self._wake.clear()
            started = time.monotonic()
            try:
                with self._metrics.scheduling_pass.time():
                    await self.tick()
            except Exception:
                self._metrics.reconciler_errors.inc()
                log.exception("reconciler pass failed; retrying")
                self._next_full_reload = 0.0
                await asyncio.sleep(interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            # Coalesce bursts (many submissions, many exits) into one pass.
            await asyncio.sleep(
                max(0.0, self._settings.reconcile_min_gap_seconds - (time.monotonic() - started))
            )

    async def recover(self) -> None:
        """After a restart: a SCHEDULED job started nothing yet, so it goes back to the queue.
        A STARTING (or, stopped meanwhile, STOPPING) job with tasks whose handles were never
        stored was caught mid-start: the executor finds what of it started (_find_interrupted)."""

        def requeue(conn: Connection) -> dict[int, float]:
            back = q.Transition(JobState.QUEUED, "server restarted before the job started")
            ids = q.ids_in_states(conn, [JobState.SCHEDULED])
            q.transition_many(conn, [(job_id, back) for job_id in ids], self._clock())
            caught = q.ids_in_states(conn, [JobState.STARTING, JobState.STOPPING])
            _record_reattached(conn, self._clock())
            return {
                job.id: _starting_since(job)
                for job in q.load_jobs(conn, caught, with_log=True)
                if any(t.handle is None for t in job.tasks)
            }

        self._interrupted = await self._db.write(requeue)
        await self._find_interrupted()

    async def _find_interrupted(self) -> None:
        """Ask the executor what the interrupted starts left. A job found whole goes on as if
        its start had returned (RUNNING, or waiting in Slurm); found in part, what was found is
        stopped and the job ends LOST once it is gone; found not at all, it is LOST (or
        retried). If the executor cannot say yet (Slurm unreachable), ask again next pass."""
        if not self._interrupted:
            return
        ids = sorted(self._interrupted)
        jobs = await self._db.read(lambda c: q.load_jobs(c, ids, with_log=False))
        asked = [job for job in jobs if job.state in (JobState.STARTING, JobState.STOPPING)]
        starts = [InterruptedStart(_unrecorded(job), self._interrupted[job.id]) for job in asked]
        try:
            found = await self._executor.find_started(starts)
        except Exception:
            log.warning(
                "cannot tell yet what the interrupted starts left; asking again", exc_info=True
            )
            return
        now = self._clock()
        retries = [
            self._retry_of(
                job.id, job.attempt, job.spec, None, TerminationReason.LOST, None, _NOT_FOUND, now
            )
            for job, tasks in zip(asked, found, strict=True)
            if job.state is JobState.STARTING
            and not any(tasks)
            and self._retryable(job, TerminationReason.LOST)
        ]
        results = [
            _Started(start.placement, [t for t in tasks if t is not None], found=True)
            for start, tasks in zip(starts, found, strict=True)
        ]
        await self._db.write(
            partial(_record_found, jobs=asked, found=results, retries=retries, now=now)
        )
        self._interrupted = {}
        self._queued_dirty |= {r.job_id for r in retries}
        self._queue_changed = True
        await self._reload(ids)

    async def tick(self) -> None:
        full = await self._refresh()
        await self._find_interrupted()
        await self._observe(full)
        await self._enforce()
        await self._schedule()

    # ---- the live view ---------------------------------------------------------------------------

    async def _refresh(self) -> bool:
        """Reload everything when due (returns True), else only the jobs marked dirty."""
        now = time.monotonic()
        if now >= self._next_full_reload:
            self._next_full_reload = now + self._settings.reconcile_interval_seconds
            self._dirty.clear()
            jobs = await self._db.read(self._load_all_live)
            self._live = {job.id: job for job in jobs}
            self._specs = {job.id: job.spec for job in jobs}
            self._queue_changed = True
            self._queued_full = True
            return True
        if self._dirty:
            ids, self._dirty = sorted(self._dirty), set()
            await self._reload(ids)
        return False

    def _load_all_live(self, conn: Connection) -> list[Job]:
        ids = q.ids_in_states(conn, _WATCHED)
        return q.load_jobs(conn, ids, with_log=False, specs=self._specs)

    async def _reload(self, ids: Iterable[int]) -> None:
        wanted = sorted(set(ids))
        if not wanted:
            return
        jobs = await self._db.read(
            lambda c: q.load_jobs(c, wanted, with_log=False, specs=self._specs)
        )
        found = {job.id: job for job in jobs}
        for job_id in wanted:
            job = found.get(job_id)
            if job is not None and job.state in _WATCHED:
                self._live[job_id] = job
            else:
                self._live.pop(job_id, None)
                self._specs.pop(job_id, None)

    # ---- observe: what did the tasks do? -------------------------------------------------------

    async def _observe(self, full: bool) -> None:
        pairs = [
            (job, task)
            for job in self._live.values()
            for task in job.tasks
            if task.handle is not None and not task.state.is_finished()
        ]
        reports = await self._executor.poll([task.handle or {} for _, task in pairs])
        now = self._clock()
        exits: list[tuple[int, int, q.TaskUpdate]] = []
        touched: dict[int, Job] = {}
        # STARTING jobs whose tasks an executor still holds (queued, pulling their image)
        waiting: dict[int, tuple[PendingReason, str]] = {}
        for (job, task), report in zip(pairs, reports, strict=True):
            if report.state in (TaskState.EXITED, TaskState.LOST):
                task.state, task.exit_code = report.state, report.exit_code
                update = q.TaskUpdate(
                    state=report.state, exit_code=report.exit_code, finished_at=now
                )
                exits.append((job.id, task.index, update))
                touched[job.id] = job
            elif report.state is TaskState.RUNNING and task.state is TaskState.PENDING:
                task.state = TaskState.RUNNING  # the executor's own scheduler started it
                exits.append((job.id, task.index, q.TaskUpdate(state=task.state, started_at=now)))
                touched[job.id] = job
            elif report.state is TaskState.PENDING and job.state is JobState.STARTING:
                waiting.setdefault(job.id, _waiting_for(report))
        began = [j for j in touched.values() if j.state is JobState.STARTING]
        for job in began:
            job.state = JobState.RUNNING  # as written below, before any outcome of the same pass
            waiting.pop(job.id, None)
            if job.attempt == 0:
                self._metrics.submit_to_running.observe(max(0.0, now - job.created_at.timestamp()))
        pending = [
            (job_id, code, message)
            for job_id, (code, message) in waiting.items()
            if (self._live[job_id].pending_reason, self._live[job_id].pending_message)
            != (code, message)
        ]
        candidates = (
            self._live.values()
            if full
            else [
                *touched.values(),
                *(j for j in self._live.values() if j.state is JobState.STOPPING),
            ]
        )
        outcomes = {
            job.id: o
            for job in candidates
            if job.id not in self._interrupted and (o := decide(job)) is not None
        }
        _apply_reasons(outcomes, [job.id for job, _ in pairs], reports)
        if pending:
            events = {job_id for job_id, _, _ in pending}  # only changes are written: say each
            await self._db.write(lambda c: sq.set_pending(c, pending, now, events=events))
            for job_id, code, message in pending:
                self._live[job_id].pending_reason = code
                self._live[job_id].pending_message = message
        if not exits and not outcomes:
            return
        retries = [
            self._retry_of(
                self._live[job_id].id,
                self._live[job_id].attempt,
                self._live[job_id].spec,
                self._live[job_id].started_at,
                o.termination,
                o.exit_code,
                o.message,
                now,
            )
            for job_id, o in outcomes.items()
            if o.final is JobState.FAILED and self._retryable(self._live[job_id], o.termination)
        ]
        retried = {r.job_id for r in retries}
        finals = {k: o for k, o in outcomes.items() if k not in retried}
        began_ids = [job.id for job in began]
        await self._db.write(
            partial(
                _record_outcomes,
                exits=exits,
                outcomes=finals,
                retries=retries,
                began=began_ids,
                now=now,
            )
        )
        for job_id, outcome in outcomes.items():
            if outcome.final is not None:
                self._release(self._live[job_id])
                self._queue_changed = True
        self._queued_dirty |= retried
        await self._reload([*touched, *outcomes])

    def _retryable(self, job: Job, why: TerminationReason | None) -> bool:
        return why not in _NOT_RETRIED and job.attempt < job.spec.max_retries

    def _retry_of(
        self,
        job_id: int,
        attempt: int,
        spec: JobSpec,
        started_at: datetime | None,
        why: TerminationReason | None,
        exit_code: int | None,
        message: str,
        now: float,
    ) -> sq.Retry:
        base = self._settings.retry_backoff_seconds
        delay = min(base * 2**attempt, self._settings.retry_backoff_max_seconds)
        return sq.Retry(
            job_id=job_id,
            attempt=attempt,
            exit_code=exit_code,
            termination=why or TerminationReason.EXIT_NONZERO,
            message=message,
            started_at=started_at.timestamp() if started_at else None,
            not_before=now + delay,
            retries_left=spec.max_retries - attempt - 1,
        )

    def _release(self, job: Job) -> None:
        for task in job.tasks:
            if task.handle is not None:
                self._executor.release(task.handle, remove_files=False)

    # ---- enforce: stop what must stop ----------------------------------------------------------

    async def _enforce(self) -> None:
        now = self._clock()
        limit = self._settings.start_timeout_seconds
        stuck = [
            job
            for job in self._live.values()
            if job.state is JobState.STARTING
            and now - job.updated_at.timestamp() > limit
            and not all(t.handle is not None for t in job.tasks)  # not queued in Slurm
            and job.id not in self._interrupted  # held until the executor says what it left
        ]
        if stuck:
            change = q.Transition(
                JobState.FAILED,
                f"stuck in STARTING for more than {limit:g} s",
                termination=TerminationReason.START_FAILED,
            )
            await self._db.write(
                lambda c: q.transition_many(c, [(job.id, change) for job in stuck], now)
            )
            for job in stuck:
                self._release(job)
            await self._reload(job.id for job in stuck)
            self._queue_changed = True
        overdue = [job for job in self._live.values() if _is_overdue(job, now)]
        if overdue:
            stops = [
                (
                    job.id,
                    TerminationReason.MAX_RUNTIME_EXCEEDED,
                    f"ran longer than max_runtime ({job.spec.max_runtime:g} s)",
                )
                for job in overdue
            ]
            await self._db.write(partial(_begin_stops, stops=stops, now=now))
            await self._reload(job.id for job in overdue)
        grace = self._settings.stop_grace_seconds
        for job in self._live.values():
            if job.state is JobState.STOPPING:
                for task in job.tasks:
                    if task.handle is not None and not task.state.is_finished():
                        await self._executor.stop(task.handle, grace)

    # ---- schedule: start what fits -------------------------------------------------------------

    async def _schedule(self) -> None:
        if not self._queue_changed:
            return
        self._queue_changed = False
        await self._refresh_queued()
        if not self._queued:
            self._positions = {}
            return
        now = self._clock()
        result = plan(
            self._queued.values(),
            self._executor.capacity(),
            self._live.values(),
            self._queues,
            now=now,
            reserve_after=self._settings.reservation_after_seconds,
        )
        self._positions = result.positions
        await self._record_pending(result, now)
        self._arm_backoff_timer(result.next_backoff_end, now)
        placements = result.placements
        if not placements:
            return
        taken = {p.job_id: self._queued.pop(p.job_id) for p in placements}
        attempts = {job_id: candidate.attempt for job_id, candidate in taken.items()}
        claimed_at = self._clock()
        claimed = await self._db.write(partial(_claim, placements=placements, now=claimed_at))
        started = await asyncio.gather(*(self._start(p) for p in placements if p.job_id in claimed))
        now = self._clock()
        retries = [
            self._retry_of(
                r.placement.job_id,
                attempts[r.placement.job_id],
                r.placement.spec,
                None,
                TerminationReason.START_FAILED,
                None,
                r.error or "",
                now,
            )
            for r in started
            if r.error is not None and r.placement.spec.max_retries > attempts[r.placement.job_id]
        ]
        try:
            await self._db.write(
                partial(_record_starts, started=started, retries=retries, now=self._clock())
            )
        except Exception:
            # Started but not stored (a full disk, a lost database): the next passes find them
            # as after a crash, rather than fail them later as stuck while they run.
            self._interrupted |= {r.placement.job_id: claimed_at for r in started if not r.error}
            raise
        self._count_starts(started, taken, now)
        self._queued_dirty |= {r.job_id for r in retries}
        if retries:
            self._queue_changed = True
        await self._reload(p.job_id for p in placements)
        for result_ in started:
            if result_.placement.job_id not in self._live:  # deleted while it was starting
                for task in result_.tasks:
                    await self._executor.stop(task.handle, grace=0)
                    self._executor.release(task.handle, remove_files=True)

    def _count_starts(
        self, started: Sequence[_Started], taken: dict[int, Candidate], now: float
    ) -> None:
        """Queue wait for each start; submit->RUNNING for first attempts that run at once
        (tasks an executor queues are counted when a poll sees them run)."""
        for result in started:
            if result.error is not None:
                continue
            candidate = taken[result.placement.job_id]
            self._metrics.queue_wait.observe(max(0.0, now - candidate.waiting_since))
            if candidate.attempt == 0 and not any(t.waiting for t in result.tasks):
                self._metrics.submit_to_running.observe(max(0.0, now - candidate.waiting_since))

    async def _refresh_queued(self) -> None:
        full, self._queued_full = self._queued_full, False
        dirty, self._queued_dirty = self._queued_dirty, set()
        after = self._queued_max_id
        known = set(self._queued)

        def read(conn: Connection) -> tuple[set[int] | None, list[Any]]:
            ids = sq.queued_ids(conn) if full else None
            rows = sq.queued_rows(conn, after_id=after)
            fetch = set(dirty)
            if ids is not None:
                fetch |= {i for i in ids if i <= after and i not in known}
            if fetch:
                rows += sq.queued_rows(conn, ids=fetch)
            return ids, rows

        ids, rows = await self._db.read(read)
        if ids is not None:
            for job_id in [i for i in self._queued if i not in ids]:
                self._queued.pop(job_id)
        for job_id in dirty:
            self._queued.pop(job_id, None)  # back below if it is still queued
        for row in rows:
            self._queued[row.id] = self._candidate(row)
            self._queued_max_id = max(self._queued_max_id, row.id)

    def _candidate(self, row: Any) -> Candidate:
        spec = self._specs.get(row.id) or q.stored_spec(row.spec)
        self._specs[row.id] = spec
        reason = PendingReason(row.pending_reason) if row.pending_reason else None
        return Candidate(
            id=row.id,
            display_id=row.display_id,
            owner=row.owner,
            queue=row.queue,
            priority=row.priority,
            spec=spec,
            not_before=row.not_before,
            attempt=row.attempt,
            pending=(reason, row.pending_message or ""),
            waiting_since=max(row.created_at, row.not_before or 0.0),
        )

    async def _record_pending(self, result: Plan, now: float) -> None:
        """Write the pending reasons that changed; an event where the code changed."""
        if not result.changed:
            return
        changes: list[tuple[int, PendingReason | None, str]] = []
        events: set[int] = set()
        for candidate in result.changed:
            code, message = result.pending[candidate.id]
            if candidate.pending[0] is not code:
                events.add(candidate.id)
            candidate.pending = (code, message)
            changes.append((candidate.id, code, message))
        await self._db.write(lambda c: sq.set_pending(c, changes, now, events=events))

    def _arm_backoff_timer(self, until: float | None, now: float) -> None:
        """Wake when the earliest retry backoff ends, so that attempt starts on time."""
        if self._backoff_timer is not None:
            self._backoff_timer.cancel()
            self._backoff_timer = None
        if until is not None:
            loop = asyncio.get_running_loop()
            self._backoff_timer = loop.call_later(max(0.0, until - now) + 0.001, self.wake)

    async def _start(self, placement: Placement) -> _Started:
        """One job's start; whatever it raises fails that job alone, never the pass (the other
        jobs of the pass are starting beside it)."""
        try:
            return _Started(placement, await self._executor.start(placement))
        except JobyardError as exc:  # StartFailed, ExecutorRefused
            return _Started(placement, [], exc.message)
        except Exception as exc:
            log.exception("the executor failed to start job %d", placement.job_id)
            return _Started(placement, [], f"the executor failed to start the job: {exc!r}")


def _waiting_for(report: TaskReport) -> tuple[PendingReason, str]:
    """Why a STARTING job's task waits, as its executor reported (its own queue by default)."""
    why = report.pending_reason or PendingReason.EXECUTOR
    return why, report.message or "waiting in the executor's queue"


def _apply_reasons(
    outcomes: dict[int, Outcome], job_ids: Sequence[int], reports: Sequence[TaskReport]
) -> None:
    """A job a task of which ended for a reason its executor gave (its image could not be
    pulled) ends, or begins stopping, for that reason (the first such task's)."""
    for job_id, report in zip(job_ids, reports, strict=True):
        if job_id in outcomes and report.reason is not None and report.state.is_finished():
            outcomes[job_id] = for_reason(outcomes[job_id], report.reason, report.message)


def _record_reattached(conn: Connection, now: float) -> None:
    """A Reattached event on each job whose tasks were all recorded before the restart: the
    executor's handles find them again (their exit codes, if they ended meanwhile)."""
    live = q.ids_in_states(conn, [JobState.STARTING, JobState.RUNNING, JobState.STOPPING])
    for job in q.load_jobs(conn, live, with_log=False):
        if job.tasks and all(t.handle is not None for t in job.tasks):
            names = ", ".join(t.name for t in job.tasks)
            message = f"server restarted; watching its tasks again ({names})"
            q.add_event(conn, job.id, EventType.NORMAL, "Reattached", message, now)


def _starting_since(job: Job) -> float:
    """When the job last became STARTING (this attempt's start)."""
    began = [entry.timestamp for entry in job.state_log if entry.state is JobState.STARTING]
    return (began[-1] if began else job.updated_at).timestamp()


def _unrecorded(job: Job) -> Placement:
    """The placement of a job's tasks whose handles were never stored, as it was claimed."""
    tasks = [
        TaskPlacement(index=t.index, name=t.name, node=t.node or "", gpus=t.gpus)
        for t in job.tasks
        if t.handle is None
    ]
    return Placement(
        job_id=job.id, display_id=job.display_id, owner=job.owner, spec=job.spec, tasks=tasks
    )


def _is_overdue(job: Job, now: float) -> bool:
    limit, started = job.spec.max_runtime, job.started_at
    if job.state is not JobState.RUNNING or limit is None or started is None:
        return False
    return now - started.timestamp() > limit


# ---- the writes of a pass: each one transaction, a few statements -------------------------------


def _record_outcomes(
    conn: Connection,
    *,
    exits: Sequence[tuple[int, int, q.TaskUpdate]],
    outcomes: dict[int, Outcome],
    retries: Sequence[sq.Retry] = (),
    began: Sequence[int] = (),
    now: float,
) -> None:
    if began:  # jobs an executor's own scheduler (Slurm) has now started: no longer waiting
        sq.set_pending(conn, [(job_id, None, "") for job_id in began], now)
        running = q.Transition(JobState.RUNNING, "started by the executor's scheduler")
        q.transition_many(conn, [(job_id, running) for job_id in began], now)
    q.update_tasks(conn, exits)
    sq.requeue_for_retry(conn, retries, now)
    finals = [
        (job_id, q.Transition(o.final, o.message, termination=o.termination, exit_code=o.exit_code))
        for job_id, o in outcomes.items()
        if o.final is not None
    ]
    stops = [
        (job_id, o.stop_reason, o.message)
        for job_id, o in outcomes.items()
        if o.final is None and o.stop_reason is not None
    ]
    q.transition_many(conn, finals, now)
    _begin_stops(conn, stops=stops, now=now)


def _begin_stops(
    conn: Connection, *, stops: Sequence[tuple[int, TerminationReason, str]], now: float
) -> None:
    q.request_stops(conn, [(job_id, why) for job_id, why, _ in stops], now)
    changes = [
        (job_id, q.Transition(JobState.STOPPING, message, event_type=EventType.WARNING))
        for job_id, _, message in stops
    ]
    q.transition_many(conn, changes, now)


def _claim(conn: Connection, *, placements: Sequence[Placement], now: float) -> set[int]:
    changes = []
    for p in placements:
        changes.append((p.job_id, q.Transition(JobState.SCHEDULED, f"placed on {p.tasks[0].node}")))
        changes.append(
            (p.job_id, q.Transition(JobState.STARTING, f"starting {len(p.tasks)} task(s)"))
        )
    claimed = set(q.transition_many(conn, changes, now))
    q.update_tasks(
        conn,
        [
            (p.job_id, t.index, q.TaskUpdate(node=t.node, gpus=t.gpus))
            for p in placements
            if p.job_id in claimed
            for t in p.tasks
        ],
    )
    return claimed


def _record_starts(
    conn: Connection,
    *,
    started: Sequence[_Started],
    retries: Sequence[sq.Retry] = (),
    now: float,
) -> None:
    ok = [r for r in started if r.error is None]
    sq.requeue_for_retry(conn, retries, now)
    retried = {r.job_id for r in retries}
    q.update_tasks(
        conn, [(r.placement.job_id, t.index, _start_update(t, now)) for r in ok for t in r.tasks]
    )
    queued = [r for r in ok if r.tasks and all(t.waiting for t in r.tasks)]
    queued_ids = {r.placement.job_id for r in queued}
    ok = [r for r in ok if r.placement.job_id not in queued_ids]
    sq.set_pending(
        conn,
        [
            (r.placement.job_id, PendingReason.EXECUTOR, "handed to the executor's scheduler")
            for r in queued
        ],
        now,
        events=queued_ids,
    )
    changes = [
        (
            r.placement.job_id,
            q.Transition(JobState.FAILED, r.error, termination=TerminationReason.START_FAILED),
        )
        for r in started
        if r.error is not None and r.placement.job_id not in retried
    ]
    changes += [
        (r.placement.job_id, q.Transition(JobState.RUNNING, _started_message(r))) for r in ok
    ]
    q.transition_many(conn, changes, now)


def _start_update(task: StartedTask, now: float) -> q.TaskUpdate:
    if task.waiting:  # in the executor's own queue: RUNNING once a poll says so
        return q.TaskUpdate(pid=task.pid, node=task.node, handle=task.handle)
    return q.TaskUpdate(
        state=TaskState.RUNNING, pid=task.pid, node=task.node, started_at=now, handle=task.handle
    )


def _started_message(started: _Started) -> str:
    pids = ", ".join(str(t.pid) for t in started.tasks)
    if started.found:
        return f"server restarted while starting; found {len(started.tasks)} task(s) (pid {pids})"
    return f"started {len(started.tasks)} task(s) (pid {pids})"


def _record_found(
    conn: Connection,
    *,
    jobs: Sequence[Job],
    found: Sequence[_Started],
    retries: Sequence[sq.Retry],
    now: float,
) -> None:
    """What find_started() said of each interrupted job (`found[i]` holds the tasks of
    `jobs[i]` that it found). Found whole while STARTING: recorded as a start. Otherwise the
    tasks found are recorded (so they are watched, and stopped); a STARTING job missing some
    begins stopping (LOST), one missing all fails LOST unless it is retried."""
    retried = {r.job_id for r in retries}
    whole = [
        r
        for job, r in zip(jobs, found, strict=True)
        if job.state is JobState.STARTING and r.tasks and len(r.tasks) == len(r.placement.tasks)
    ]
    _record_starts(conn, started=whole, retries=retries, now=now)
    done = {r.placement.job_id for r in whole} | retried
    rest = [(job, r) for job, r in zip(jobs, found, strict=True) if job.id not in done]
    q.update_tasks(
        conn, [(job.id, t.index, _start_update(t, now)) for job, r in rest for t in r.tasks]
    )
    lost = q.Transition(JobState.FAILED, _NOT_FOUND, termination=TerminationReason.LOST)
    q.transition_many(
        conn,
        [(job.id, lost) for job, r in rest if job.state is JobState.STARTING and not r.tasks],
        now,
    )
    partial = [(job, r) for job, r in rest if job.state is JobState.STARTING and r.tasks]
    missing = q.TaskUpdate(state=TaskState.LOST, finished_at=now)
    q.update_tasks(conn, [(job.id, t.index, missing) for job, r in partial for t in _missing(r)])
    stops = [(job.id, TerminationReason.LOST, _missing_message(r)) for job, r in partial]
    _begin_stops(conn, stops=stops, now=now)


def _missing(found: _Started) -> list[TaskPlacement]:
    have = {t.index for t in found.tasks}
    return [t for t in found.placement.tasks if t.index not in have]


def _missing_message(found: _Started) -> str:
    names = ", ".join(t.name for t in _missing(found))
    return f"server restarted while starting; {names} not found: stopping the other tasks"
