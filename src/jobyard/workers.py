"""`jobyard server --workers N`: N processes serve the same ports.

One Python process caps the submit rate (the API and the reconciler share one GIL). With
workers, the parent binds the ports, takes the data directory's lock, migrates the database
and writes the admin token; then it forks N workers, each a whole server (server.py
serve_worker) that accepts on the shared sockets, so the kernel spreads connections over them.
Exactly one of them schedules: the database's leader lock (store/leader.py) elects it among
the workers as among servers (on SQLite a flock in $home/workers/), and LISTEN/NOTIFY
(store/notify.py; on SQLite unix datagram sockets in that directory, store/peers.py) wakes it
for the others' submissions; every write is committed before its answer, so a request to
any worker reads what an earlier one wrote. The first worker also samples usage and runs the
gateway (things one server does once).

The parent only supervises: it forwards SIGTERM and SIGINT to the workers, starts a worker
again if one dies while serving (a new worker stands by, or leads if the dead one led), and
ends when all have ended. A worker dies with its parent (PR_SET_PDEATHSIG), so a killed
parent leaves no worker serving. An in-memory SQLite database belongs to one process: more
than one worker is refused when the settings load (config.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
from types import FrameType

from jobyard.config import Settings
from jobyard.server import (
    announce,
    lock_home,
    prepare_home,
    run_announced_file,
    serve_worker,
    unlock_home,
)
from jobyard.service.auth import AuthService
from jobyard.store.db import Database, migrate

log = logging.getLogger("jobyard")
_PR_SET_PDEATHSIG = 1


def serve_workers(settings: Settings, sock: socket.socket, ray_socks: list[socket.socket]) -> None:
    prepare_home(settings)
    home_lock = lock_home(settings)
    try:
        _prepare_database(settings)
        announce(settings, sock, ray_socks)
        with run_announced_file(settings, sock):
            _Supervisor(settings, sock, ray_socks).run()
    finally:
        unlock_home(home_lock)


def _prepare_database(settings: Settings) -> None:
    """Migrations and the admin token, once, before any worker starts (and no thread of this
    process outlives it: the workers are forked)."""
    url = settings.effective_database_url
    meeting = settings.home / "workers"  # SQLite: the workers' leader lock and feed sockets
    meeting.mkdir(mode=0o700, exist_ok=True)
    for stale in meeting.glob("*.sock"):
        stale.unlink(missing_ok=True)
    migrate(url)
    db = Database(url)
    try:
        AuthService(db).bootstrap_admin(settings.admin_token_path)
    finally:
        db.close()


class _Supervisor:
    def __init__(self, settings: Settings, sock: socket.socket, ray: list[socket.socket]) -> None:
        self._settings, self._sock, self._ray = settings, sock, ray
        self._workers: dict[int, int] = {}  # pid -> index
        self._stopping: signal.Signals | None = None

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        gc.collect()
        gc.freeze()
        for index in range(self._settings.effective_workers):
            self._fork(index)
        log.info("serving with %d workers (pids %s)", len(self._workers), sorted(self._workers))
        while self._workers:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            ended = self._workers.pop(pid, -1)
            if ended >= 0 and self._stopping is None:
                log.warning("worker %d (pid %d) ended (%s); starting it again", ended, pid, status)
                self._fork(ended)

    def _fork(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                _die_with_parent()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                serve_worker(self._settings, self._sock, self._ray, index)
                code = 0
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self._workers[pid] = index

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = signal.Signals(signum)
        for pid in list(self._workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def _die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux); elsewhere the workers outlive it."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
