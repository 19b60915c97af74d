"""Engines and the two ways to reach them: `read` (a thread pool) and `write` (group commit).

Every write goes through one writer thread. It takes every operation waiting in its queue,
runs them in one transaction, commits once, and only then resolves the callers; if one of
them raises, the batch runs again with each operation in its own SAVEPOINT, so only that
one fails. So a caller's 2xx always follows a durable commit (SQLite runs WAL with
synchronous=FULL), and concurrent submits share the cost of one fsync.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError

from jobyard.errors import ExecutorUnavailable
from jobyard.store.feed import ALONE_RECHECK_SECONDS, RECHECK_SECONDS, JobFeed
from jobyard.store.leader import MIGRATE_KEY, Leadership, file_lead, leader_engine, try_lead
from jobyard.store.notify import Notifier
from jobyard.store.peers import Peers

T = TypeVar("T")
log = logging.getLogger(__name__)
_MAX_BATCH = 256
_MIGRATIONS = Path(__file__).parent / "migrations"


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _sqlite_engine(url: str, begin: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (savepoints work)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)

    return engine


def make_engines(url: str) -> tuple[Engine, Engine]:
    """(writer, reader). SQLite gets BEGIN IMMEDIATE for the writer so it never upgrades locks."""
    if _is_sqlite(url):
        return _sqlite_engine(url, "BEGIN IMMEDIATE"), _sqlite_engine(url, "BEGIN")
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)
    return engine, engine


def migrate(url: str) -> None:
    """Bring the schema to the newest migration (Alembic, from the first table). On PostgreSQL
    under a transaction-scoped advisory lock (its own key, not the leader's): servers that
    start together migrate one after the other, the later ones finding the schema current."""
    writer, _ = make_engines(url)
    try:
        with writer.begin() as conn:
            if not _is_sqlite(url):
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATE_KEY})
            cfg = Config()
            cfg.set_main_option("script_location", str(_MIGRATIONS))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    finally:
        writer.dispose()


_Op = tuple[Callable[[Connection], Any], "concurrent.futures.Future[Any]"]


class Database:
    """The store's entry point. Build one per server (no module-level engine)."""

    def __init__(
        self,
        url: str,
        *,
        readers: int = 4,
        on_commit: Callable[[float], None] | None = None,
        workers_dir: Path | None = None,
    ) -> None:
        """`workers_dir`: on SQLite, where the worker processes of one server (--workers) meet:
        their leader's file lock and their change feed's sockets (store/peers.py)."""
        self.url = url
        self._on_commit = on_commit or (lambda _seconds: None)  # a batch's transaction, timed
        self.is_sqlite = _is_sqlite(url)
        # committed job changes, published by the writers (feed.py); on SQLite this server is
        # the database's only one, so every change is published here
        alone = self.is_sqlite and workers_dir is None
        self.feed = JobFeed(ALONE_RECHECK_SECONDS if alone else RECHECK_SECONDS)
        self._workers_dir = workers_dir if self.is_sqlite else None
        self._writer, self._reader = make_engines(url)
        self._leader_engine: Engine | None = None
        # the other servers of a PostgreSQL database hear of this one's changes, and the
        # reverse (store/notify.py): from listen() on
        self._notifier = None if self.is_sqlite else Notifier(url, self.feed)
        self._peers = None if self._workers_dir is None else Peers(self._workers_dir, self.feed)
        # SQLite workers take turns to write by a flock, which wakes the next one the moment
        # the last commits (SQLite's own busy wait sleeps in steps of up to 100 ms)
        self._turns = (
            None
            if self._workers_dir is None
            else os.open(self._workers_dir / "write.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        )
        self._readers = concurrent.futures.ThreadPoolExecutor(readers, "jobyard-db-read")
        self._queue: queue.Queue[_Op | None] = queue.Queue()
        self._thread = threading.Thread(
            target=self._write_loop, name="jobyard-db-write", daemon=True
        )
        self._thread.start()

    async def read(self, fn: Callable[[Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self.read_sync, fn)

    def read_sync(self, fn: Callable[[Connection], T]) -> T:
        with self._reader.connect() as conn, conn.begin():
            return fn(conn)

    async def write(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` in a transaction; return only after its commit is durable."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((fn, future))
        with _storage_errors():
            return await asyncio.wrap_future(future)

    def write_sync(self, fn: Callable[[Connection], T]) -> T:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((fn, future))
        with _storage_errors():
            return future.result()

    def try_lead(self, wait_seconds: float = 0.0) -> Leadership | None:
        """Try to become the one scheduling server of this database (store/leader.py): held
        until its close() (or the process's end). SQLite: always (the data directory's lock
        already allows one server). PostgreSQL: a session advisory lock on a connection of its
        own, so several API servers may share one database while exactly one of them starts
        and watches jobs; `wait_seconds`: how long to wait for it (a standby's wait)."""
        if self._workers_dir is not None:  # one of the workers of a SQLite server
            return file_lead(self._workers_dir / "leader.lock", wait_seconds)
        if self.is_sqlite:
            return Leadership()
        if self._leader_engine is None:
            self._leader_engine = leader_engine(self._writer.url)
        return try_lead(self._leader_engine, wait_seconds)

    async def listen(self, timeout: float = 5.0) -> None:
        """In the event loop that owns the feed: exchange committed changes with the other
        servers of the database (PostgreSQL's LISTEN/NOTIFY; nothing to do on SQLite);
        returns once this server listens (or after `timeout`: the feed's recheck covers)."""
        if self._peers is not None:
            self._peers.start(asyncio.get_running_loop())
        if self._notifier is not None:
            self._notifier.start(asyncio.get_running_loop())
            if not await asyncio.to_thread(self._notifier.wait_listening, timeout):
                log.warning("not yet listening for other servers' changes")

    def close(self) -> None:
        if self._peers is not None:
            self._peers.stop()
        if self._notifier is not None:
            self._notifier.stop()
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._readers.shutdown(wait=True)
        self._writer.dispose()
        self._reader.dispose()
        if self._leader_engine is not None:
            self._leader_engine.dispose()
        if self._turns is not None:
            os.close(self._turns)

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """This process's turn to write, among the workers of a SQLite server (else always)."""
        if self._turns is None:
            yield
            return
        fcntl.flock(self._turns, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._turns, fcntl.LOCK_UN)

    def _take_batch(self) -> list[_Op] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < _MAX_BATCH:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def _write_loop(self) -> None:
        while (batch := self._take_batch()) is not None:
            # A caller that gave up (cancelled) is dropped; the rest can no longer be cancelled.
            live = [(fn, future) for fn, future in batch if future.set_running_or_notify_cancel()]
            if live:
                self._run_batch(live)

    def _run_batch(self, batch: list[_Op]) -> None:
        """Fast path: the whole batch in one transaction. If any write raises, roll back and
        run them again each in its own savepoint, so only that write fails (writes are pure
        functions of their arguments and the database, so running one again is safe)."""
        started = time.perf_counter()
        try:
            with self._turn(), self._writer.connect() as conn, conn.begin():
                values = [fn(conn) for fn, _future in batch]
        except Exception as exc:
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
            else:
                self._run_apart(batch)
            return
        self._on_commit(time.perf_counter() - started)  # committed: never part of the try
        for (_fn, future), value in zip(batch, values, strict=True):
            future.set_result(value)

    def _run_apart(self, batch: list[_Op]) -> None:
        results: list[tuple[concurrent.futures.Future[Any], Any, BaseException | None]] = []
        try:
            with self._turn(), self._writer.connect() as conn, conn.begin():
                for fn, future in batch:
                    results.append((future, *_run_in_savepoint(conn, fn)))
        except Exception as exc:  # the commit itself failed: nobody's write is durable
            for _fn, future in batch:
                future.set_exception(exc)
            return
        for future, value, error in results:
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)


_FULL = ("database or disk is full", "no space left on device", "disk full")


@contextlib.contextmanager
def _storage_errors() -> Iterator[None]:
    """A full disk is the service being unavailable (503 naming it), not an internal error."""
    try:
        yield
    except OperationalError as exc:
        if not any(sign in str(exc).lower() for sign in _FULL):
            raise
        raise ExecutorUnavailable(
            "cannot store the change: the disk holding jobyard's database is full", field="disk"
        ) from exc


def _run_in_savepoint(
    conn: Connection, fn: Callable[[Connection], T]
) -> tuple[Any, BaseException | None]:
    savepoint = conn.begin_nested()
    try:
        value = fn(conn)
    except Exception as exc:
        savepoint.rollback()
        return None, exc
    savepoint.commit()
    return value, None
