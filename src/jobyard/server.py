"""The composition root: builds store -> executor -> scheduler -> services from Settings,
hands the services to the ASGI app, and serves it. The only module that sees every layer."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from jobyard.api.app import create_app
from jobyard.config import Settings
from jobyard.errors import Conflict
from jobyard.executors.base import Executor
from jobyard.executors.registry import load_executor
from jobyard.scheduler.reconciler import Reconciler
from jobyard.service import AuthService, JobService, LogService
from jobyard.store.db import Database, migrate

log = logging.getLogger("jobyard")


@dataclass
class Runtime:
    settings: Settings
    db: Database
    executor: Executor
    reconciler: Reconciler
    auth: AuthService
    jobs: JobService
    logs: LogService
    home_lock: int

    async def close(self) -> None:
        await self.executor.close()
        self.db.close()
        os.close(self.home_lock)  # releases the lock on the data directory


def prepare_home(settings: Settings) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.home, 0o700)
    for path in (settings.logs_dir, settings.jobs_dir):
        path.mkdir(exist_ok=True)


def lock_home(settings: Settings) -> int:
    """One server per data directory: a second would run a second scheduler over the same jobs
    and start them twice. The lock goes with the process, however it ends."""
    fd = os.open(settings.home / "server.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise Conflict(
            f"another jobyard server (pid {holder}) is using {settings.home}; stop it, or "
            "give this one its own --home"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def build(settings: Settings) -> Runtime:
    """Wire everything. Runs migrations and writes the admin token before any request."""
    prepare_home(settings)
    home_lock = lock_home(settings)
    try:
        url = settings.effective_database_url
        migrate(url)
        db = Database(url)
    except BaseException:
        os.close(home_lock)
        raise
    try:
        executor = load_executor(settings.executor, settings=settings)
        reconciler = Reconciler(db, executor, settings)
        auth = AuthService(db)
        auth.bootstrap_admin(settings.admin_token_path)
    except BaseException:
        db.close()
        os.close(home_lock)
        raise
    jobs = JobService(db, executor, settings, wake=reconciler.wake)
    logs = LogService(jobs, executor)
    return Runtime(settings, db, executor, reconciler, auth, jobs, logs, home_lock)


def create_server_app(runtime: Runtime) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        loop_task = asyncio.create_task(runtime.reconciler.run(), name="jobyard-reconciler")
        try:
            yield
        finally:
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
            await runtime.close()

    return create_app(auth=runtime.auth, jobs=runtime.jobs, logs=runtime.logs, lifespan=lifespan)


def serve(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    runtime = build(settings)
    app = create_server_app(runtime)
    # Long-lived objects (modules, models, engines) never need the cyclic collector again:
    # freezing them keeps full collections from pausing requests for tens of milliseconds.
    gc.collect()
    gc.freeze()
    log.info(
        "jobyard on http://%s:%d (data in %s; admin token in %s)",
        settings.host,
        settings.port,
        settings.home,
        settings.admin_token_path,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
    )
    uvicorn.Server(config).run()
