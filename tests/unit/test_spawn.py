"""posix_spawn through ctypes (GIL released) behaves as os.posix_spawn: same child, same
errors, and the same result through the os fallback and without the GNU file actions. A
controlling terminal, a working directory and pipes come without preexec_fn."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobyard.executors import spawn
from jobyard.executors.shells import TerminalSize, open_pty
from jobyard.executors.spawn import spawn_session


@pytest.fixture(params=["ctypes", "ctypes without closefrom", "ctypes without chdir", "os"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param.startswith("ctypes") and spawn._LIBC is None:
        pytest.skip("this C library has no posix_spawn with POSIX_SPAWN_SETSID")
    if request.param == "ctypes" and spawn._ADDCLOSEFROM is None:
        pytest.skip("this C library has no posix_spawn_file_actions_addclosefrom_np")
    if request.param == "ctypes without closefrom":
        monkeypatch.setattr(spawn, "_ADDCLOSEFROM", None)
    if request.param == "ctypes without chdir":
        monkeypatch.setattr(spawn, "_ADDCHDIR", None)
    if request.param == "os":
        monkeypatch.setattr(spawn, "_LIBC", None)
    yield request.param


def _run(argv: list[str], env: dict[str, str]) -> tuple[int, str, int]:
    """(pid, what the child wrote to stdout, its exit code)."""
    read, write = os.pipe()
    try:
        pid = spawn_session("/bin/sh", argv, env, output_fd=write)
    finally:
        os.close(write)
    with os.fdopen(read) as out:
        text = out.read()
    _, status = os.waitpid(pid, 0)
    return pid, text, os.waitstatus_to_exitcode(status)


def test_the_child_leads_a_new_session_with_exactly_the_given_env(way: str) -> None:
    script = 'read -r _ _ _ _ pgid sid _ < /proc/$$/stat; echo "$pgid $sid $A $B|$HOME"; exit 7'
    pid, text, code = _run(["sh", "-c", script], {"A": "one two", "B": "=x"})
    assert code == 7
    assert text == f"{pid} {pid} one two =x|\n"  # own group and session; no inherited HOME
    assert os.getsid(0) != pid


def test_signals_start_at_their_defaults_and_unblocked(way: str) -> None:
    """Python ignores SIGPIPE and SIGXFSZ; the child must not inherit that (nor any mask)."""
    assert signal.getsignal(signal.SIGPIPE) is signal.SIG_IGN  # the parent's, as in the server
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        # grep reads its own status after the exec: the shell's, read from a child of the
        # shell, would race with dash blocking every signal around each fork it makes.
        script = "exec grep -E '^Sig(Ign|Blk)' /proc/self/status"
        _, text, _ = _run(["sh", "-c", script], {"PATH": os.defpath})
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    masks = {line.split(":")[0]: int(line.split()[1], 16) for line in text.splitlines()}
    standard = (1 << 31) - 1  # signals 1-31
    assert masks["SigIgn"] & standard == 0
    assert masks["SigBlk"] & standard == 0


def test_stdin_is_empty_and_stderr_goes_with_stdout(way: str) -> None:
    _, text, code = _run(["sh", "-c", "cat; echo err >&2; echo end"], {})
    assert (text, code) == ("err\nend\n", 0)


def test_a_missing_program_is_the_os_error_os_posix_spawn_raises(way: str) -> None:
    with pytest.raises(FileNotFoundError):
        spawn_session("/nonexistent/program", ["x"], {}, output_fd=2)


def test_nul_in_an_argument_or_env_is_refused(way: str) -> None:
    with pytest.raises(ValueError, match="null"):
        spawn_session("/bin/true", ["true", "a\0b"], {}, output_fd=2)
    with pytest.raises(ValueError, match="null"):
        spawn_session("/bin/true", ["true"], {"K": "a\0b"}, output_fd=2)


def test_no_descriptor_above_stderr_reaches_the_child(way: str) -> None:
    """Not even one the server left inheritable (as a C library may)."""
    leaked = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(leaked, True)
    try:
        _, text, code = _run(["sh", "-c", "ls /proc/$$/fd"], {"PATH": os.defpath})
    finally:
        os.close(leaked)
    assert code == 0
    assert sorted(int(fd) for fd in text.split()) == [0, 1, 2]


def test_the_child_starts_in_the_directory_given(way: str, tmp_path: Path) -> None:
    read, write = os.pipe()
    try:
        pid = spawn.spawn("/bin/sh", ["sh", "-c", "pwd"], {}, stdout=write, cwd=str(tmp_path))
    finally:
        os.close(write)
    with os.fdopen(read) as out:
        assert out.read() == f"{tmp_path}\n"
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_a_missing_directory_fails_the_spawn_or_exits_126(way: str, tmp_path: Path) -> None:
    """With the chdir file action posix_spawn fails (ENOENT); without, the shell that changes
    directory exits 126, as the task supervisor does."""
    try:
        pid = spawn.spawn("/bin/true", ["true"], {}, cwd=str(tmp_path / "missing"))
    except FileNotFoundError:
        assert way.startswith("ctypes") and way != "ctypes without chdir"
        return
    assert way in ("ctypes without chdir", "os")
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 126


def test_a_terminal_becomes_the_controlling_terminal(way: str) -> None:
    """Opened after setsid, the pty is the child's controlling terminal, and its group is the
    terminal's foreground group (what a shell's job control and ^C need)."""
    master, path = open_pty(TerminalSize(rows=33, cols=111))
    script = (
        'read -r _ _ _ _ pgid sid tty tpgid _ < /proc/$$/stat; echo "$$ $pgid $sid $tpgid"; '
        "stty size; tty"
    )
    try:
        pid = spawn.spawn("/bin/sh", ["sh", "-c", script], {"PATH": os.defpath}, terminal=path)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        os.set_blocking(master, True)
        text = b""
        while not text.endswith(path.encode() + b"\r\n"):
            text += os.read(master, 4096)
    finally:
        os.close(master)
    ids, size, tty = text.decode().splitlines()
    assert ids.split() == [str(pid)] * 4
    assert (size, tty, code) == ("33 111", path, 0)
