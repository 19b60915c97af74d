"""Processes on this machine: posix_spawn without the GIL and without preexec_fn, waiting for a
child on the event loop, and ending a process tree. The one place jobyard starts processes:
the local executor's task supervisors and every shell (executors/shells.py) go through it.

`os.posix_spawn` keeps the GIL while the C library's posix_spawn runs, and glibc's returns only
once the child has exec'd (it is a vfork). On a busy machine the child may wait for a CPU before
it gets there, and every other thread of the server (the event loop answering requests, the
store's writer) waits with it: profiles of 8 clients submitting `true` jobs showed the spawn
thread holding the GIL for a quarter of the wall time. ctypes releases the GIL around a foreign
call, so the same libc function called through it lets the rest of the server run meanwhile.

No Python runs in the child: everything it needs before its exec is a posix_spawn attribute or
file action (a new session, signal dispositions, its descriptors, its working directory, its
controlling terminal), which is why nothing here uses `preexec_fn` (which CPython documents as
unsafe in a program with threads, as the server is).

The child starts with every standard signal at its default disposition and none blocked, as
a process started from a login shell would. Python ignores SIGPIPE and SIGXFSZ, and ignored
signals survive exec (subprocess undoes that with restore_signals): without this, `yes | head`
in a job would complain of a broken pipe instead of ending quietly.

No descriptor above stderr reaches the child: the C library closes them all in the child
(posix_spawn_file_actions_addclosefrom_np, glibc 2.34 and later: one close_range call), so the
server's sockets, database and pidfds stay its own whatever C libraries opened them without
O_CLOEXEC. Where that action is missing, every descriptor of the server above stderr is marked
close-on-exec before the spawn instead (a scan of /proc/self/fd: two fcntl calls a descriptor).

A controlling terminal: the child leads a new session (POSIX_SPAWN_SETSID, applied before the
file actions), and its stdin is the terminal opened by path without O_NOCTTY, which a session
leader without a terminal acquires (Linux, as every System V derivative).

Where ctypes finds no posix_spawn in the C library, `os.posix_spawn` is used, with the same
attributes; where the C library lacks posix_spawn_file_actions_addchdir_np (glibc before 2.29),
the working directory is set by a `/bin/sh` that changes to it and execs the program. The flag
values are glibc's and musl's (os.posix_spawn sets the same ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from collections.abc import Mapping, Sequence
from typing import Any

import psutil

# Opaque C types, allocated generously: glibc's posix_spawnattr_t is 336 bytes on x86-64, its
# posix_spawn_file_actions_t 80 and its sigset_t 128.
_OPAQUE_BYTES = 1024
_SETSIGDEF, _SETSIGMASK, _SETSID = 0x04, 0x08, 0x80  # POSIX_SPAWN_* in glibc and musl
# The standard signals a process can catch or ignore: all reset to their defaults in the child.
DEFAULT_SIGNALS = sorted(
    s for s in signal.valid_signals() if s < 32 and s not in (signal.SIGKILL, signal.SIGSTOP)
)
# Changes to the working directory ($1) and execs the rest: where the C library cannot chdir.
# The program runs under its own path as argv[0] there (a POSIX shell cannot set argv[0]).
_CHDIR = ("/bin/sh", "-c", 'cd "$1" || exit 126; p=$2; shift 3; exec "$p" "$@"', "jobyard-cd")


def _load() -> ctypes.CDLL | None:
    if not hasattr(os, "POSIX_SPAWN_OPEN"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the C library this Python runs on
        functions = (
            libc.posix_spawn,
            libc.posix_spawnattr_init,
            libc.posix_spawnattr_setflags,
            libc.posix_spawnattr_destroy,
            libc.posix_spawn_file_actions_init,
            libc.posix_spawn_file_actions_addopen,
            libc.posix_spawn_file_actions_adddup2,
            libc.posix_spawn_file_actions_destroy,
            libc.posix_spawnattr_setsigdefault,
            libc.posix_spawnattr_setsigmask,
            libc.sigemptyset,
            libc.sigaddset,
        )
    except (OSError, AttributeError):
        return None
    pointer, text, number = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    argtypes: tuple[list[Any], ...] = (
        [ctypes.POINTER(ctypes.c_int), text, pointer, pointer, pointer, pointer],
        [pointer],
        [pointer, ctypes.c_short],
        [pointer],
        [pointer],
        [pointer, number, text, number, ctypes.c_uint],
        [pointer, number, number],
        [pointer],
        [pointer, pointer],
        [pointer, pointer],
        [pointer],
        [pointer, number],
    )
    for function, types in zip(functions, argtypes, strict=True):
        function.argtypes = types
        function.restype = number
    return libc


_LIBC = _load()


def _load_action(libc: ctypes.CDLL | None, name: str, argument: Any) -> Any:
    """An optional file action of the C library (a GNU extension), or None."""
    function = getattr(libc, name, None)
    if function is not None:
        function.argtypes = [ctypes.c_void_p, argument]
        function.restype = ctypes.c_int
    return function


_ADDCLOSEFROM = _load_action(_LIBC, "posix_spawn_file_actions_addclosefrom_np", ctypes.c_int)
_ADDCHDIR = _load_action(_LIBC, "posix_spawn_file_actions_addchdir_np", ctypes.c_char_p)


def _close_on_exec_above_stderr() -> None:
    """Mark every descriptor above stderr close-on-exec (Python's own already are; C libraries
    such as OpenSSL or libuv may open some without)."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        if fd > 2:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


def _strings(items: Sequence[bytes]) -> ctypes.Array[ctypes.c_char_p]:
    if any(b"\0" in item for item in items):  # C would cut it short there: refuse, as os does
        raise ValueError("embedded null byte")
    return (ctypes.c_char_p * (len(items) + 1))(*items, None)


# A child's standard descriptors, as file actions: ("open", fd, path, flags) or ("dup2", from, to).
_Action = tuple[str, int, Any, int]


def _stdio(
    stdin: int | None, stdout: int | None, stderr: int | None, terminal: str | None
) -> list[_Action]:
    if terminal is not None:  # opened after setsid: it becomes the controlling terminal
        return [("open", 0, terminal, os.O_RDWR), ("dup2", 0, 1, 0), ("dup2", 0, 2, 0)]
    actions: list[_Action] = [
        ("open", 0, os.devnull, os.O_RDONLY) if stdin is None else ("dup2", stdin, 0, 0)
    ]
    for target, fd in ((1, stdout), (2, stderr)):
        actions.append(
            ("open", target, os.devnull, os.O_WRONLY) if fd is None else ("dup2", fd, target, 0)
        )
    return actions


def spawn(
    path: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    cwd: str | None = None,
    terminal: str | None = None,
) -> int:
    """posix_spawn `path` with `argv` and exactly `env`, as the leader of a new session and
    process group; the child's pid. Its stdin, stdout and stderr are the descriptors given
    (None: /dev/null), or all three the pseudo-terminal at the path `terminal`, which becomes
    its controlling terminal. No other descriptor reaches it. `cwd`: where it starts. Errors
    as os.posix_spawn raises them (OSError; ValueError for a NUL in an argument)."""
    actions = _stdio(stdin, stdout, stderr, terminal)
    if cwd is not None and (_LIBC is None or _ADDCHDIR is None):
        argv, path, cwd = [*_CHDIR, cwd, path, *argv], _CHDIR[0], None
    if _LIBC is None or _ADDCLOSEFROM is None:
        _close_on_exec_above_stderr()
    if _LIBC is None:
        return _os_spawn(path, argv, env, actions)
    return _ctypes_spawn(_LIBC, path, argv, env, actions, cwd)


def spawn_session(path: str, argv: list[str], env: Mapping[str, str], *, output_fd: int) -> int:
    """`spawn` with stdin from /dev/null and stdout and stderr on `output_fd` (a task)."""
    return spawn(path, argv, env, stdout=output_fd, stderr=output_fd)


def _os_spawn(
    path: str, argv: Sequence[str], env: Mapping[str, str], actions: list[_Action]
) -> int:
    file_actions = [
        (os.POSIX_SPAWN_OPEN, fd, name, flags, 0)
        if kind == "open"
        else (os.POSIX_SPAWN_DUP2, fd, name)
        for kind, fd, name, flags in actions
    ]
    return os.posix_spawn(
        path,
        list(argv),
        env,
        file_actions=file_actions,
        setsid=True,
        setsigdef=DEFAULT_SIGNALS,
        setsigmask=(),
    )


def _ctypes_spawn(
    libc: ctypes.CDLL,
    path: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    actions: list[_Action],
    cwd: str | None,
) -> int:
    argv_c = _strings([os.fsencode(a) for a in argv])
    env_c = _strings([os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()])
    attr = ctypes.create_string_buffer(_OPAQUE_BYTES)
    actions_c = ctypes.create_string_buffer(_OPAQUE_BYTES)
    defaults, no_mask = (ctypes.create_string_buffer(_OPAQUE_BYTES) for _ in range(2))
    _check(libc.sigemptyset(defaults), errno=True)
    _check(libc.sigemptyset(no_mask), errno=True)
    for number in DEFAULT_SIGNALS:
        _check(libc.sigaddset(defaults, number), errno=True)
    _check(libc.posix_spawnattr_init(attr))
    try:
        _check(libc.posix_spawnattr_setflags(attr, _SETSID | _SETSIGDEF | _SETSIGMASK))
        _check(libc.posix_spawnattr_setsigdefault(attr, defaults))
        _check(libc.posix_spawnattr_setsigmask(attr, no_mask))
        _check(libc.posix_spawn_file_actions_init(actions_c))
        try:
            _add_actions(libc, actions_c, actions, cwd)
            pid = ctypes.c_int()
            # The GIL is released for the length of this call (ctypes.CDLL does that).
            _check(
                libc.posix_spawn(
                    ctypes.byref(pid), os.fsencode(path), actions_c, attr, argv_c, env_c
                )
            )
            return pid.value
        finally:
            libc.posix_spawn_file_actions_destroy(actions_c)
    finally:
        libc.posix_spawnattr_destroy(attr)


def _add_actions(
    libc: ctypes.CDLL, c_actions: Any, actions: list[_Action], cwd: str | None
) -> None:
    for kind, fd, name, flags in actions:
        if kind == "open":
            _check(
                libc.posix_spawn_file_actions_addopen(c_actions, fd, os.fsencode(name), flags, 0)
            )
        else:
            _check(libc.posix_spawn_file_actions_adddup2(c_actions, fd, name))
    if cwd is not None:
        _check(_ADDCHDIR(c_actions, os.fsencode(cwd)))
    if _ADDCLOSEFROM is not None:
        _check(_ADDCLOSEFROM(c_actions, 3))


def _check(code: int, *, errno: bool = False) -> None:
    """posix_spawn and its helpers return an errno value (0 for success); the sigset functions
    return -1 and set errno."""
    if code != 0:
        number = ctypes.get_errno() if errno else code
        raise OSError(number, os.strerror(number))


# ---- waiting --------------------------------------------------------------------------------


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+N when killed by signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


async def wait_child(pid: int, *, poll: float = 0.05) -> int:
    """Wait on the event loop for our child `pid` to exit, reap it and return its exit code
    (128+N when killed by signal N): told by a pidfd, else checked every `poll` seconds."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        pidfd = None
    try:
        while True:
            try:
                waited, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return 255  # reaped elsewhere: the exit code is unknowable
            if waited:
                return exit_code(status)
            if pidfd is None:
                await asyncio.sleep(poll)
            else:
                await readable(pidfd)
    finally:
        if pidfd is not None:
            os.close(pidfd)


async def readable(fd: int, *, writable: bool = False) -> None:
    """Until `fd` is readable (or writable) on the running event loop."""
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


# ---- ending a process tree ------------------------------------------------------------------


def descendants(pid: int) -> list[psutil.Process]:
    """Every live descendant of `pid`, including those that left its process group."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def signal_group(pgid: int, sig: int) -> None:
    """Signal a process group; one that is gone (or not ours) is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def signal_tree(leader: int, others: Sequence[psutil.Process], sig: int) -> None:
    """Signal the process group `leader` leads and each of `others`. A hangup is followed by
    SIGCONT, so that a stopped process sees it."""
    signal_group(leader, sig)
    if sig == signal.SIGHUP:
        signal_group(leader, signal.SIGCONT)
    for proc in others:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)
            if sig == signal.SIGHUP:
                proc.send_signal(signal.SIGCONT)
