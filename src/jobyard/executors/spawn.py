"""posix_spawn without holding the GIL.

`os.posix_spawn` keeps the GIL while the C library's posix_spawn runs, and glibc's returns only
once the child has exec'd (it is a vfork). On a busy machine the child may wait for a CPU before
it gets there, and every other thread of the server (the event loop answering requests, the
store's writer) waits with it: profiles of 8 clients submitting `true` jobs showed the spawn
thread holding the GIL for a quarter of the wall time. ctypes releases the GIL around a foreign
call, so the same libc function called through it lets the rest of the server run meanwhile.

The child starts with every standard signal at its default disposition and none blocked, as
a process started from a login shell would. Python ignores SIGPIPE and SIGXFSZ, and ignored
signals survive exec (subprocess undoes that with restore_signals): without this, `yes | head`
in a job would complain of a broken pipe instead of ending quietly.

No descriptor above stderr reaches the child: the C library closes them all in the child
(posix_spawn_file_actions_addclosefrom_np, glibc 2.34 and later: one close_range call), so the
server's sockets, database and pidfds stay its own whatever C libraries opened them without
O_CLOEXEC. Where that action is missing, every descriptor of the server above stderr is marked
close-on-exec before the spawn instead (a scan of /proc/self/fd: two fcntl calls a descriptor).

Where ctypes finds no posix_spawn in the C library, `os.posix_spawn` is used, with the same
attributes. The flag values are glibc's and musl's (os.posix_spawn sets the same ones).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Mapping, Sequence
from typing import Any

# Opaque C types, allocated generously: glibc's posix_spawnattr_t is 336 bytes on x86-64, its
# posix_spawn_file_actions_t 80 and its sigset_t 128.
_OPAQUE_BYTES = 1024
_SETSIGDEF, _SETSIGMASK, _SETSID = 0x04, 0x08, 0x80  # POSIX_SPAWN_* in glibc and musl
# The standard signals a process can catch or ignore: all reset to their defaults in the child.
DEFAULT_SIGNALS = sorted(
    s for s in signal.valid_signals() if s < 32 and s not in (signal.SIGKILL, signal.SIGSTOP)
)


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


def _load_closefrom(libc: ctypes.CDLL | None) -> Any:
    function = getattr(libc, "posix_spawn_file_actions_addclosefrom_np", None)
    if function is not None:
        function.argtypes = [ctypes.c_void_p, ctypes.c_int]
        function.restype = ctypes.c_int
    return function


_ADDCLOSEFROM = _load_closefrom(_LIBC)


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


def spawn_session(path: str, argv: list[str], env: Mapping[str, str], *, output_fd: int) -> int:
    """posix_spawn `path` with `argv` and exactly `env`, as the leader of a new session, with
    stdin from /dev/null, stdout and stderr on `output_fd` and no other descriptor; the
    child's pid. Errors as os.posix_spawn raises them (OSError; ValueError for a NUL in an
    argument)."""
    if _LIBC is None or _ADDCLOSEFROM is None:
        _close_on_exec_above_stderr()
    if _LIBC is None:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, output_fd, 1),
            (os.POSIX_SPAWN_DUP2, output_fd, 2),
        ]
        return os.posix_spawn(
            path,
            argv,
            env,
            file_actions=actions,
            setsid=True,
            setsigdef=DEFAULT_SIGNALS,
            setsigmask=(),
        )
    libc = _LIBC
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
            devnull = os.fsencode(os.devnull)
            _check(libc.posix_spawn_file_actions_addopen(actions_c, 0, devnull, os.O_RDONLY, 0))
            _check(libc.posix_spawn_file_actions_adddup2(actions_c, output_fd, 1))
            _check(libc.posix_spawn_file_actions_adddup2(actions_c, output_fd, 2))
            if _ADDCLOSEFROM is not None:
                _check(_ADDCLOSEFROM(actions_c, 3))
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


def _check(code: int, *, errno: bool = False) -> None:
    """posix_spawn and its helpers return an errno value (0 for success); the sigset functions
    return -1 and set errno."""
    if code != 0:
        number = ctypes.get_errno() if errno else code
        raise OSError(number, os.strerror(number))
