"""Committed job changes between the worker processes of one SQLite server
(`jobyard server --workers N`): what LISTEN/NOTIFY (store/notify.py) is on PostgreSQL.

Each worker binds a unix datagram socket `<pid>.sock` in the server's `workers/` directory;
what its change feed publishes goes, after the commit, to every other socket there (payload:
the job ids, comma-separated), and what arrives on its own is handed to its feed on the event
loop's thread (add_reader: no thread). A socket that refuses (its worker died) is removed; a
full one is skipped (that worker's feed recheck covers the loss).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path

from jobyard.store.feed import JobFeed

log = logging.getLogger(__name__)
_MAX_DATAGRAM = 60_000


class Peers:
    def __init__(self, directory: Path, feed: JobFeed) -> None:
        self._dir = directory
        self._feed = feed
        self._path = directory / f"{os.getpid()}.sock"
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self._path))
        sock.setblocking(False)
        self._sock, self._loop = sock, loop
        loop.add_reader(sock.fileno(), self._receive)
        self._feed.send_to(self._send)

    def stop(self) -> None:
        self._feed.send_to(None)
        if self._sock is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        self._path.unlink(missing_ok=True)

    def _send(self, ids: set[int]) -> None:
        if self._sock is None:
            return
        payloads = _payloads(ids)
        for peer in self._dir.glob("*.sock"):
            if peer == self._path:
                continue
            for payload in payloads:
                try:
                    self._sock.sendto(payload, str(peer))
                except (ConnectionRefusedError, FileNotFoundError):
                    peer.unlink(missing_ok=True)  # its worker is gone
                    break
                except (BlockingIOError, OSError):
                    break  # full or unreachable: its recheck reads again

    def _receive(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                data = sock.recv(_MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                return
            try:
                ids = {int(item) for item in data.split(b",") if item}
            except ValueError:
                continue
            self._feed.receive(ids)


def _payloads(ids: set[int]) -> list[bytes]:
    chunks: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    for job_id in sorted(ids):
        item = str(job_id).encode()
        if chunk and size + len(item) + 1 > _MAX_DATAGRAM:
            chunks.append(b",".join(chunk))
            chunk, size = [], 0
        chunk.append(item)
        size += len(item) + 1
    if chunk:
        chunks.append(b",".join(chunk))
    return chunks
