"""The reconciler's view of the store: the live jobs (STARTING..STOPPING) and the queued ones.

The store is the one source of truth. A phase plans from the view without changing it, its
changes are written, and the view then reads back the jobs they touched (`reload`), so a
pass never holds a job both as it planned it and as it was stored. Queued candidates are the
exception that proves it: the pending reasons a pass writes are applied to them after the
commit (`set_pending`), as re-reading ten thousand queued rows for them would cost more than
the pass.

The view reads what changed, not everything: live jobs it was told about (`mark`), all of them
once per `reconcile_interval_seconds`; queued jobs by id above the last one seen, all ids once
per interval (to drop those stopped or deleted), the changed ones when marked.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection

from jobyard.model import Job, JobSpec, JobState, PendingReason
from jobyard.scheduler.policy import Candidate
from jobyard.store import jobs as q, scheduling as sq
from jobyard.store.db import Database

# SCHEDULED is not among them: no job is ever stored in it (docs/state-machine.md).
WATCHED = (JobState.STARTING, JobState.RUNNING, JobState.STOPPING)


class LiveView:
    def __init__(self, db: Database, interval: float) -> None:
        self._db = db
        self._interval = interval
        self.jobs: dict[int, Job] = {}
        self._specs: dict[int, JobSpec] = {}  # specs never change: parse each once
        self._dirty: set[int] = set()
        self._next_full = 0.0
        self.queued: dict[int, Candidate] = {}
        self.queue_changed = True  # whether the next pass should plan the queue
        self._queued_max_id = 0
        self._queued_full = True
        self._queued_dirty: set[int] = set()

    # ---- what to read again ------------------------------------------------------------------

    def mark(self, job_id: int | None) -> None:
        """A job changed elsewhere (stopped, deleted), or a new one was queued (None)."""
        self.queue_changed = True
        if job_id is not None:
            self._dirty.add(job_id)
            self._queued_dirty.add(job_id)

    def requeued(self, job_ids: Iterable[int]) -> None:
        """Jobs this pass put back in the queue (retries): candidates again."""
        ids = set(job_ids)
        if ids:
            self._queued_dirty |= ids
            self.queue_changed = True

    def invalidate(self) -> None:
        """After a pass failed: read everything again next time."""
        self._next_full = 0.0

    # ---- the live jobs -------------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Reload everything when due (returns True), else only the jobs marked."""
        now = time.monotonic()
        if now >= self._next_full:
            self._next_full = now + self._interval
            self._dirty.clear()
            jobs = await self._db.read(self._load_all)
            self.jobs = {job.id: job for job in jobs}
            self._specs = {job.id: job.spec for job in jobs}
            self.queue_changed = True
            self._queued_full = True
            return True
        if self._dirty:
            ids, self._dirty = sorted(self._dirty), set()
            await self.reload(ids)
        return False

    def _load_all(self, conn: Connection) -> list[Job]:
        ids = q.ids_in_states(conn, WATCHED)
        return q.load_jobs(conn, ids, with_log=False, specs=self._specs)

    async def reload(self, ids: Iterable[int]) -> None:
        """Read these jobs back from the store: kept while live, dropped once not."""
        wanted = sorted(set(ids))
        if not wanted:
            return
        jobs = await self._db.read(
            lambda c: q.load_jobs(c, wanted, with_log=False, specs=self._specs)
        )
        found = {job.id: job for job in jobs}
        for job_id in wanted:
            job = found.get(job_id)
            if job is not None and job.state in WATCHED:
                self.jobs[job_id] = job
            else:
                self.jobs.pop(job_id, None)
                self._specs.pop(job_id, None)

    # ---- the queued jobs -----------------------------------------------------------------------

    async def refresh_queued(self) -> None:
        full, self._queued_full = self._queued_full, False
        dirty, self._queued_dirty = self._queued_dirty, set()
        after = self._queued_max_id
        known = set(self.queued)

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
            for job_id in [i for i in self.queued if i not in ids]:
                self.queued.pop(job_id)
        for job_id in dirty:
            self.queued.pop(job_id, None)  # back below if it is still queued
        for row in rows:
            self.queued[row.id] = self._candidate(row)
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

    def take(self, job_ids: Iterable[int]) -> dict[int, Candidate]:
        """The candidates a pass placed: no longer queued (they start, or are read again)."""
        return {job_id: self.queued.pop(job_id) for job_id in job_ids}

    def set_pending(self, changes: Sequence[tuple[int, PendingReason | None, str]]) -> None:
        """The pending reasons just committed for queued candidates."""
        for job_id, code, message in changes:
            candidate = self.queued.get(job_id)
            if candidate is not None:
                candidate.pending = (code, message)
