"""Committed job changes between the servers of one PostgreSQL database: LISTEN/NOTIFY.

Every server's change feed (store/feed.py) sends what it publishes on the channel
`jobyard_jobs` (payload `<server id>:<job id>,<job id>,...`), and every server listens on it
and hands what the others sent to its feed: a submission or a stop through a standby wakes
the leader at once, and a log follower, a web terminal or the dashboard on one server sees the
leader's changes as they commit, not after the feed's recheck.

Two threads, each with a psycopg connection of its own in autocommit: a sender, which takes
every id waiting in its queue and sends them in as few notifications as fit (8,000 bytes each),
so a burst of commits costs a few round trips; and a listener, which waits on `notifies()`,
skips its own server's notifications and passes the rest to the event loop's thread. When the
listening connection drops it connects again and tells the feed that anything may have changed
(notifications sent meanwhile are lost). A notification is sent after the commit it reports,
so whoever reads on receiving it sees that commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import uuid
from collections.abc import Iterator

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy import make_url

from jobyard.store.feed import JobFeed

log = logging.getLogger(__name__)

CHANNEL = "jobyard_jobs"
_MAX_PAYLOAD = 7900  # PostgreSQL's limit is 8,000 bytes
_RETRY_SECONDS = 1.0


def conninfo(url: str) -> str:
    """libpq's form of a SQLAlchemy PostgreSQL URL (any driver named in it dropped)."""
    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return make_conninfo(libpq, keepalives=1, keepalives_idle=3, keepalives_interval=1)


def payloads(server: str, ids: set[int]) -> Iterator[str]:
    """`server:id,id,...` in chunks that fit one notification each."""
    chunk: list[str] = []
    size = len(server) + 1
    for job_id in sorted(ids):
        item = str(job_id)
        if chunk and size + len(item) + 1 > _MAX_PAYLOAD:
            yield f"{server}:{','.join(chunk)}"
            chunk, size = [], len(server) + 1
        chunk.append(item)
        size += len(item) + 1
    if chunk:
        yield f"{server}:{','.join(chunk)}"


def parse(payload: str) -> tuple[str, set[int]] | None:
    server, sep, rest = payload.partition(":")
    if not sep:
        return None
    try:
        return server, {int(item) for item in rest.split(",") if item}
    except ValueError:
        return None


class Notifier:
    """Carries one server's feed to and from the database's other servers. start() in the
    event loop that owns the feed; stop() when the server closes."""

    def __init__(self, url: str, feed: JobFeed) -> None:
        self._conninfo = conninfo(url)
        self._feed = feed
        self.server = uuid.uuid4().hex[:12]
        self._outbox: queue.Queue[set[int] | None] = queue.Queue()
        self._closed = threading.Event()
        self._listening = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin sending and listening, for the feed of `loop`'s thread."""
        self._loop = loop
        for target, name in ((self._send_loop, "send"), (self._listen_loop, "listen")):
            thread = threading.Thread(target=target, name=f"jobyard-notify-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._feed.send_to(self._outbox.put)

    def wait_listening(self, timeout: float) -> bool:
        """Until the listener listens (True), or `timeout` passed."""
        return self._listening.wait(timeout)

    def stop(self) -> None:
        self._feed.send_to(None)
        self._closed.set()
        self._outbox.put(None)
        for thread in self._threads:
            thread.join(timeout=5)

    # ---- sending -------------------------------------------------------------------------------

    def _send_loop(self) -> None:
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        while (ids := self._take()) is not None:
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self._conninfo, autocommit=True)
                for payload in payloads(self.server, ids):
                    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
            except psycopg.Error:
                log.warning("cannot notify the other servers of %d job change(s)", len(ids))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def _take(self) -> set[int] | None:
        """Every id waiting to be sent (blocks for the first); None once stopped."""
        first = self._outbox.get()
        if first is None:
            return None
        ids = set(first)
        while True:
            try:
                more = self._outbox.get_nowait()
            except queue.Empty:
                return ids
            if more is None:
                self._outbox.put(None)
                return ids
            ids |= more

    # ---- listening -----------------------------------------------------------------------------

    def _listen_loop(self) -> None:
        first = True
        while not self._closed.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    if not first:  # what was sent while not listening is lost: read again
                        self._deliver(None)
                    first = False
                    self._listen(conn)
            except psycopg.Error:
                log.warning("lost the connection that listens for other servers' changes")
                self._closed.wait(_RETRY_SECONDS)

    def _listen(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        while not self._closed.is_set():
            for note in conn.notifies(timeout=1.0):
                parsed = parse(note.payload)
                if parsed is not None and parsed[0] != self.server:
                    self._deliver(parsed[1])

    def _deliver(self, ids: set[int] | None) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._feed.receive, ids)
