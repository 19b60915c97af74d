"""Committed job changes, published once, in this process.

Whoever commits a change to jobs (the reconciler after each of its transactions, the service
after a submit, stop or delete) publishes the jobs' ids once the commit has returned; readers
that follow jobs (a log follower, a web terminal, the dashboard's table, the gateway's leases)
wait for the jobs they follow instead of reading them again on a timer.

A reader opens its watch before it reads, so that a change committed between its read and
its wait is not missed:

    with feed.watch(job_id) as changed:
        while True:
            job = await read()
            ...
            await changed.wait()

Changes another server commits (a PostgreSQL standby's stop, the leader's passes seen from a
standby) are not published here; until LISTEN/NOTIFY carries them, a wait also ends after
`recheck_seconds` (2 s on PostgreSQL) and the reader reads again. On SQLite one server owns
the database (its data directory's lock), so every change is this process's own and the
recheck is only a backstop (30 s). publish() and the watches belong to the event loop's
thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator

# How often a reader reads again without being told of a change, where other servers may
# commit changes (PostgreSQL), and where none can (SQLite: one server per database).
RECHECK_SECONDS = 2.0
ALONE_RECHECK_SECONDS = 30.0


class Watch:
    """Set by every change published for what it watches, until the reader takes it."""

    def __init__(self, recheck_seconds: float) -> None:
        self._changed = asyncio.Event()
        self.recheck_seconds = recheck_seconds

    async def wait(self, timeout: float | None = None) -> bool:
        """Until a change was published since the last wait (True) or `timeout` passed
        (`recheck_seconds` by default: another server's changes are not published here)."""
        timeout = self.recheck_seconds if timeout is None else timeout
        if not self._changed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        changed = self._changed.is_set()
        self._changed.clear()
        return changed

    def set(self) -> None:
        self._changed.set()


class JobFeed:
    def __init__(self, recheck_seconds: float = RECHECK_SECONDS) -> None:
        self.recheck_seconds = recheck_seconds
        self._watches: dict[int | None, set[Watch]] = {}

    def publish(self, job_ids: Iterable[int]) -> None:
        """These jobs changed, and the change is committed."""
        ids = set(job_ids)
        if not ids or not self._watches:
            return
        for watch in self._watches.get(None, ()):
            watch.set()
        for job_id in ids:
            for watch in self._watches.get(job_id, ()):
                watch.set()

    @contextlib.contextmanager
    def watch(self, job_id: int | None = None) -> Iterator[Watch]:
        """A watch of one job's changes, or of every job's (None), while the block runs."""
        watch = Watch(self.recheck_seconds)
        self._watches.setdefault(job_id, set()).add(watch)
        try:
            yield watch
        finally:
            watches = self._watches[job_id]
            watches.discard(watch)
            if not watches:
                del self._watches[job_id]

    def watching(self) -> int:
        """How many watches are open (for tests and metrics)."""
        return sum(len(w) for w in self._watches.values())
