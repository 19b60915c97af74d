"""Run a ShellCommand for an SSH session: under a pseudo-terminal, or with plain pipes."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import signal
import struct
import termios
from typing import Any

import asyncssh

from jobyard.service.access import ShellCommand

_CHUNK = 64 * 1024


def _controlling_tty(path: str) -> None:  # pragma: no cover - runs in the child, before exec
    """A new session whose controlling terminal is `path`: a session leader without one gets
    the first terminal it opens (whatever the event loop did with the fds meanwhile)."""
    os.setsid()
    os.close(os.open(path, os.O_RDWR))


def _set_size(fd: int, width: int, height: int, pixwidth: int = 0, pixheight: int = 0) -> None:
    if width and height:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, pixwidth, pixheight))


def kill_group(proc: asyncio.subprocess.Process, sig: int = signal.SIGHUP) -> None:
    """Signal the session's whole process group (it leads its own session)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


async def run_in_pty(
    process: asyncssh.SSHServerProcess[bytes],
    shell: ShellCommand,
    started: set[asyncio.subprocess.Process],
) -> int:
    """The command with a pseudo-terminal as its controlling terminal; window changes follow
    the client's. Returns the exit status (128+signal if killed)."""
    master, slave = os.openpty()
    try:
        _set_size(slave, *process.term_size)
        env = dict(shell.env)
        env["TERM"] = process.term_type or env.get("TERM", "xterm")
        proc = await asyncio.create_subprocess_exec(
            *shell.argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=shell.cwd,
            env=env,
            preexec_fn=functools.partial(_controlling_tty, os.ttyname(slave)),
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    started.add(proc)
    os.set_blocking(master, False)
    output = asyncio.create_task(_drain_pty(process, master))
    feeder = asyncio.create_task(_feed_pty(process, master))
    try:
        code = await proc.wait()
        # What the shell wrote last; a background job may hold the terminal open: not forever.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(output), 2.0)
    finally:
        for task in (feeder, output):
            task.cancel()
        await asyncio.gather(feeder, output, return_exceptions=True)
        kill_group(proc)
        started.discard(proc)
        os.close(master)
    return code if code >= 0 else 128 - code


async def _wait(fd: int, *, writable: bool = False) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    (loop.add_writer if writable else loop.add_reader)(fd, wake)
    try:
        await ready
    finally:
        (loop.remove_writer if writable else loop.remove_reader)(fd)


async def _drain_pty(process: asyncssh.SSHServerProcess[bytes], master: int) -> None:
    """The terminal's output to the client, no faster than the client takes it."""
    try:
        while True:
            try:
                data = os.read(master, _CHUNK)
            except BlockingIOError:
                await _wait(master)
                continue
            except OSError:  # EIO: every holder of the terminal has gone
                return
            if not data:
                return
            process.stdout.write(data)
            await process.stdout.drain()
    except (OSError, asyncssh.Error):  # the client went away
        return


async def _feed_pty(process: asyncssh.SSHServerProcess[bytes], master: int) -> None:
    while True:
        try:
            data = await process.stdin.read(_CHUNK)
        except asyncssh.TerminalSizeChanged as change:
            _set_size(master, change.width, change.height, change.pixwidth, change.pixheight)
            continue
        except (asyncssh.BreakReceived, asyncssh.SignalReceived):
            continue
        if not data:
            return
        view = memoryview(data)
        while view:
            try:
                written = os.write(master, view)
            except BlockingIOError:
                await _wait(master, writable=True)
                continue
            view = view[written:]


async def run_with_pipes(
    process: asyncssh.SSHServerProcess[bytes],
    shell: ShellCommand,
    started: set[asyncio.subprocess.Process],
) -> int:
    """`ssh host command` without a terminal: stdin, stdout and stderr as pipes."""
    proc = await asyncio.create_subprocess_exec(
        *shell.argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=shell.cwd,
        env=shell.env,
        start_new_session=True,
    )
    started.add(proc)
    feeder = asyncio.create_task(_feed_pipe(process, proc))
    try:
        if proc.stdout is not None and proc.stderr is not None:  # always: PIPE was asked for
            await asyncio.gather(
                _drain(proc.stdout, process.stdout), _drain(proc.stderr, process.stderr)
            )
        code = await proc.wait()
    finally:
        feeder.cancel()
        kill_group(proc)
        started.discard(proc)
    return code if code >= 0 else 128 - code


async def _drain(source: asyncio.StreamReader, sink: Any) -> None:
    while data := await source.read(_CHUNK):
        sink.write(data)
        await sink.drain()


async def _feed_pipe(
    process: asyncssh.SSHServerProcess[bytes], proc: asyncio.subprocess.Process
) -> None:
    sink = proc.stdin
    if sink is None:
        return
    try:
        while True:
            try:
                data = await process.stdin.read(_CHUNK)
            except (asyncssh.BreakReceived, asyncssh.SignalReceived, asyncssh.TerminalSizeChanged):
                continue
            if not data:
                break
            sink.write(data)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        sink.close()
