"""Relaying bytes between two connected non-blocking sockets, in the event loop.

On Linux the bytes go socket -> pipe -> socket with splice(2), so they are never copied into
Python, from callbacks registered once per direction (no future per read). Elsewhere,
recv/send through one reused buffer. Each direction ends with a shutdown of the sending side
(a half-close), so the other direction can still finish."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket

_PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_CHUNK = 256 * 1024


class _Pump:
    """One direction: src -> pipe -> dst. Reads only while the pipe is empty, so a slow dst
    stops the reading of src (back-pressure) instead of filling memory."""

    def __init__(self, loop: asyncio.AbstractEventLoop, src: socket.socket, dst: socket.socket):
        self._loop = loop
        self._src, self._dst = src.fileno(), dst.fileno()
        self._dst_sock = dst
        self._read_end, self._write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._write_end, _F_SETPIPE_SZ, _PIPE_SIZE)
        self._flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        self._pending = 0
        self.done: asyncio.Future[None] = loop.create_future()
        loop.add_reader(self._src, self._readable)

    def _readable(self) -> None:
        try:
            count = os.splice(self._src, self._write_end, _PIPE_SIZE, flags=self._flags)
        except BlockingIOError:
            return
        except OSError:
            self.finish()
            return
        if count == 0:
            self.finish()
            return
        self._pending = count
        if not self._flush():
            self._loop.remove_reader(self._src)
            self._loop.add_writer(self._dst, self._writable)

    def _writable(self) -> None:
        if self._flush():
            self._loop.remove_writer(self._dst)
            if not self.done.done():
                self._loop.add_reader(self._src, self._readable)

    def _flush(self) -> bool:
        """Move what the pipe holds to dst; False if dst would block first."""
        while self._pending:
            try:
                self._pending -= os.splice(
                    self._read_end, self._dst, self._pending, flags=self._flags
                )
            except BlockingIOError:
                return False
            except OSError:
                self.finish()
                return True
        return True

    def finish(self) -> None:
        """End this direction (idempotent): stop watching, half-close dst, free the pipe."""
        if self.done.done():
            return
        self._loop.remove_reader(self._src)
        self._loop.remove_writer(self._dst)
        with contextlib.suppress(OSError):
            self._dst_sock.shutdown(socket.SHUT_WR)
        os.close(self._read_end)
        os.close(self._write_end)
        self.done.set_result(None)


async def relay_both(a: socket.socket, b: socket.socket) -> None:
    """Relay a <-> b until both directions have ended (or the task is cancelled)."""
    loop = asyncio.get_running_loop()
    if not hasattr(os, "splice"):  # pragma: no cover - not Linux
        await asyncio.gather(_copy(loop, a, b), _copy(loop, b, a))
        return
    pumps = [_Pump(loop, a, b), _Pump(loop, b, a)]
    try:
        await asyncio.gather(*(pump.done for pump in pumps))
    finally:
        for pump in pumps:
            pump.finish()


async def _copy(
    loop: asyncio.AbstractEventLoop, src: socket.socket, dst: socket.socket
) -> None:  # pragma: no cover - not Linux
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    try:
        while count := await loop.sock_recv_into(src, buffer):
            await loop.sock_sendall(dst, view[:count])
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
