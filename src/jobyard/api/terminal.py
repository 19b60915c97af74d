"""Web terminals: a shell inside a running task, under a pseudo-terminal, over a WebSocket.

A face hands out a URL carrying a single-use token (`TerminalTokens.issue`, after checking
the caller may open a shell into that task); the WebSocket at `/webterminal?token=...`
authenticates with that token only. The token is bound to the user, job and task, is kept in
memory, expires (`terminal_token_ttl_seconds`, 60 s by default) and is never logged
(`api.redaction`).

Wire protocol (the original platform's channel scheme, plus plain text):
- binary frame, byte 0 then keystrokes: input for the shell (a frame of NUL bytes only is the
  client's heartbeat and is ignored);
- binary frame, byte 4 then JSON {"Height": rows, "Width": cols}: resize the terminal;
- text frame: keystrokes as they are.
Output leaves as binary frames of raw terminal output; once a client has sent a text frame,
as text frames (UTF-8, split characters joined).

A refused token (unknown, used or expired) is answered after the handshake with close code
1008 (policy violation), so the client can read why; a task that is not running (any more)
gets 1011 with the reason. Closing the socket ends the shell and everything it started (its
process group and descendants: SIGHUP, then SIGKILL); the shell also ends when the job ends.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect

from jobyard.errors import JobyardError
from jobyard.model import EventType, JobState
from jobyard.service import JobService, ShellCommand, User

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_KEYS = 0
_RESIZE = 4
POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011
ROUTE_NAME = "webterminal"


@dataclass(frozen=True)
class Grant:
    """What a token opens: one task of one job, for one user, until `expires_at`."""

    user: User
    job: str
    task: str
    expires_at: float


class TerminalTokens:
    """Single-use, expiring terminal tokens, in memory (a restart forgets them)."""

    def __init__(self, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._grants: dict[str, Grant] = {}

    def issue(self, user: User, job: str, task: str) -> str:
        now = self._clock()
        self._grants = {k: g for k, g in self._grants.items() if g.expires_at > now}
        token = secrets.token_urlsafe(32)
        self._grants[token] = Grant(user, job, task, now + self.ttl)
        return token

    def redeem(self, token: str) -> Grant | None:
        """The grant of a valid token, which is used up; None if unknown, used or expired."""
        grant = self._grants.pop(token, None)
        if grant is None or grant.expires_at <= self._clock():
            return None
        return grant


def terminal_url(request: Request, token: str) -> str:
    """ws:// (wss:// behind https) on the host the client used, with the token."""
    url = request.url_for(ROUTE_NAME).include_query_params(token=token)
    scheme = "wss" if url.scheme in ("https", "wss") else "ws"
    return str(url.replace(scheme=scheme))


router = APIRouter()


@router.websocket("/webterminal", name=ROUTE_NAME)
async def webterminal(websocket: WebSocket) -> None:
    tokens: TerminalTokens = websocket.app.state.terminals
    jobs: JobService = websocket.app.state.jobs
    grant = tokens.redeem(websocket.query_params.get("token", ""))
    await websocket.accept()
    if grant is None:
        await websocket.close(POLICY_VIOLATION, "terminal token is unknown, used or expired")
        return
    try:
        job, shell = await jobs.shell(grant.user, grant.job, grant.task)
    except JobyardError as exc:
        await websocket.close(INTERNAL_ERROR, exc.message[:120])
        return
    log.info("web terminal opened by %s into %s", grant.user.name, grant.task)
    await jobs.record_event(
        job.id,
        EventType.NORMAL,
        "WebTerminal",
        f"{grant.user.name} opened a terminal into {grant.task}",
    )
    watcher = _job_watcher(jobs, grant)
    await run_terminal(websocket, shell, watcher)
    log.info("web terminal into %s (job %s) closed", grant.task, job.display_id)


def _job_watcher(
    jobs: JobService, grant: Grant, interval: float = 0.5
) -> Callable[[], asyncio.Future[str]]:
    """A coroutine factory that returns once the task stops running (with why)."""

    async def watch() -> str:
        while True:
            await asyncio.sleep(interval)
            try:
                job = await jobs.get(grant.user, grant.job)
            except JobyardError:
                return "the job is gone"
            task = next((t for t in job.tasks if t.name == grant.task), None)
            if job.state is not JobState.RUNNING or task is None or task.state.is_finished():
                return f"the job is {job.state.value}"

    def start() -> asyncio.Future[str]:
        return asyncio.ensure_future(watch())

    return start


# ---- the pseudo-terminal ------------------------------------------------------------------------


def _controlling_tty(slave: int) -> Callable[[], None]:
    """In the child, before exec: a new session whose controlling terminal is `slave`. The fd
    is named rather than 0, because uvloop runs this before it sets up the child's stdio."""

    def become_leader() -> None:  # pragma: no cover - runs in the child
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    return become_leader


def set_window_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


async def spawn(shell: ShellCommand, rows: int = 24, cols: int = 80) -> Pty:
    """The shell in its own session with a new pseudo-terminal as controlling terminal."""
    master, slave = os.openpty()
    try:
        set_window_size(slave, rows, cols)
        proc = await asyncio.create_subprocess_exec(
            *shell.argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=shell.cwd,
            env=shell.env,
            preexec_fn=_controlling_tty(slave),
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    os.set_blocking(master, False)
    return Pty(master, proc)


class Pty:
    """The master side of a running shell's terminal."""

    def __init__(self, master: int, proc: asyncio.subprocess.Process) -> None:
        self.master = master
        self.proc = proc
        self.output: asyncio.Queue[bytes] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(master, self._readable)
        self._closed = False

    def _readable(self) -> None:
        try:
            data = os.read(self.master, _CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: the shell and everything holding the terminal are gone
            data = b""
        if not data:
            self._loop.remove_reader(self.master)
        self.output.put_nowait(data)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._closed:
            try:
                view = view[os.write(self.master, view) :]
            except BlockingIOError:
                await asyncio.sleep(0.01)

    def resize(self, rows: int, cols: int) -> None:
        if not self._closed:
            set_window_size(self.master, rows, cols)

    async def close(self, grace: float = 1.0) -> None:
        """End the shell, its process group and every descendant; wait for the shell."""
        if self._closed:
            return
        self._closed = True
        victims = _descendants(self.proc.pid)
        _signal_all(self.proc.pid, victims, signal.SIGHUP)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), grace)
        _signal_all(self.proc.pid, [p for p in victims if p.is_running()], signal.SIGKILL)
        await self.proc.wait()
        self._loop.remove_reader(self.master)
        os.close(self.master)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal_all(leader: int, others: list[psutil.Process], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, sig)
        if sig == signal.SIGHUP:
            os.killpg(leader, signal.SIGCONT)  # a stopped job would not see the hangup
    for proc in others:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)
            if sig == signal.SIGHUP:
                proc.send_signal(signal.SIGCONT)


# ---- the socket -------------------------------------------------------------------------------


class _Output:
    """Terminal output to frames: binary until the client speaks text."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.text = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    async def send(self, data: bytes) -> None:
        if self.text:
            chunk = self._decoder.decode(data)
            if chunk:
                await self.websocket.send_text(chunk)
        else:
            await self.websocket.send_bytes(data)


async def run_terminal(
    websocket: WebSocket, shell: ShellCommand, watch: Callable[[], asyncio.Future[str]]
) -> None:
    """Serve one accepted WebSocket with `shell` under a pty until either side ends."""
    try:
        pty = await spawn(shell)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("web terminal: cannot start %s: %s", shell.argv[0], exc)
        await websocket.close(INTERNAL_ERROR, "cannot start a shell in the pod")
        return
    out = _Output(websocket)
    tasks: dict[asyncio.Future[Any], str] = {
        asyncio.ensure_future(_pump_output(pty, out)): "output",
        asyncio.ensure_future(_pump_input(websocket, pty, out)): "input",
        watch(): "job",
    }
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await pty.close()
    ended = {tasks[task]: task for task in done}
    for task in done:  # a send to a client that has gone: nothing more to tell it
        if not task.cancelled() and task.exception() is not None:
            return
    if "input" in ended:
        return  # the client went away
    if "job" in ended:
        with contextlib.suppress(Exception):
            await out.send(f"\r\n[{ended['job'].result()}: terminal closed]\r\n".encode())
    with contextlib.suppress(Exception):
        await websocket.close(1000, "shell ended")


async def _pump_output(pty: Pty, out: _Output) -> None:
    while data := await pty.output.get():
        await out.send(data)


async def _pump_input(websocket: WebSocket, pty: Pty, out: _Output) -> None:
    while True:
        try:
            message = await websocket.receive()
        except WebSocketDisconnect:
            return
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            out.text = True
            await pty.write(message["text"].encode())
        elif message.get("bytes"):
            await _channel(message["bytes"], pty)


async def _channel(frame: bytes, pty: Pty) -> None:
    channel, payload = frame[0], frame[1:]
    if channel == _KEYS and payload.strip(b"\x00"):
        await pty.write(payload)
    elif channel == _RESIZE:
        size = _window_size(payload)
        if size is not None:
            pty.resize(*size)


def _window_size(payload: bytes) -> tuple[int, int] | None:
    """(rows, cols) from {"Height", "Width"}; None for anything else (ignored)."""
    try:
        body = json.loads(payload)
        rows, cols = int(body["Height"]), int(body["Width"])
    except (ValueError, TypeError, KeyError):
        return None
    if not (1 <= rows <= 10_000 and 1 <= cols <= 10_000):
        return None
    return rows, cols
