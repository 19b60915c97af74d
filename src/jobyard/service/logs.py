"""Task logs: read by byte offset, the last N lines, or follow until the task ends (the job
read again only when the change feed says it changed)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from jobyard.config import MAX_LOG_READ_BYTES
from jobyard.executors.base import Executor
from jobyard.model import Job, Task
from jobyard.service.auth import User
from jobyard.service.jobs import JobService, find_task

_CHUNK = 64 * 1024
MAX_READ = MAX_LOG_READ_BYTES


@dataclass(frozen=True)
class LogQuery:
    task: str | None = None
    offset: int | None = None
    tail: int | None = None
    limit: int = MAX_READ


class LogService:
    def __init__(
        self,
        jobs: JobService,
        executor: Executor,
        *,
        follow_poll: float = 0.1,
        max_read: int = MAX_READ,
    ) -> None:
        self._jobs = jobs
        self._executor = executor
        self._follow_poll = follow_poll
        self._max_read = max_read  # max_log_read_bytes

    async def read(self, user: User, ref: str, query: LogQuery) -> bytes:
        job = await self._jobs.get(user, ref)
        task = find_task(job, query.task)
        if task.handle is None:
            return b""
        start = self._start_offset(task, query)
        return self._executor.read_log(task.handle, start, min(query.limit, self._max_read))

    async def read_from(
        self, user: User, ref: str, query: LogQuery
    ) -> tuple[Job, Task, int, bytes]:
        """As read(), with the job, the task read and the byte offset the bytes begin at
        (what log timestamps need: service/usage.py)."""
        job = await self._jobs.get(user, ref)
        task = find_task(job, query.task)
        if task.handle is None:
            return job, task, 0, b""
        start = self._start_offset(task, query)
        limit = min(query.limit, self._max_read)
        return job, task, start, self._executor.read_log(task.handle, start, limit)

    async def follow(self, user: User, ref: str, query: LogQuery) -> AsyncIterator[bytes]:
        """Check the job and task now (so a bad ref is a 404 before any output), then return
        a stream of new output that ends once the task has ended and all is sent."""
        job = await self._jobs.get(user, ref)
        find_task(job, query.task)
        return _chunks_only(self._follow(user, ref, query, job))

    async def follow_from(
        self, user: User, ref: str, query: LogQuery
    ) -> tuple[Job, Task, AsyncGenerator[tuple[int, bytes]]]:
        """As follow(), with the job and task followed, each chunk with the byte offset it
        begins at (what log timestamps need: service/usage.py)."""
        job = await self._jobs.get(user, ref)
        task = find_task(job, query.task)
        return job, task, self._follow(user, ref, query, job)

    async def _follow(
        self, user: User, ref: str, query: LogQuery, job: Job
    ) -> AsyncGenerator[tuple[int, bytes]]:
        """The file is read again every `follow_poll` seconds; the job only when a change to
        it is published (store/feed.py), or after the feed's recheck (another server's)."""
        task = find_task(job, query.task)
        offset = None
        with self._jobs.watch(job.id) as changed:
            read_at = time.monotonic()
            while True:
                if task.handle is not None:
                    if offset is None:
                        offset = self._start_offset(task, query)
                    chunk = self._executor.read_log(task.handle, offset, _CHUNK)
                    if chunk:
                        yield offset, chunk
                        offset += len(chunk)
                        continue
                if task.state.is_finished() or job.state.is_terminal():
                    return
                told = await changed.wait(self._follow_poll)
                if told or time.monotonic() - read_at >= changed.recheck_seconds:
                    read_at = time.monotonic()
                    job = await self._jobs.get(user, ref)
                    task = find_task(job, query.task)

    def _start_offset(self, task: Task, query: LogQuery) -> int:
        if query.tail is not None:
            return self._tail_offset(task.handle or {}, query.tail)
        return query.offset or 0

    def _tail_offset(self, handle: dict[str, object], lines: int) -> int:
        """Byte offset where the last `lines` lines begin (read backwards in chunks)."""
        size = self._executor.log_size(handle)
        if lines <= 0:
            return size
        end, newlines = size, 0
        while end > 0:
            start = max(end - _CHUNK, 0)
            chunk = self._executor.read_log(handle, start, end - start)
            # A final newline ends the last line rather than starting an empty one.
            stop = len(chunk) - 1 if end == size and chunk.endswith(b"\n") else len(chunk)
            for i in range(stop - 1, -1, -1):
                if chunk[i] == 0x0A:
                    newlines += 1
                    if newlines == lines:
                        return start + i + 1
            end = start
        return 0


async def _chunks_only(chunks: AsyncGenerator[tuple[int, bytes]]) -> AsyncIterator[bytes]:
    async with contextlib.aclosing(chunks):  # a client gone: the follow's watch ends now
        async for _offset, chunk in chunks:
            yield chunk
