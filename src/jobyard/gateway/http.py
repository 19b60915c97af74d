"""The HTTP port proxy: one listener per leased HTTP port, relaying to the job's own port.

A connection is authenticated by its first request: the job's port token as `?token=`, the
`jobyard_port_<port>` cookie, or `Authorization: Bearer`. Without it the answer is 401 and no
byte reaches the job. After it, the connection is relayed as bytes both ways (splice(2), see
relay.py), so keep-alive requests and WebSocket upgrades work unchanged.
A query token is taken out of the request the job sees, and the first response sets the
cookie so a browser keeps working."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from jobyard.gateway.relay import relay_both
from jobyard.service.access import Lease

log = logging.getLogger("jobyard.gateway.http")

MAX_HEAD = 64 * 1024
_HEAD_TIMEOUT = 30.0

TokenCheck = Callable[[int, str], bool]


class _BadRequest(Exception):
    pass


def cookie_name(port: int) -> str:
    # Cookies are per host, not per port: the name says which job's port it opens.
    return f"jobyard_port_{port}"


class Request:
    """The head of an HTTP/1.x request, just enough parsed to authenticate and rewrite it."""

    def __init__(self, raw: bytes) -> None:
        try:
            text = raw.decode("latin-1")
            line, *fields = text[: -len("\r\n\r\n")].split("\r\n")
            self.method, self.target, self.version = line.split(" ", 2)
        except ValueError:
            raise _BadRequest("malformed request line") from None
        self.headers: list[tuple[str, str]] = []
        for item in fields:
            name, sep, value = item.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest("malformed header")
            self.headers.append((name, value.strip()))

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)

    def query_token(self) -> str | None:
        query = urlsplit(self.target).query
        return next((v for k, v in parse_qsl(query, keep_blank_values=True) if k == "token"), None)

    def without_query_token(self) -> str:
        parts = urlsplit(self.target)
        kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
        return urlunsplit(parts._replace(query=urlencode(kept)))

    def cookie(self, name: str) -> str | None:
        raw = self.header("cookie")
        if not raw:
            return None
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(raw)
        except CookieError:
            return None
        morsel = jar.get(name)
        return None if morsel is None else morsel.value

    def bearer(self) -> str | None:
        value = self.header("authorization") or ""
        scheme, _, token = value.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    def encode(self, target: str) -> bytes:
        lines = [f"{self.method} {target} {self.version}"]
        lines.extend(f"{k}: {v}" for k, v in self.headers)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _reply(status: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": status.split(" ", 1)[1].lower(), "message": message}})
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return (head + body).encode()


async def _read_head(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, limit: int = MAX_HEAD
) -> tuple[bytes, bytes]:
    """(the head up to its blank line, what came after it); ValueError past `limit`,
    EOFError if the peer closes first."""
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0:
        if len(data) > limit:
            raise ValueError("head too large")
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            raise EOFError
        data += chunk
    return data[: end + 4], data[end + 4 :]


def _tcp(sock: socket.socket) -> socket.socket:
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class HttpListener:
    """One leased HTTP port: authenticate, then relay to 127.0.0.1:<declared port>."""

    def __init__(self, lease: Lease, token_ok: TokenCheck, upstream: str = "127.0.0.1") -> None:
        self.lease = lease
        self._token_ok = token_ok
        self.upstream = upstream
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._sessions: dict[asyncio.Task[None], list[socket.socket]] = {}

    async def start(self, host: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, self.lease.port), family=family, backlog=1024)
        self._sock.setblocking(False)
        self._accepting = asyncio.create_task(self._accept(self._sock))

    async def close(self) -> None:
        """The job ended: no new connections, and the open ones end now."""
        tasks = list(self._sessions)
        if self._accepting is not None:
            tasks.append(self._accepting)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # their sockets close as they end
        if self._sock is not None:
            self._sock.close()

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listening)
            except OSError as exc:  # e.g. out of file descriptors: try again shortly
                log.warning("gateway port %d: accept failed: %s", self.lease.port, exc)
                await asyncio.sleep(0.1)
                continue
            socks = [_tcp(conn)]
            task = asyncio.create_task(self._serve(socks))
            self._sessions[task] = socks
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        for sock in self._sessions.pop(task, []):
            sock.close()

    async def _serve(self, socks: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        client = socks[0]
        try:
            raw, rest = await asyncio.wait_for(_read_head(loop, client), _HEAD_TIMEOUT)
            request = Request(raw)
        except (EOFError, TimeoutError, OSError):
            return
        except ValueError:
            await self._refuse(client, "431 Request Header Fields Too Large", "head too large")
            return
        except _BadRequest as exc:
            await self._refuse(client, "400 Bad Request", str(exc))
            return
        token, from_query = self.token_of(request)
        if token is None or not self._token_ok(self.lease.job_id, token):
            await self._refuse(client, "401 Unauthorized", "missing or invalid port token")
            return
        upstream = _tcp(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        socks.append(upstream)
        try:
            await loop.sock_connect(upstream, (self.upstream, self.lease.target_port))
        except OSError:
            port = self.lease.target_port
            await self._refuse(client, "502 Bad Gateway", f"nothing listens on port {port}")
            return
        target = request.without_query_token() if from_query else request.target
        try:
            await loop.sock_sendall(upstream, request.encode(target) + rest)
            if from_query:
                await self._first_response_sets_cookie(loop, upstream, client, token)
        except (EOFError, OSError):
            return
        await relay_both(client, upstream)

    async def _refuse(self, client: socket.socket, status: str, message: str) -> None:
        with contextlib.suppress(OSError):
            await asyncio.get_running_loop().sock_sendall(client, _reply(status, message))

    async def _first_response_sets_cookie(
        self,
        loop: asyncio.AbstractEventLoop,
        upstream: socket.socket,
        client: socket.socket,
        token: str,
    ) -> None:
        try:
            head, rest = await _read_head(loop, upstream)
        except ValueError:
            return  # an odd head: relayed as it comes, without the cookie
        status_line, _, fields = head.partition(b"\r\n")
        await loop.sock_sendall(
            client, status_line + b"\r\n" + self.cookie_line(token) + fields + rest
        )

    def token_of(self, request: Request) -> tuple[str | None, bool]:
        """(the token the request carries, whether it came in the query)."""
        query = request.query_token()
        if query is not None:
            return query, True
        cookie = request.cookie(cookie_name(self.lease.port))
        return (cookie if cookie is not None else request.bearer()), False

    def cookie_line(self, token: str) -> bytes:
        name = cookie_name(self.lease.port)
        return f"Set-Cookie: {name}={token}; Path=/; HttpOnly; SameSite=Lax\r\n".encode()
