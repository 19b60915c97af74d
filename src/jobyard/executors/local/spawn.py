"""posix_spawn without holding the GIL.

`os.posix_spawn` keeps the GIL while the C library's posix_spawn runs, and glibc's returns only
once the child has exec'd (it is a vfork). On a busy machine the child may wait for a CPU before
it gets there, and every other thread of the server (the event loop answering requests, the
store's writer) waits with it: profiles of 8 clients submitting `true` jobs showed the spawn
thread holding the GIL for a quarter of the wall time. ctypes releases the GIL around a foreign
call, so the same libc function called through it lets the rest of the server run meanwhile.

Where ctypes finds no posix_spawn in the C library, `os.posix_spawn` is used as before. The
session flag (POSIX_SPAWN_SETSID) is the one os.posix_spawn(setsid=True) sets: glibc 2.26+, musl.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping, Sequence
from typing import Any

# Opaque C types, allocated generously: glibc's posix_spawnattr_t is 336 bytes on x86-64 and
# its posix_spawn_file_actions_t 80.
_OPAQUE_BYTES = 1024
_SETSID = 0x80  # POSIX_SPAWN_SETSID in glibc and musl


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
    )
    for function, types in zip(functions, argtypes, strict=True):
        function.argtypes = types
        function.restype = number
    return libc


_LIBC = _load()


def _strings(items: Sequence[bytes]) -> ctypes.Array[ctypes.c_char_p]:
    if any(b"\0" in item for item in items):  # C would cut it short there: refuse, as os does
        raise ValueError("embedded null byte")
    return (ctypes.c_char_p * (len(items) + 1))(*items, None)


def spawn_session(path: str, argv: list[str], env: Mapping[str, str], *, output_fd: int) -> int:
    """posix_spawn `path` with `argv` and exactly `env`, as the leader of a new session, with
    stdin from /dev/null and stdout and stderr on `output_fd`; the child's pid. Errors as
    os.posix_spawn raises them (OSError; ValueError for a NUL in an argument)."""
    if _LIBC is None:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, output_fd, 1),
            (os.POSIX_SPAWN_DUP2, output_fd, 2),
        ]
        return os.posix_spawn(path, argv, env, file_actions=actions, setsid=True)
    libc = _LIBC
    argv_c = _strings([os.fsencode(a) for a in argv])
    env_c = _strings([os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()])
    attr = ctypes.create_string_buffer(_OPAQUE_BYTES)
    actions_c = ctypes.create_string_buffer(_OPAQUE_BYTES)
    _check(libc.posix_spawnattr_init(attr))
    try:
        _check(libc.posix_spawnattr_setflags(attr, _SETSID))
        _check(libc.posix_spawn_file_actions_init(actions_c))
        try:
            devnull = os.fsencode(os.devnull)
            _check(libc.posix_spawn_file_actions_addopen(actions_c, 0, devnull, os.O_RDONLY, 0))
            _check(libc.posix_spawn_file_actions_adddup2(actions_c, output_fd, 1))
            _check(libc.posix_spawn_file_actions_adddup2(actions_c, output_fd, 2))
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


def _check(code: int) -> None:
    """posix_spawn and its helpers return an errno value (0 for success)."""
    if code != 0:
        raise OSError(code, os.strerror(code))
