"""The reconciler owns all slow work. `tick()` is one pass; `run()` loops it.

A pass: poll the executor for every started task and record what ended; finish or begin
stopping jobs accordingly; signal tasks of STOPPING jobs; enforce max_runtime; place queued
jobs on free capacity and start them. The API only records intent and wakes this loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from sqlalchemy import Connection

from jobyard.config import Settings
from jobyard.errors import JobyardError
from jobyard.executors.base import Executor, StartedTask, StartFailed
from jobyard.model import EventType, Job, JobState, Placement, TaskState, TerminationReason
from jobyard.scheduler.outcome import Outcome, decide
from jobyard.scheduler.policy import Free, place
from jobyard.store import jobs as q
from jobyard.store.db import Database

log = logging.getLogger(__name__)

_WATCHED = (JobState.SCHEDULED, JobState.STARTING, JobState.RUNNING, JobState.STOPPING)
_MAX_QUEUED_READ = 1000


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
        executor.set_wakeup(self.wake)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        await self.recover()
        while True:
            self._wake.clear()
            try:
                await self.tick()
            except Exception:
                log.exception("reconciler pass failed; retrying")
                await asyncio.sleep(self._settings.reconcile_interval_seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.reconcile_interval_seconds)

    async def recover(self) -> None:
        """After a restart: a SCHEDULED job started nothing yet, so it goes back to the queue."""

        def requeue(conn: Connection) -> None:
            for job_id in q.ids_in_states(conn, [JobState.SCHEDULED]):
                q.transition(
                    conn, job_id, q.Transition(JobState.QUEUED, "server restarted"), self._clock()
                )

        await self._db.write(requeue)

    async def tick(self) -> None:
        live = await self._db.read(lambda c: q.load_jobs(c, q.ids_in_states(c, _WATCHED)))
        live = await self._observe(live)
        await self._enforce(live)
        await self._schedule(live)

    # ---- observe: what did the tasks do? -------------------------------------------------------

    async def _observe(self, live: list[Job]) -> list[Job]:
        pairs = [
            (job, task)
            for job in live
            for task in job.tasks
            if task.handle is not None and not task.state.is_finished()
        ]
        reports = await self._executor.poll([task.handle or {} for _, task in pairs])
        changed: dict[int, Job] = {}
        now = self._clock()
        for (job, task), report in zip(pairs, reports, strict=True):
            if report.state in (TaskState.EXITED, TaskState.LOST):
                task.state, task.exit_code = report.state, report.exit_code
                task.finished_at = q.to_datetime(now)
                changed[job.id] = job
        decisions = {
            job.id: decide(job)
            for job in live
            if job.state in (JobState.STARTING, JobState.RUNNING, JobState.STOPPING)
        }
        acting = {i: d for i, d in decisions.items() if d is not None}
        if changed or acting:
            await self._db.write(lambda c: self._record(c, changed, acting, live, now))
        finished = {i for i, d in acting.items() if d.final is not None}
        for job in live:
            if job.id in finished:
                for task in job.tasks:
                    if task.handle is not None:
                        self._executor.release(task.handle, remove_files=False)
        return [job for job in live if job.id not in finished]

    def _record(
        self,
        conn: Connection,
        changed: dict[int, Job],
        acting: dict[int, Outcome],
        live: list[Job],
        now: float,
    ) -> None:
        by_id = {job.id: job for job in live}
        for job in changed.values():
            for task in job.tasks:
                if task.state.is_finished() and task.finished_at is not None:
                    q.update_task(
                        conn,
                        job.id,
                        task.index,
                        q.TaskUpdate(state=task.state, exit_code=task.exit_code, finished_at=now),
                    )
        for job_id, outcome in acting.items():
            _guarded(conn, partial(_apply, job=by_id[job_id], outcome=outcome, now=now))

    # ---- enforce: stop what must stop ----------------------------------------------------------

    async def _enforce(self, live: list[Job]) -> None:
        now = self._clock()
        overdue = [
            job
            for job in live
            if job.state is JobState.RUNNING
            and job.started_at
            and job.spec.max_runtime
            and now - job.started_at.timestamp() > job.spec.max_runtime
        ]
        if overdue:
            await self._db.write(partial(_stop_overdue, jobs=overdue, now=now))
        grace = self._settings.stop_grace_seconds
        for job in live:
            if job.state is JobState.STOPPING:
                for task in job.tasks:
                    if task.handle is not None and not task.state.is_finished():
                        await self._executor.stop(task.handle, grace)

    # ---- schedule: start what fits -------------------------------------------------------------

    async def _schedule(self, live: list[Job]) -> None:
        free = Free.of(self._executor.capacity(), live)
        if free.tasks <= 0:
            return
        limit = min(free.tasks, _MAX_QUEUED_READ)
        queued = await self._db.read(
            lambda c: q.load_jobs(c, q.ids_in_states(c, [JobState.QUEUED], limit=limit))
        )
        placements = place(queued, free)
        if not placements:
            return
        now = self._clock()
        claimed = await self._db.write(partial(_claim_all, placements=placements, now=now))
        started = [await self._start(p) for p in claimed]
        await self._db.write(partial(_record_starts, started=started, now=self._clock()))

    async def _start(self, placement: Placement) -> _Started:
        try:
            return _Started(placement, await self._executor.start(placement))
        except (StartFailed, JobyardError) as exc:
            return _Started(placement, [], exc.message)


def _guarded(conn: Connection, fn: Callable[[Connection], object]) -> bool:
    """Apply one job's change in its own savepoint; skip a job deleted or changed meanwhile."""
    savepoint = conn.begin_nested()
    try:
        fn(conn)
    except JobyardError as exc:
        savepoint.rollback()
        log.debug("skipped a change: %s", exc)
        return False
    savepoint.commit()
    return True


def _stop_overdue(conn: Connection, *, jobs: list[Job], now: float) -> None:
    for job in jobs:
        message = f"ran longer than max_runtime ({job.spec.max_runtime:g} s)"
        why = TerminationReason.MAX_RUNTIME_EXCEEDED
        if _guarded(conn, partial(_begin_stop, job=job, why=why, message=message, now=now)):
            job.state = JobState.STOPPING


def _claim_all(conn: Connection, *, placements: list[Placement], now: float) -> list[Placement]:
    return [p for p in placements if _guarded(conn, partial(_claim, placement=p, now=now))]


def _record_starts(conn: Connection, *, started: list[_Started], now: float) -> None:
    for result in started:
        _guarded(conn, partial(_record_start, started=result, now=now))


def _apply(conn: Connection, *, job: Job, outcome: Outcome, now: float) -> None:
    if outcome.final is not None:
        q.transition(
            conn,
            job.id,
            q.Transition(
                outcome.final,
                outcome.message,
                termination=outcome.termination,
                exit_code=outcome.exit_code,
            ),
            now,
        )
    elif outcome.stop_reason is not None:
        _begin_stop(conn, job=job, why=outcome.stop_reason, message=outcome.message, now=now)
        job.state = JobState.STOPPING


def _begin_stop(
    conn: Connection, job: Job, why: TerminationReason, message: str, now: float
) -> None:
    q.request_stop(conn, job.id, why, now)
    event_type = EventType.NORMAL if why is TerminationReason.STOPPED_BY_USER else EventType.WARNING
    q.transition(conn, job.id, q.Transition(JobState.STOPPING, message, event_type=event_type), now)
    job.stop_reason = why


def _claim(conn: Connection, *, placement: Placement, now: float) -> None:
    q.transition(
        conn,
        placement.job_id,
        q.Transition(JobState.SCHEDULED, f"placed on {placement.tasks[0].node}"),
        now,
    )
    for task in placement.tasks:
        q.update_task(
            conn, placement.job_id, task.index, q.TaskUpdate(node=task.node, gpus=task.gpus)
        )
    q.transition(
        conn,
        placement.job_id,
        q.Transition(JobState.STARTING, f"starting {len(placement.tasks)} task(s)"),
        now,
    )


def _record_start(conn: Connection, *, started: _Started, now: float) -> None:
    job_id = started.placement.job_id
    if started.error is not None:
        q.transition(
            conn,
            job_id,
            q.Transition(
                JobState.FAILED, started.error, termination=TerminationReason.START_FAILED
            ),
            now,
        )
        return
    for task in started.tasks:
        q.update_task(
            conn,
            job_id,
            task.index,
            q.TaskUpdate(
                state=TaskState.RUNNING,
                pid=task.pid,
                node=task.node,
                started_at=now,
                handle=task.handle,
            ),
        )
    current = q.get_state(conn, job_id)
    if current is JobState.STARTING:
        q.transition(
            conn, job_id, q.Transition(JobState.RUNNING, _started_message(started.tasks)), now
        )


def _started_message(tasks: Sequence[StartedTask]) -> str:
    pids = ", ".join(str(t.pid) for t in tasks)
    return f"started {len(tasks)} task(s) (pid {pids})"
