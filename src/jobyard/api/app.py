"""create_app: the ASGI app of every face over the core services. No wiring happens here."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI

from jobyard import __version__
from jobyard.api import redaction
from jobyard.api.errors import install_error_handlers, register_face_errors
from jobyard.api.inputs import InputCheck
from jobyard.api.limits import RequestSizeLimit
from jobyard.api.metrics import RequestMetrics, router as metrics_router
from jobyard.api.native.access import router as access_router
from jobyard.api.native.admin import router as admin_router
from jobyard.api.native.registries import router as registries_router
from jobyard.api.native.routes import router as native_router
from jobyard.api.native.scheduling import router as scheduling_router
from jobyard.api.native.usage import router as usage_router
from jobyard.api.paas.mapping import render_problem as render_paas
from jobyard.api.paas.routes import router as paas_router
from jobyard.api.responses import JSONResponse
from jobyard.api.terminal import router as terminal_router
from jobyard.api.training import render_problem as render_training, router as training_router
from jobyard.metrics import Metrics
from jobyard.service import AuthService, JobService, LogService
from jobyard.service.access import AccessService
from jobyard.service.registries import RegistryService
from jobyard.service.terminals import TerminalTokens
from jobyard.service.usage import UsageService
from jobyard.web import (
    WebSocketOriginCheck,
    docs_router,
    router as web_router,
    usage_router as web_usage_router,
)

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_app(
    *,
    auth: AuthService,
    jobs: JobService,
    logs: LogService,
    lifespan: Lifespan | None = None,
    max_request_bytes: int | None = None,
    terminals: TerminalTokens,
    access: AccessService | None = None,
    metrics: Metrics | None = None,
    usage: UsageService | None = None,
    registries: RegistryService | None = None,
) -> FastAPI:
    app = FastAPI(
        title="jobyard",
        version=__version__,
        description="Self-hosted job platform for GPU and ML training workloads.",
        lifespan=lifespan,
        docs_url=None,  # served by jobyard.web.docs from npm packages, not from a CDN
        redoc_url=None,
        default_response_class=JSONResponse,  # answers any stored text (api.responses)
    )
    redaction.install()
    app.state.auth = auth
    app.state.jobs = jobs
    app.state.logs = logs
    app.state.terminals = terminals
    app.state.access = access
    app.state.registries = registries  # None: registry logins are not served here
    app.state.usage = usage  # None: no usage figures (a 404 naming "usage")
    app.state.metrics = metrics = metrics or Metrics()
    install_error_handlers(app)
    app.include_router(native_router)
    app.include_router(access_router)
    app.include_router(registries_router)
    app.include_router(paas_router)
    register_face_errors(app, "/v1/job", render_paas)
    app.include_router(training_router)
    app.include_router(terminal_router)
    register_face_errors(app, "/api/jobs", render_training)
    app.include_router(admin_router)
    app.add_middleware(InputCheck)  # inside RequestSizeLimit, which bounds what it reads
    if max_request_bytes is not None:
        app.add_middleware(RequestSizeLimit, max_bytes=max_request_bytes)
    app.include_router(scheduling_router)
    app.include_router(usage_router)  # /api/v1/jobs/{ref}/metrics
    app.include_router(metrics_router)  # /metrics, admins only
    app.include_router(docs_router)  # /docs and /redoc
    app.include_router(web_usage_router)  # the dashboard's usage charts
    app.include_router(web_router)  # the dashboard, at / (last: the faces' routes win)
    app.add_middleware(WebSocketOriginCheck)  # browsers open /webterminal from here only
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: counts every answer
    return app


__all__ = ["create_app"]
