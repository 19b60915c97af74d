"""A WebSocket Origin check for the terminal: a browser page from another origin may not open
a shell, even with a terminal token. Clients that send no Origin (CLIs, SDKs) are not browsers
and pass; the single-use token still decides for them."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class WebSocketOriginCheck:
    """Refuse (close 1008, before accepting) a WebSocket on `paths` whose Origin names another
    host than the one the request was sent to."""

    def __init__(self, app: ASGIApp, *, paths: tuple[str, ...] = ("/webterminal",)) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] in self.paths and not _same(scope):
            await receive()  # the client's websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": "foreign Origin"})
            return
        await self.app(scope, receive, send)


def _same(scope: Scope) -> bool:
    headers: dict[bytes, bytes] = dict(scope["headers"])
    origin = headers.get(b"origin")
    if origin is None:
        return True
    host = headers.get(b"host", b"")
    return origin.split(b"://", 1)[-1] == host
