"""create_app: the ASGI app of every face over the core services. No wiring happens here."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI

from jobyard import __version__
from jobyard.api.errors import install_error_handlers
from jobyard.api.native.routes import router as native_router
from jobyard.service import AuthService, JobService, LogService

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_app(
    *, auth: AuthService, jobs: JobService, logs: LogService, lifespan: Lifespan | None = None
) -> FastAPI:
    app = FastAPI(
        title="jobyard",
        version=__version__,
        description="Self-hosted job platform for GPU and ML training workloads.",
        lifespan=lifespan,
    )
    app.state.auth = auth
    app.state.jobs = jobs
    app.state.logs = logs
    install_error_handlers(app)
    app.include_router(native_router)
    return app


__all__ = ["create_app"]
