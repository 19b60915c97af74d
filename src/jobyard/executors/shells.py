"""Shells into running tasks, as the web terminal and the SSH gateway get them.

`open_local_shell` runs an executor's ShellCommand on this machine (executors/spawn.py: a new
session, posix_spawn, no preexec_fn) under a new pseudo-terminal, or with plain pipes for a
command without one (`ssh host command`). The Shell it returns is all a face touches: bytes
in, bytes out, a window size, an exit code, and an end. Faces relay; they never spawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import struct
import termios
from dataclasses import dataclass

from jobyard.executors.spawn import (
    descendants,
    readable,
    signal_group,
    signal_tree,
    spawn,
    wait_child,
)

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class TerminalSize:
    """A terminal's window: rows and columns (and pixels, which most clients leave 0)."""

    rows: int
    cols: int
    xpixel: int = 0
    ypixel: int = 0


@dataclass(frozen=True)
class ShellCommand:
    """How to open a shell (or run one command) inside a running task.

    `open_local_shell` spawns `argv` with `env` in `cwd` on this server; for a remote executor
    `argv` is the command that reaches the task (e.g. `srun --overlap`), for a container one
    `podman exec -it`.
    """

    argv: list[str]
    env: dict[str, str]
    cwd: str


def set_window_size(fd: int, size: TerminalSize) -> None:
    """Set a terminal's window size (a zero dimension leaves it as it is)."""
    if size.rows and size.cols:
        packed = struct.pack("HHHH", size.rows, size.cols, size.xpixel, size.ypixel)
        fcntl.ioctl(fd, termios.TIOCSWINSZ, packed)


def open_pty(size: TerminalSize) -> tuple[int, str]:
    """A new pseudo-terminal of `size`: its master (non-blocking, close-on-exec) and the path
    of its slave, which a child opens as its controlling terminal."""
    master, slave = os.openpty()
    try:
        set_window_size(slave, size)
        path = os.ttyname(slave)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    os.set_blocking(master, False)
    return master, path


class Shell:
    """A running shell (or command) in a task: under a pseudo-terminal (one stream, output and
    input both), or with pipes (stdin, stdout, stderr). The process leads its own session."""

    def __init__(self, pid: int, output: int, stdin: int | None, stderr: int | None) -> None:
        self.pid = pid
        self.tty = stdin is None  # a pty's master carries input and output alike
        self._output, self._stdin, self._stderr = output, stdin, stderr
        self._waiter: asyncio.Task[int] | None = None
        self._closed = False

    async def read(self) -> bytes:
        """The next output (the terminal's, or stdout); b"" once it has ended."""
        return await self._read(self._output)

    async def read_stderr(self) -> bytes:
        """The next of stderr; b"" once it has ended (at once under a terminal: none apart)."""
        return b"" if self._stderr is None else await self._read(self._stderr)

    async def _read(self, fd: int) -> bytes:
        while not self._closed:
            try:
                return os.read(fd, _CHUNK)
            except BlockingIOError:
                await readable(fd)
            except OSError:  # EIO: the shell and everything holding the terminal are gone
                return b""
        return b""

    async def write(self, data: bytes) -> None:
        """Input for the shell, as fast as it takes it. Lost once the shell has ended."""
        fd = self._output if self._stdin is None else self._stdin
        view = memoryview(data)
        while view and not self._closed:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                await readable(fd, writable=True)
            except OSError:  # the shell closed its input (EPIPE) or its terminal went
                return

    def close_input(self) -> None:
        """The end of the input (pipes only: under a terminal, EOF is a keystroke)."""
        if self._stdin is not None and not self._closed:
            fd, self._stdin = self._stdin, -1
            if fd >= 0:
                os.close(fd)

    def resize(self, size: TerminalSize) -> None:
        if self.tty and not self._closed:
            set_window_size(self._output, size)

    async def wait(self) -> int:
        """The exit code once the shell has ended (128+N if killed by signal N)."""
        if self._waiter is None:
            self._waiter = asyncio.ensure_future(wait_child(self.pid))
        return await asyncio.shield(self._waiter)

    def hangup(self) -> None:
        """SIGHUP to the shell's process group, as a terminal closing sends it."""
        if not self._ended():
            signal_group(self.pid, signal.SIGHUP)

    def kill(self) -> None:
        """SIGKILL to the shell's process group."""
        if not self._ended():
            signal_group(self.pid, signal.SIGKILL)

    async def end(self, grace: float = 1.0) -> None:
        """End the shell, its process group and every descendant (SIGHUP, then SIGKILL after
        `grace` seconds for what is left), wait for it and close its descriptors."""
        if not self._closed:  # even once it ended: what it left in its group goes too
            victims = descendants(self.pid)
            signal_tree(self.pid, victims, signal.SIGHUP)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wait(), grace)
            signal_tree(self.pid, [p for p in victims if p.is_running()], signal.SIGKILL)
        await self.wait()
        self.close()

    def close(self) -> None:
        """Close the descriptors (the shell may live on: end() ends it)."""
        if self._closed:
            return
        self._closed = True
        for fd in (self._output, self._stdin, self._stderr):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _ended(self) -> bool:
        return self._waiter is not None and self._waiter.done()


async def open_local_shell(
    command: ShellCommand, size: TerminalSize | None = None, term: str | None = None
) -> Shell:
    """Spawn `command` on this machine in a new session: under a new pseudo-terminal of `size`
    (its controlling terminal; TERM set to `term` when given), or with pipes when size is None.
    OSError (the program or directory is missing) or ValueError (a NUL byte) if it cannot."""
    env = dict(command.env)
    program = _program(command.argv[0], env)
    if size is None:
        return await asyncio.to_thread(_spawn_with_pipes, program, command, env)
    if term:
        env["TERM"] = term
    master, path = open_pty(size)
    try:
        pid = await asyncio.to_thread(
            spawn, program, command.argv, env, cwd=command.cwd, terminal=path
        )
    except BaseException:
        os.close(master)
        raise
    return Shell(pid, master, None, None)


def _spawn_with_pipes(program: str, command: ShellCommand, env: dict[str, str]) -> Shell:
    pipes = [os.pipe() for _ in range(3)]  # stdin, stdout, stderr: (read end, write end)
    try:
        pid = spawn(
            program,
            command.argv,
            env,
            stdin=pipes[0][0],
            stdout=pipes[1][1],
            stderr=pipes[2][1],
            cwd=command.cwd,
        )
    except BaseException:
        for pair in pipes:
            for fd in pair:
                os.close(fd)
        raise
    for fd in (pipes[0][0], pipes[1][1], pipes[2][1]):
        os.close(fd)  # the child's ends
    ours = (pipes[1][0], pipes[0][1], pipes[2][0])
    for fd in ours:
        os.set_blocking(fd, False)
    return Shell(pid, *ours)


def _program(name: str, env: dict[str, str]) -> str:
    """The file `name` names, looked up in the command's own PATH (as exec would)."""
    if "/" in name:
        return name
    found = shutil.which(name, path=env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(2, f"{name!r} not found in PATH")
    return found
