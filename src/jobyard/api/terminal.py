"""Web terminals: a shell inside a running task, under a pseudo-terminal, over a WebSocket.

A face hands out a URL carrying a single-use token (`TerminalTokens.issue`, after checking
the caller may open a shell into that task); the WebSocket at `/webterminal?token=...`
authenticates with that token only. The token is bound to the user, job and task, is kept
in the database (service/terminals.py: any worker or server may redeem it, once), expires
(`terminal_token_ttl_seconds`, 60 s by default) and is never logged (`api.redaction`).

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
import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect

from jobyard.errors import JobyardError
from jobyard.model import EventType, JobState
from jobyard.service import JobService, Shell, TerminalSize
from jobyard.service.terminals import Grant, TerminalTokens

log = logging.getLogger(__name__)

_KEYS = 0
_RESIZE = 4
POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011
ROUTE_NAME = "webterminal"
_SIZE = TerminalSize(rows=24, cols=80)  # until the client says its own


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
    grant = await tokens.redeem(websocket.query_params.get("token", ""))
    await websocket.accept()
    if grant is None:
        await websocket.close(POLICY_VIOLATION, "terminal token is unknown, used or expired")
        return
    try:
        job, shell = await jobs.open_shell(grant.user, grant.job, grant.task, size=_SIZE)
    except JobyardError as exc:
        reason = exc.message
        if exc.code == "start_failed":
            log.warning("web terminal: %s", exc.message)
            reason = "cannot start a shell in the pod"
        await websocket.close(INTERNAL_ERROR, reason[:120])
        return
    log.info("web terminal opened by %s into %s", grant.user.name, grant.task)
    try:
        await jobs.record_event(
            job.id,
            EventType.NORMAL,
            "WebTerminal",
            f"{grant.user.name} opened a terminal into {grant.task}",
        )
        await run_terminal(websocket, shell, _job_watcher(jobs, grant, job.id))
    finally:
        await shell.end()
    log.info("web terminal into %s (job %s) closed", grant.task, job.display_id)


def _job_watcher(jobs: JobService, grant: Grant, job_id: int) -> Callable[[], asyncio.Future[str]]:
    """A coroutine factory that returns once the task stops running (with why): the job is
    read again when a change to it is published (or after the feed's recheck)."""

    async def watch() -> str:
        with jobs.watch(job_id) as changed:
            while True:  # read once the watch is open: no change is missed
                try:
                    job = await jobs.get(grant.user, grant.job)
                except JobyardError:
                    return "the job is gone"
                task = next((t for t in job.tasks if t.name == grant.task), None)
                if job.state is not JobState.RUNNING or task is None or task.state.is_finished():
                    return f"the job is {job.state.value}"
                await changed.wait()

    def start() -> asyncio.Future[str]:
        return asyncio.ensure_future(watch())

    return start


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
    websocket: WebSocket, shell: Shell, watch: Callable[[], asyncio.Future[str]]
) -> None:
    """Relay one accepted WebSocket and a shell under a pty until either side ends; then the
    shell and everything it started end (Shell.end)."""
    out = _Output(websocket)
    tasks: dict[asyncio.Future[Any], str] = {
        asyncio.ensure_future(_pump_output(shell, out)): "output",
        asyncio.ensure_future(_pump_input(websocket, shell, out)): "input",
        watch(): "job",
    }
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await shell.end()
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


async def _pump_output(shell: Shell, out: _Output) -> None:
    while data := await shell.read():
        await out.send(data)


async def _pump_input(websocket: WebSocket, shell: Shell, out: _Output) -> None:
    while True:
        try:
            message = await websocket.receive()
        except WebSocketDisconnect:
            return
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            out.text = True
            await shell.write(message["text"].encode())
        elif message.get("bytes"):
            await _channel(message["bytes"], shell)


async def _channel(frame: bytes, shell: Shell) -> None:
    channel, payload = frame[0], frame[1:]
    if channel == _KEYS and payload.strip(b"\x00"):
        await shell.write(payload)
    elif channel == _RESIZE:
        size = _window_size(payload)
        if size is not None:
            shell.resize(size)


def _window_size(payload: bytes) -> TerminalSize | None:
    """The size {"Height", "Width"} asks for; None for anything else (ignored)."""
    try:
        body = json.loads(payload)
        rows, cols = int(body["Height"]), int(body["Width"])
    except (ValueError, TypeError, KeyError):
        return None
    if not (1 <= rows <= 10_000 and 1 <= cols <= 10_000):
        return None
    return TerminalSize(rows, cols)
