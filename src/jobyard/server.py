"""The composition root: builds store -> executor -> scheduler -> services from Settings,
hands the services to the ASGI app, and serves it. The only module that sees every layer."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from jobyard.api.app import create_app
from jobyard.config import Settings
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

    async def close(self) -> None:
        await self.executor.close()
        self.db.close()


def prepare_home(settings: Settings) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.home, 0o700)
    for path in (settings.logs_dir, settings.jobs_dir):
        path.mkdir(exist_ok=True)


def build(settings: Settings) -> Runtime:
    """Wire everything. Runs migrations and writes the admin token before any request."""
    prepare_home(settings)
    url = settings.effective_database_url
    migrate(url)
    db = Database(url)
    executor = load_executor(settings.executor, settings=settings)
    reconciler = Reconciler(db, executor, settings)
    auth = AuthService(db)
    auth.bootstrap_admin(settings.admin_token_path)
    jobs = JobService(db, executor, settings, wake=reconciler.wake)
    return Runtime(settings, db, executor, reconciler, auth, jobs, LogService(jobs, executor))


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
