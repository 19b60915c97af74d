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
from functools import partial

from sqlalchemy import Connection

from jobyard.config import Settings
from jobyard.errors import JobyardError
from jobyard.executors.base import Executor, StartedTask
from jobyard.model import EventType, Job, JobSpec, JobState, Placement, TaskState, TerminationReason
from jobyard.scheduler.outcome import Outcome, decide
from jobyard.scheduler.policy import Free, place
from jobyard.store import jobs as q
from jobyard.store.db import Database

log = logging.getLogger(__name__)

_WATCHED = (JobState.SCHEDULED, JobState.STARTING, JobState.RUNNING, JobState.STOPPING)
_MAX_QUEUED_READ = 256


@dataclass(frozen=True)
class _Started:
    placement: Placement
    tasks: list[StartedTask]
    error: str | None = None


class Reconciler:
    def __init__(
        self,
        db: Database,
        executor: Executor,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._executor = executor
        self._settings = settings
        self._clock = clock
        self._wake = asyncio.Event()
        self._live: dict[int, Job] = {}
        self._specs: dict[int, JobSpec] = {}  # specs never change: parse each once
        self._dirty: set[int] = set()
        self._queue_changed = True
        self._next_full_reload = 0.0
        executor.set_wakeup(self._wake.set)

    def wake(self, job_id: int | None = None) -> None:
        """Ask for a pass: for a new submission (None) or a change to one job."""
        if job_id is None:
            self._queue_changed = True
        else:
            self._dirty.add(job_id)
        self._wake.set()

    async def run(self) -> None:
        await self.recover()
        interval = self._settings.reconcile_interval_seconds
        while True:
            self._wake.clear()
            started = time.monotonic()
            try:
                await self.tick()
            except Exception:
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
        """After a restart: a SCHEDULED job started nothing yet, so it goes back to the queue;
        a STARTING job whose tasks were never recorded cannot be found again, so it fails as
        LOST (its processes, if any started, are not known to jobyard)."""

        def requeue(conn: Connection) -> None:
            now = self._clock()
            back = q.Transition(JobState.QUEUED, "server restarted before the job started")
            ids = q.ids_in_states(conn, [JobState.SCHEDULED])
            changes = [(job_id, back) for job_id in ids]
            starting = q.load_jobs(conn, q.ids_in_states(conn, [JobState.STARTING]), with_log=False)
            lost = q.Transition(
                JobState.FAILED,
                "the server stopped while starting this job, before its tasks were recorded",
                termination=TerminationReason.LOST,
            )
            changes += [(j.id, lost) for j in starting if any(t.handle is None for t in j.tasks)]
            q.transition_many(conn, changes, now)

        await self._db.write(requeue)

    async def tick(self) -> None:
        full = await self._refresh()
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
        for (job, task), report in zip(pairs, reports, strict=True):
            if report.state in (TaskState.EXITED, TaskState.LOST):
                task.state, task.exit_code = report.state, report.exit_code
                update = q.TaskUpdate(
                    state=report.state, exit_code=report.exit_code, finished_at=now
                )
                exits.append((job.id, task.index, update))
                touched[job.id] = job
        candidates = (
            self._live.values()
            if full
            else [
                *touched.values(),
                *(j for j in self._live.values() if j.state is JobState.STOPPING),
            ]
        )
        outcomes = {job.id: o for job in candidates if (o := decide(job)) is not None}
        if not exits and not outcomes:
            return
        await self._db.write(partial(_record_outcomes, exits=exits, outcomes=outcomes, now=now))
        for job_id, outcome in outcomes.items():
            if outcome.final is not None:
                self._release(self._live[job_id])
                self._queue_changed = True
        await self._reload([*touched, *outcomes])

    def _release(self, job: Job) -> None:
        for task in job.tasks:
            if task.handle is not None:
                self._executor.release(task.handle, remove_files=False)

    # ---- enforce: stop what must stop ----------------------------------------------------------

    async def _enforce(self) -> None:
        now = self._clock()
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
        free = Free.of(self._executor.capacity(), self._live.values())
        if free.tasks <= 0:
            return
        limit = min(free.tasks, _MAX_QUEUED_READ)
        queued = await self._db.read(
            lambda c: q.load_jobs(
                c,
                q.ids_in_states(c, [JobState.QUEUED], limit=limit),
                with_log=False,
                specs=self._specs,
            )
        )
        placements = place(queued, free)
        if len(queued) == limit and placements:
            self.wake()  # more may be waiting behind this window: look again
        if not placements:
            return
        claimed = await self._db.write(partial(_claim, placements=placements, now=self._clock()))
        started = await asyncio.gather(*(self._start(p) for p in placements if p.job_id in claimed))
        await self._db.write(partial(_record_starts, started=started, now=self._clock()))
        await self._reload(p.job_id for p in placements)
        for result in started:
            if result.placement.job_id not in self._live:  # deleted while it was starting
                for task in result.tasks:
                    await self._executor.stop(task.handle, grace=0)
                    self._executor.release(task.handle, remove_files=True)

    async def _start(self, placement: Placement) -> _Started:
        try:
            return _Started(placement, await self._executor.start(placement))
        except JobyardError as exc:  # StartFailed, ExecutorRefused
            return _Started(placement, [], exc.message)


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
    now: float,
) -> None:
    q.update_tasks(conn, exits)
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


def _record_starts(conn: Connection, *, started: Sequence[_Started], now: float) -> None:
    ok = [r for r in started if r.error is None]
    q.update_tasks(
        conn,
        [
            (
                r.placement.job_id,
                t.index,
                q.TaskUpdate(
                    state=TaskState.RUNNING, pid=t.pid, node=t.node, started_at=now, handle=t.handle
                ),
            )
            for r in ok
            for t in r.tasks
        ],
    )
    changes = [
        (
            r.placement.job_id,
            q.Transition(JobState.FAILED, r.error, termination=TerminationReason.START_FAILED),
        )
        for r in started
        if r.error is not None
    ]
    changes += [
        (r.placement.job_id, q.Transition(JobState.RUNNING, _started_message(r.tasks))) for r in ok
    ]
    q.transition_many(conn, changes, now)


def _started_message(tasks: Sequence[StartedTask]) -> str:
    pids = ", ".join(str(t.pid) for t in tasks)
    return f"started {len(tasks)} task(s) (pid {pids})"
