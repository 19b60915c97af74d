"""`GET /metrics` in Prometheus' text format, and the middleware that counts HTTP requests.

/metrics is never open by default: it needs an admin's token (Prometheus sends it with
`authorization: {credentials_file: …/admin.token}` in its scrape config), like the admin
routes. Requests are counted by route template (`/api/v1/jobs/{ref}`), never by raw path, so
ids do not multiply the series; a path no route matched is counted as `unmatched`.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobyard.api.deps import CurrentUser
from jobyard.api.errors import described
from jobyard.errors import Forbidden
from jobyard.metrics import CONTENT_TYPE, Metrics

router = APIRouter(tags=["admin"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"},
        401: described("missing or invalid token"),
        403: described("admins only"),
    },
)
async def metrics(request: Request, user: CurrentUser) -> Response:
    """The server's metrics (Prometheus text format); admins only."""
    if not user.is_admin:
        raise Forbidden("the metrics are for admins")
    figures: Metrics = request.app.state.metrics
    return Response(await figures.exposition(), media_type=CONTENT_TYPE)


class RequestMetrics:
    """Pure ASGI middleware: counts each HTTP request by method, route and status, and times it
    to the start of its answer (a followed log streams for minutes)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered = False

        async def counted(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                self._count(scope, message["status"], time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            if not answered:  # the app raised before answering: the server answers 500
                self._count(scope, 500, time.perf_counter() - started)

    def _count(self, scope: Scope, status: int, seconds: float) -> None:
        method, route = scope["method"], _template(scope)
        self.metrics.http_requests.labels(method, route, str(status)).inc()
        self.metrics.http_seconds.labels(method, route).observe(seconds)


def _template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
