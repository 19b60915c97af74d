"""`logs -f` that outlives a server restart: a stream lost before its task ended (server
stopped, connection dropped, chunked read cut short) resumes at the byte offset already
written, retried with backoff while the server is away, for up to RECONNECT_FOR seconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from jobyard.cli import render
from jobyard.client import ApiError, Client, JobRef, LogStream, ServerUnreachable

RECONNECT_FOR = 60.0
FIRST_PAUSE, LONGEST_PAUSE = 0.2, 2.0
_FINISHED_TASK = ("EXITED", "LOST")
_PROXY_DOWN = (502, 503, 504)  # a proxy in front answering for a server that is away


class _Lost(Exception):
    """The stream ended before the task did."""


@dataclass
class Follower:
    client: Client
    ref: JobRef
    task: str | None = None
    write: Callable[[str], None] = render.write_raw
    patience: float = RECONNECT_FOR
    timestamps: bool = False

    def run(self, tail: int | None = None) -> None:
        """Write the task's output until it ends. Errors before any output raise at once."""
        stream = self.client.follow_logs(
            self.ref, task=self.task, tail=tail, timestamps=self.timestamps
        )
        while True:
            try:
                return self._copy(stream)
            except _Lost:
                stream = self._reconnect(stream.offset)

    def _copy(self, stream: LogStream) -> None:
        with stream:
            try:
                for text in stream:
                    self.write(text)
            except ServerUnreachable:
                raise _Lost from None
        if not self._task_ended():
            raise _Lost  # the server closed the stream early (e.g. it is shutting down)

    def _task_ended(self) -> bool:
        try:
            job = self.client.get(self.ref)
        except ServerUnreachable:
            return False
        tasks = [t for t in job.tasks if self.task in (None, t.name, str(t.index))][:1]
        return job.is_terminal() or not tasks or tasks[0].state in _FINISHED_TASK

    def _reconnect(self, offset: int | None) -> LogStream:
        """A stream from `offset` (None, after a --tail: from what is written from now on)."""
        why = "--timestamps" if self.timestamps else "--tail"
        skipped = "" if offset is not None else f" (after {why}: output meanwhile is not shown)"
        render.note(f"reconnecting…{skipped}")
        give_up, pause = time.monotonic() + self.patience, FIRST_PAUSE
        while True:
            try:
                tail = 0 if offset is None else None
                return self.client.follow_logs(
                    self.ref, task=self.task, tail=tail, offset=offset, timestamps=self.timestamps
                )
            except (ServerUnreachable, ApiError) as exc:
                away = isinstance(exc, ServerUnreachable) or exc.status in _PROXY_DOWN
                left = give_up - time.monotonic()
                if not away or left <= 0:
                    raise
            time.sleep(min(pause, left))  # the last try comes as the patience runs out
            pause = min(pause * 2, LONGEST_PAUSE)
