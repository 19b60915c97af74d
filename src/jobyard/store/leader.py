"""The scheduling leadership of one database, and the fence that keeps a lost leader out.

Exactly one server (process) of a database runs the reconciler: it starts, watches and stops
jobs. On SQLite that is the only server (its data directory's lock). On PostgreSQL it is the
holder of a session advisory lock, taken on a connection of its own that is kept open while it
leads. The lock goes when that session ends, and PostgreSQL ends it as soon as it notices:

- the leader's process dies (kill -9, a crash): its kernel closes the socket, the backend reads
  end-of-file at once and exits; the lock is free within milliseconds;
- its machine or network goes: TCP keepalives on both ends of the leader's connection (the
  server's `tcp_keepalives_*` and `tcp_user_timeout`, set for that session; libpq's for the
  client) end the session within about `_DEAD_AFTER_SECONDS`.

A standby waits in the lock itself (`pg_advisory_lock` under a 1 s `lock_timeout`, asked
again each time it passes), so it leads the moment the old leader's session ends. (An
`idle_session_timeout` would not do: a leader's lock session is idle by design. A lease row
with an expiry would need a heartbeat write and a wait for the expiry even after a clean
death; the advisory lock is freed the moment its session is.)

The fence: a leader that lost its lock (its session ended while the process lives on, say a
network cut) must not go on starting jobs once another server may. So every transaction of the
reconciler first checks, in that transaction, that the lock is still held by this leader's
session (`pg_locks`, by the session's backend pid); if not, it raises LostLeadership and the
transaction rolls back. A new leader can only have the lock once the old session is gone, and
from then on every write of the old one fails its check. A claim (QUEUED -> STARTING) is also
conditional on the job's state, so the two can never both claim one job; and the executor is
asked to start a job only after its claim committed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from sqlalchemy import URL, Connection, Engine, create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

# The advisory lock key of the scheduling leader ("jobyard" as a number), and the one that
# serialises migrations (store/db.py migrate): different keys, so a leader never blocks a
# migration and the reverse.
LEADER_KEY = int.from_bytes(b"jobyard", "big")
MIGRATE_KEY = int.from_bytes(b"jobyard/m", "big") & 0x7FFF_FFFF_FFFF_FFFF

# How soon PostgreSQL ends the session of a leader it cannot reach (idle + interval * count,
# with tcp_user_timeout for data that is never acknowledged).
_KEEPALIVE_IDLE, _KEEPALIVE_INTERVAL, _KEEPALIVE_COUNT = 3, 1, 3
_DEAD_AFTER_SECONDS = _KEEPALIVE_IDLE + _KEEPALIVE_INTERVAL * _KEEPALIVE_COUNT
_SESSION_OPTIONS = (
    f"-c tcp_keepalives_idle={_KEEPALIVE_IDLE} -c tcp_keepalives_interval={_KEEPALIVE_INTERVAL} "
    f"-c tcp_keepalives_count={_KEEPALIVE_COUNT} -c tcp_user_timeout={_DEAD_AFTER_SECONDS * 1000}"
)
_LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout passed
_HELD = text(
    "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = :hi AND objid = :lo"
    " AND objsubid = 1 AND pid = :pid AND granted"
)


class LostLeadership(Exception):
    """This server no longer holds the database's leadership: it must stop scheduling."""


class Leadership:
    """Held from try_lead() until close(). On SQLite it holds nothing (the data directory's
    lock already makes this server the only one) and its fence never fails."""

    def __init__(
        self, conn: Connection | None = None, backend_pid: int | None = None, fd: int | None = None
    ) -> None:
        self._conn = conn
        self._pid = backend_pid
        self._fd = fd  # the workers' file lock (SQLite with --workers: file_lead)

    def fence(self, conn: Connection) -> None:
        """In a transaction of the leader's: raise LostLeadership unless the lock is still this
        leader's (PostgreSQL), so the transaction writes nothing."""
        if self._pid is None:
            return
        held = conn.execute(
            _HELD, {"hi": LEADER_KEY >> 32, "lo": LEADER_KEY & 0xFFFF_FFFF, "pid": self._pid}
        ).first()
        if held is None:
            raise LostLeadership(
                "this server's leadership session ended; another server may schedule now"
            )

    def close(self) -> None:
        """Give the leadership up: the session ends, and the advisory lock with it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.invalidate()  # really close it, never back into a pool
                self._conn.close()
            self._conn = None


def file_lead(path: Path, wait_seconds: float = 0.0) -> Leadership | None:
    """Among the worker processes of one SQLite server: an exclusive flock on `path`, held
    until close() or the process's end (it cannot be lost while the process lives, so its
    fence has nothing to check)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.02)
            continue
        return Leadership(fd=fd)


def leader_engine(url: str | URL) -> Engine:
    """Connections for the leadership lock: never pooled, with keepalives on both ends."""
    return create_engine(
        url,
        poolclass=NullPool,
        connect_args={
            "keepalives": 1,
            "keepalives_idle": _KEEPALIVE_IDLE,
            "keepalives_interval": _KEEPALIVE_INTERVAL,
            "keepalives_count": _KEEPALIVE_COUNT,
            "tcp_user_timeout": _DEAD_AFTER_SECONDS * 1000,
            "options": _SESSION_OPTIONS,
            "connect_timeout": 10,
        },
    )


def try_lead(engine: Engine, wait_seconds: float = 0.0) -> Leadership | None:
    """The leadership, if no other session holds it, or gives it up within `wait_seconds`
    (PostgreSQL). A standby waits in the lock itself, so it leads the moment the old
    leader's session ends rather than at its next try."""
    conn = engine.connect()
    try:
        with conn.begin():
            held = _take(conn, wait_seconds)
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one() if held else 0
    except Exception:
        conn.invalidate()
        conn.close()
        raise
    if not held:
        conn.close()
        return None
    return Leadership(conn, int(pid))


def _take(conn: Connection, wait_seconds: float) -> bool:
    key = {"key": LEADER_KEY}
    if wait_seconds <= 0:
        return bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), key).scalar())
    conn.execute(text(f"SET LOCAL lock_timeout = {int(wait_seconds * 1000)}"))
    savepoint = conn.begin_nested()
    try:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), key)
    except OperationalError as exc:
        savepoint.rollback()
        if getattr(exc.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
            return False
        raise
    savepoint.commit()
    return True
