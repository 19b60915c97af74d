"""Request-size limit: a body larger than `max_request_bytes` is refused with 413, in the
envelope of the face its path belongs to, before the body is read (Content-Length) or as soon
as a chunked body passes the limit."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobyard.api.errors import Problem, renderer_for

__all__ = ["RequestSizeLimit"]


def _too_large(max_bytes: int) -> str:
    return f"request body is larger than the limit of {max_bytes} bytes (max_request_bytes)"


class RequestSizeLimit:
    """Pure ASGI middleware (so streamed responses stay streamed)."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, larger: Mapping[str, int] | None = None
    ) -> None:
        """`larger`: path prefixes with their own, larger limit (e.g. package uploads)."""
        self.app = app
        self.max_bytes = max_bytes
        self.larger = dict(larger or {})

    def _limit(self, path: str) -> int:
        for prefix, limit in self.larger.items():
            if path.startswith(prefix):
                return max(limit, self.max_bytes)
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope.get("path", ""))
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(scope, receive, send, limit)
            return
        await self.app(scope, _counting(receive, limit), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        problem = Problem(413, "too_large", _too_large(limit), "body")
        response = renderer_for(scope.get("app"), scope.get("path", ""))(problem)
        response.headers["Connection"] = "close"  # the rest of the body is not read
        await response(scope, receive, send)


def _counting(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                # raised where the app reads its body; the app's handler renders it
                raise HTTPException(413, _too_large(limit))
        return message

    return counted


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
