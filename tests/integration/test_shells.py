"""executors/shells.py: a ShellCommand run on this machine under a pty or with pipes, as the
web terminal and the SSH gateway get it (Executor.open_shell); and how a shell ends."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import psutil
import pytest

from jobyard.executors.shells import Shell, ShellCommand, TerminalSize, open_local_shell


def _command(line: str, cwd: Path) -> ShellCommand:
    return ShellCommand(["sh", "-c", line], {"PATH": os.defpath, "TERM": "dumb"}, str(cwd))


async def _until(shell: Shell, pattern: str, timeout: float = 10) -> re.Match[str]:
    seen = ""

    async def read() -> re.Match[str]:
        nonlocal seen
        while not (found := re.search(pattern, seen)):
            data = await shell.read()
            assert data, f"{pattern!r} not seen before the end: {seen!r}"
            seen += data.decode(errors="replace")
        return found

    return await asyncio.wait_for(read(), timeout)


async def test_under_a_pty_it_follows_the_window_and_takes_the_term(tmp_path: Path) -> None:
    line = 'echo "term=$TERM cwd=$(pwd)"; stty size; read -r _; stty size; exit 4'
    shell = await open_local_shell(_command(line, tmp_path), TerminalSize(30, 100), "xterm")
    try:
        assert shell.tty
        await _until(shell, rf"term=xterm cwd={tmp_path}\r\n30 100\r\n")
        shell.resize(TerminalSize(rows=40, cols=90))
        await shell.write(b"\r")
        await _until(shell, r"40 90\r\n")
        assert await shell.wait() == 4
    finally:
        await shell.end()


async def test_with_pipes_stdout_and_stderr_stay_apart(tmp_path: Path) -> None:
    shell = await open_local_shell(_command("cat; echo oops >&2; tty; kill -9 $$", tmp_path))
    try:
        assert not shell.tty

        async def feed() -> None:
            await shell.write(b"x" * 300_000)  # more than a pipe holds: taken as it is read
            shell.close_input()

        _, out, err = await asyncio.wait_for(
            asyncio.gather(feed(), _all(shell.read), _all(shell.read_stderr)), 10
        )
        assert (len(out), out[-10:], err) == (300_010, b"not a tty\n", b"oops\n")
        assert await shell.wait() == 128 + 9  # killed by signal N reads 128+N, as in a shell
    finally:
        await shell.end()


async def _all(read: object) -> bytes:
    chunks = []
    while data := await read():  # type: ignore[operator]
        chunks.append(data)
    return b"".join(chunks)


async def test_end_kills_the_group_and_descendants_that_left_it(tmp_path: Path) -> None:
    """SIGHUP first (a nohup'd child ignores it), then SIGKILL for whatever is left, even a
    descendant in a session of its own."""
    line = "nohup sleep 987661 >/dev/null 2>&1 & setsid sleep 987662 & echo started; wait"
    shell = await open_local_shell(_command(line, tmp_path), TerminalSize(24, 80))
    await _until(shell, r"started")
    kids = await asyncio.to_thread(_sleepers, {"987661", "987662"}, 2)
    await shell.end(grace=0.2)
    assert await shell.wait() > 128
    gone, alive = psutil.wait_procs(kids, timeout=5)
    assert not alive


def _sleepers(markers: set[str], count: int) -> list[psutil.Process]:
    for _ in range(200):
        found = [
            p
            for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and markers & set(p.info["cmdline"])
        ]
        if len(found) == count:
            return found
        time.sleep(0.02)
    raise AssertionError(f"never saw {count} of {markers}")


async def test_a_program_that_is_not_there_is_an_os_error(tmp_path: Path) -> None:
    missing = ShellCommand(["no-such-shell"], {"PATH": os.defpath}, str(tmp_path))
    with pytest.raises(FileNotFoundError):
        await open_local_shell(missing, TerminalSize(24, 80))
    with pytest.raises(FileNotFoundError):
        await open_local_shell(ShellCommand(["/bin/sh"], {}, str(tmp_path / "gone")))
