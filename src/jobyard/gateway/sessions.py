"""An SSH session's bytes to and from a shell in the task (executors/shells.py via the
service): under a pseudo-terminal when the client asked for one, else with plain pipes. This
module only relays; the shell is started, sized and ended by the executor layer."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncssh

from jobyard.service.access import AccessService, Lease, Shell, TerminalSize

_CHUNK = 64 * 1024


async def open_for(
    process: asyncssh.SSHServerProcess[bytes], access: AccessService, lease: Lease, task: str | None
) -> Shell:
    """The session's shell: `process.command` (None: a login shell) in the task, under a
    terminal of the client's size and type if it asked for one."""
    size = None
    if process.term_type is not None:
        width, height, pixwidth, pixheight = process.term_size
        size = TerminalSize(rows=height, cols=width, xpixel=pixwidth, ypixel=pixheight)
    _, shell = await access.open_shell(
        lease, task, process.command, size=size, term=process.term_type or None
    )
    return shell


async def relay(process: asyncssh.SSHServerProcess[bytes], shell: Shell) -> int:
    """Relay until the shell ends; its exit status (128+signal if killed)."""
    if shell.tty:
        return await _relay_terminal(process, shell)
    return await _relay_pipes(process, shell)


async def _relay_terminal(process: asyncssh.SSHServerProcess[bytes], shell: Shell) -> int:
    """Window changes follow the client's."""
    output = asyncio.create_task(_drain(shell.read, process.stdout))
    feeder = asyncio.create_task(_feed(process, shell))
    try:
        code = await shell.wait()
        # What the shell wrote last; a background job may hold the terminal open: not forever.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(output), 2.0)
    finally:
        for task in (feeder, output):
            task.cancel()
        await asyncio.gather(feeder, output, return_exceptions=True)
        shell.hangup()
        shell.close()
    return code


async def _relay_pipes(process: asyncssh.SSHServerProcess[bytes], shell: Shell) -> int:
    """`ssh host command` without a terminal: stdin, stdout and stderr as pipes."""
    feeder = asyncio.create_task(_feed(process, shell))
    try:
        await asyncio.gather(
            _drain(shell.read, process.stdout), _drain(shell.read_stderr, process.stderr)
        )
        code = await shell.wait()
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        shell.hangup()
        shell.close()
    return code


async def _drain(read: Any, sink: Any) -> None:
    """The shell's output to the client, no faster than the client takes it."""
    try:
        while data := await read():
            sink.write(data)
            await sink.drain()
    except (OSError, asyncssh.Error):  # the client went away
        return


async def _feed(process: asyncssh.SSHServerProcess[bytes], shell: Shell) -> None:
    """The client's input to the shell, and its window changes to the terminal."""
    try:
        while True:
            try:
                data = await process.stdin.read(_CHUNK)
            except asyncssh.TerminalSizeChanged as change:
                size = TerminalSize(change.height, change.width, change.pixwidth, change.pixheight)
                shell.resize(size)
                continue
            except (asyncssh.BreakReceived, asyncssh.SignalReceived):
                continue
            if not data:
                break
            await shell.write(data)
    except (ConnectionError, OSError):
        pass
    finally:
        shell.close_input()
