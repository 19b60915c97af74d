"""The reconciler owns all slow work. `tick()` is one pass; `run()` loops it.

A pass refreshes its view of the store (view.py), then runs three phases, each a pure plan
from the view and what the executor said, written in one transaction, after which the view
reads back what it touched:

- observe (observe.py): poll the executor for the started tasks; record what ended, finish
  jobs, begin stopping the rest of a job whose worker failed, retry failed attempts;
- enforce (enforce.py): fail jobs stuck in STARTING, begin stopping those past max_runtime,
  and signal the tasks of STOPPING jobs;
- start (start.py): place queued jobs on free capacity (policy.py), record why the others
  wait, claim the placed ones, start them, and record what each start made.

The API only records intent and wakes this loop. Writes are batched: a few statements a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import TypeVar

from sqlalchemy import Connection

from jobyard.config import Settings
from jobyard.errors import JobyardError
from jobyard.executors.base import Executor, InterruptedStart
from jobyard.metrics import Metrics
from jobyard.model import EventType, Job, JobState, Placement
from jobyard.scheduler import enforce, observe, start
from jobyard.scheduler.policy import Candidate, Plan, plan
from jobyard.scheduler.retry import RetryPolicy
from jobyard.scheduler.view import LiveView
from jobyard.store import jobs as q, registries, scheduling as sq
from jobyard.store.db import Database
from jobyard.store.leader import Leadership, LostLeadership

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_STANDBY_WAIT = 1.0  # seconds a standby waits in the leader's lock before it asks again


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
        self._view = LiveView(db, settings.reconcile_interval_seconds)
        self._retry = RetryPolicy(
            settings.retry_backoff_seconds, settings.retry_backoff_max_seconds
        )
        self._positions: dict[int, int] = {}
        self._queues = {item.name: item for item in settings.effective_queues}
        self._backoff_timer: asyncio.TimerHandle | None = None
        # Jobs a crash caught mid-start (their handles never stored), by when they began
        # starting: held (and never finished) until the executor says what of them it started.
        self._interrupted: dict[int, float] = {}
        self.leading = False  # whether this server schedules (holds the database's leadership)
        self._leadership: Leadership | None = None
        executor.set_wakeup(self._wake.set)
        db.feed.on_remote(self._changed_elsewhere)

    def wake(self, job_id: int | None = None) -> None:
        """Ask for a pass: for a new submission (None) or a change to one job."""
        if not self.leading:
            return  # a standby: the leader finds everything on its own next pass
        self._view.mark(job_id)
        self._wake.set()

    def _changed_elsewhere(self, job_ids: set[int] | None) -> None:
        """Another server committed changes (a submission, a stop through a standby): a pass
        for them now (None: anything may have changed, read everything again)."""
        if job_ids is None:
            self._view.invalidate()
            self.wake()
        for job_id in job_ids or ():
            self.wake(job_id)

    def queue_position(self, job_id: int) -> int | None:
        """Where a queued job stands in its queue at the last pass (1 is next), or None."""
        return self._positions.get(job_id)

    # ---- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Lead (or stand by until this server may), and schedule while leading. A leader that
        lost its leadership (store/leader.py: its session ended) stops at its next write and
        stands by again; a new term starts from the store, as after a restart."""
        while True:
            leadership = await self._lead()
            try:
                await self._run()
            except LostLeadership as exc:
                log.warning("%s: no longer scheduling; standing by", exc)
            finally:
                self.leading = False
                self._leadership = None
                leadership.close()

    async def _lead(self) -> Leadership:
        """Wait until this server is the one that schedules (immediate on SQLite). A standby
        waits in the database's lock, a second at a time, so it leads as soon as it is free."""
        waited = False
        while True:
            try:
                leadership = await _ask(self._db, _STANDBY_WAIT if waited else 0.0)
            except Exception:
                log.warning("cannot ask the database for the leadership yet", exc_info=True)
                await asyncio.sleep(_STANDBY_WAIT)
                leadership = None
            if leadership is not None:
                self._leadership = leadership
                self.leading = True
                if waited:
                    log.info("this server now schedules and watches jobs")
                return leadership
            if not waited:
                log.info("another server schedules this database's jobs; standing by")
                waited = True

    async def _run(self) -> None:
        self._view = LiveView(self._db, self._settings.reconcile_interval_seconds)
        self._interrupted, self._positions = {}, {}
        await self.recover()
        interval = self._settings.reconcile_interval_seconds
        while True:
            self._wake.clear()
            started = time.monotonic()
            try:
                with self._metrics.scheduling_pass.time():
                    await self.tick()
            except LostLeadership:
                raise
            except Exception:
                self._metrics.reconciler_errors.inc()
                log.exception("reconciler pass failed; retrying")
                self._view.invalidate()
                await asyncio.sleep(interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            # Coalesce bursts (many submissions, many exits) into one pass.
            await asyncio.sleep(
                max(0.0, self._settings.reconcile_min_gap_seconds - (time.monotonic() - started))
            )

    async def tick(self) -> None:
        await self._hold()
        full = await self._view.refresh()
        await self._find_interrupted()
        await self._observe(full)
        await self._enforce()
        await self._schedule()

    async def _write(self, fn: Callable[[Connection], _T], job_ids: Iterable[int]) -> _T:
        """One of the pass's transactions; then the view reads back the jobs it touched, and
        the change feed tells whoever follows them (store/feed.py)."""
        ids = set(job_ids)
        result = await self._store(fn)
        self._db.feed.publish(ids)
        await self._view.reload(ids)
        return result

    async def _hold(self) -> None:
        """A pass outside run() (burst mode: tests, tools) leads for itself, or not at all."""
        if self._leadership is None:
            leadership = await asyncio.to_thread(self._db.try_lead)
            if leadership is None:
                raise LostLeadership("another server schedules this database's jobs")
            self._leadership, self.leading = leadership, True

    async def _store(self, fn: Callable[[Connection], _T]) -> _T:
        """A transaction of the leader's, fenced: it writes only while this server still
        leads (LostLeadership otherwise; store/leader.py)."""
        leadership = self._leadership
        if leadership is None:
            raise LostLeadership("this server does not lead")
        return await self._db.write(partial(_fenced, leadership, fn))

    # ---- after a restart -----------------------------------------------------------------------

    async def recover(self) -> None:
        """After a restart: a STARTING (or, stopped meanwhile, STOPPING) job with tasks whose
        handles were never stored was caught mid-start: the executor finds what of it started
        (_find_interrupted). Every other live job's tasks are watched again (Reattached)."""

        def caught(conn: Connection) -> dict[int, float]:
            ids = q.ids_in_states(conn, [JobState.STARTING, JobState.STOPPING])
            _record_reattached(conn, self._clock())
            return {
                job.id: _starting_since(job)
                for job in q.load_jobs(conn, ids, with_log=True)
                if any(t.handle is None for t in job.tasks)
            }

        await self._hold()
        self._interrupted = await self._store(caught)
        await self._find_interrupted()

    async def _find_interrupted(self) -> None:
        """Ask the executor what the interrupted starts left (start.plan_found says what that
        makes of each job). If it cannot say yet (Slurm unreachable), ask again next pass."""
        if not self._interrupted:
            return
        ids = sorted(self._interrupted)
        jobs = await self._db.read(lambda c: q.load_jobs(c, ids, with_log=False))
        asked = [job for job in jobs if job.state in (JobState.STARTING, JobState.STOPPING)]
        starts = [
            InterruptedStart(start.unrecorded(job), self._interrupted[job.id]) for job in asked
        ]
        try:
            found = await self._executor.find_started(starts)
        except Exception:
            log.warning(
                "cannot tell yet what the interrupted starts left; asking again", exc_info=True
            )
            return
        results = [
            start.Started(s.placement, [t for t in tasks if t is not None], found=True)
            for s, tasks in zip(starts, found, strict=True)
        ]
        now = self._clock()
        changes = start.plan_found(asked, results, retry=self._retry, now=now)
        await self._write(partial(start.apply_found, found=changes, now=now), ids)
        self._interrupted = {}
        self._view.requeued(r.job_id for r in changes.starts.retries)
        self._view.queue_changed = True

    # ---- observe: what did the tasks do? -------------------------------------------------------

    async def _observe(self, full: bool) -> None:
        jobs = self._view.jobs
        polled = observe.watched(jobs)
        reports = await self._executor.poll([task.handle or {} for _, task in polled])
        now = self._clock()
        changes = observe.plan(
            jobs, polled, reports, now=now, full=full, held=self._interrupted, retry=self._retry
        )
        if not changes:
            return
        ended = [jobs[job_id] for job_id in changes.finished()]
        self._count_first_runs(jobs[job_id] for job_id in changes.began)
        await self._write(partial(observe.apply, changes=changes, now=now), changes.job_ids())
        self._release(ended)
        if ended:
            self._view.queue_changed = True
        self._view.requeued(r.job_id for r in changes.retries)

    def _count_first_runs(self, began: Iterable[Job]) -> None:
        """submit->RUNNING of first attempts an executor's own scheduler started now."""
        now = self._clock()
        for job in began:
            if job.attempt == 0:
                self._metrics.submit_to_running.observe(max(0.0, now - job.created_at.timestamp()))

    def _release(self, jobs: Iterable[Job]) -> None:
        for job in jobs:
            for task in job.tasks:
                if task.handle is not None:
                    self._executor.release(task.handle, remove_files=False)

    # ---- enforce: stop what must stop ----------------------------------------------------------

    async def _enforce(self) -> None:
        now = self._clock()
        changes = enforce.plan(
            self._view.jobs,
            now=now,
            start_timeout=self._settings.start_timeout_seconds,
            held=self._interrupted,
        )
        if changes:
            stuck = [self._view.jobs[job_id] for job_id in changes.stuck]
            await self._write(partial(enforce.apply, changes=changes, now=now), changes.job_ids())
            self._release(stuck)
            if stuck:
                self._view.queue_changed = True
        grace = self._settings.stop_grace_seconds
        for handle in enforce.to_signal(self._view.jobs):
            await self._executor.stop(handle, grace)

    # ---- start: what fits starts -------------------------------------------------------------

    async def _schedule(self) -> None:
        view = self._view
        if not view.queue_changed:
            return
        view.queue_changed = False
        await view.refresh_queued()
        if not view.queued:
            self._positions = {}
            return
        now = self._clock()
        result = plan(
            view.queued.values(),
            self._executor.capacity(),
            view.jobs.values(),
            self._queues,
            now=now,
            reserve_after=self._settings.reservation_after_seconds,
        )
        self._positions = result.positions
        await self._record_pending(result, now)
        self._arm_backoff_timer(result.next_backoff_end, now)
        if result.placements:
            await self._start_all(result.placements)

    async def _record_pending(self, result: Plan, now: float) -> None:
        """Write the pending reasons that changed; an event where the code changed."""
        changes, events = start.pending_of(result)
        if changes:
            await self._store(lambda c: sq.set_pending(c, changes, now, events=events))
            self._db.feed.publish(job_id for job_id, _, _ in changes)
            self._view.set_pending(changes)

    async def _start_all(self, placements: Sequence[Placement]) -> None:
        """Claim the placements, start the claimed ones side by side, record what they made."""
        taken = self._view.take(p.job_id for p in placements)
        claimed_at = self._clock()
        claimed = await self._store(partial(start.claim, placements=placements, now=claimed_at))
        self._db.feed.publish(claimed)
        started = await asyncio.gather(*(self._start(p) for p in placements if p.job_id in claimed))
        now = self._clock()
        attempts = {job_id: candidate.attempt for job_id, candidate in taken.items()}
        changes = start.plan(started, attempts, retry=self._retry, now=now)
        try:
            await self._write(
                partial(start.apply, changes=changes, now=self._clock()),
                [p.job_id for p in placements],
            )
        except Exception:
            # Started but not stored (a full disk, a lost database): the next passes find them
            # as after a crash, rather than fail them later as stuck while they run.
            self._interrupted |= {s.job_id: claimed_at for s in started if s.error is None}
            raise
        self._count_starts(started, taken, now)
        self._view.requeued(r.job_id for r in changes.retries)
        await self._forget_deleted(started)

    async def _forget_deleted(self, started: Sequence[start.Started]) -> None:
        """A job deleted while it was starting: what its start made is stopped and removed."""
        for result in started:
            if result.job_id not in self._view.jobs:
                for task in result.tasks:
                    await self._executor.stop(task.handle, grace=0)
                    self._executor.release(task.handle, remove_files=True)

    def _count_starts(
        self, started: Sequence[start.Started], taken: dict[int, Candidate], now: float
    ) -> None:
        """Queue wait for each start; submit->RUNNING for first attempts that run at once
        (tasks an executor queues are counted when a poll sees them run)."""
        for result in started:
            if result.error is not None:
                continue
            candidate = taken[result.job_id]
            self._metrics.queue_wait.observe(max(0.0, now - candidate.waiting_since))
            if candidate.attempt == 0 and not any(t.waiting for t in result.tasks):
                self._metrics.submit_to_running.observe(max(0.0, now - candidate.waiting_since))

    def _arm_backoff_timer(self, until: float | None, now: float) -> None:
        """Wake when the earliest retry backoff ends, so that attempt starts on time."""
        if self._backoff_timer is not None:
            self._backoff_timer.cancel()
            self._backoff_timer = None
        if until is not None:
            loop = asyncio.get_running_loop()
            self._backoff_timer = loop.call_later(max(0.0, until - now) + 0.001, self.wake)

    async def _start(self, placement: Placement) -> start.Started:
        """One job's start; whatever it raises fails that job alone, never the pass (the other
        jobs of the pass are starting beside it)."""
        try:
            placement = await self._with_logins(placement)
            return start.Started(placement, await self._executor.start(placement))
        except JobyardError as exc:  # StartFailed, ExecutorRefused
            return start.Started(placement, [], exc.message)
        except Exception as exc:
            log.exception("the executor failed to start job %d", placement.job_id)
            return start.Started(placement, [], f"the executor failed to start the job: {exc!r}")

    async def _with_logins(self, placement: Placement) -> Placement:
        """A job that may run in a container gets its owner's registry logins, for the pull
        of its image (model/registry.py); only its owner's, and they are never stored."""
        if not (placement.spec.image or self._settings.default_image):
            return placement
        logins = await self._db.read(partial(registries.logins_of_owner, owner=placement.owner))
        return placement.model_copy(update={"registry_logins": logins}) if logins else placement


async def _ask(db: Database, wait_seconds: float) -> Leadership | None:
    """Database.try_lead in a thread. If the caller is cancelled meanwhile (the server stops),
    a leadership the thread still gets is given up at once, not kept by nobody."""
    asked = asyncio.ensure_future(asyncio.to_thread(db.try_lead, wait_seconds))
    try:
        return await asyncio.shield(asked)
    except asyncio.CancelledError:
        asked.add_done_callback(_give_up)
        raise


def _give_up(asked: asyncio.Future[Leadership | None]) -> None:
    if not asked.cancelled() and asked.exception() is None:
        leadership = asked.result()
        if leadership is not None:
            leadership.close()


def _fenced(leadership: Leadership, fn: Callable[[Connection], _T], conn: Connection) -> _T:
    leadership.fence(conn)
    return fn(conn)


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
