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

Changes another server commits reach this one on PostgreSQL by LISTEN/NOTIFY (store/notify.py:
every publish here is also sent on the database's channel, and what the other servers send is
received here); a wait also ends after `recheck_seconds` (2 s on PostgreSQL), a backstop for
a notification missed while the listening connection was down. On SQLite one server owns the
database (its data directory's lock): the changes of its other workers (--workers) arrive by
unix datagrams (store/peers.py, recheck 2 s); a single process's are all its own, and its
recheck is only a backstop (30 s). publish(), receive() and the watches belong to the event
loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator

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
        self._outbound: Callable[[set[int]], None] | None = None
        self._remote: list[Callable[[set[int] | None], None]] = []

    def publish(self, job_ids: Iterable[int]) -> None:
        """These jobs changed, and the change is committed (here: the other servers are told
        too, where something carries it to them)."""
        ids = set(job_ids)
        if not ids:
            return
        if self._outbound is not None:
            self._outbound(ids)
        self._wake(ids)

    def receive(self, job_ids: set[int] | None) -> None:
        """Another server committed changes to these jobs (None: to any, as far as this one
        can tell, e.g. after the listening connection came back)."""
        for callback in self._remote:
            callback(job_ids)
        if job_ids is None:
            for watches in self._watches.values():
                for watch in watches:
                    watch.set()
        else:
            self._wake(job_ids)

    def send_to(self, outbound: Callable[[set[int]], None] | None) -> None:
        """Where this server's changes go beyond it (store/notify.py), or nowhere (None)."""
        self._outbound = outbound

    def on_remote(self, callback: Callable[[set[int] | None], None]) -> None:
        """Call `callback` with the ids of each change another server made (the reconciler's
        wake-up: a standby's submission or stop)."""
        self._remote.append(callback)

    def _wake(self, ids: set[int]) -> None:
        if not self._watches:
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
