"""Client (over httpx.Client) and AsyncClient (over httpx.AsyncClient).

Both only send the Calls built in `calls.py`, so each class is a thin driver: one line per
operation, plus the loops of wait() and iter_jobs() and the log streams.

    with Client() as jobyard:
        job = jobyard.submit(["python", "train.py"], resources={"gpus": 1})
        for text in jobyard.follow_logs(job.id):
            print(text, end="")
        print(jobyard.wait(job.id).exit_code)
"""

from __future__ import annotations

import asyncio
import builtins
import codecs
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from types import TracebackType
from typing import Self, TypeVar, Unpack

import httpx

from jobyard.client import calls, usage
from jobyard.client.calls import Entrypoint, JobRef, ListFilters, SubmitOptions
from jobyard.client.discovery import discover_token, discover_url
from jobyard.client.errors import ServerUnreachable, WaitTimeout
from jobyard.client.models import (
    Event,
    Health,
    Job,
    JobPage,
    NewToken,
    NewUser,
    Pool,
    Queue,
    RegistryCredential,
    Token,
    User,
    UserInfo,
)
from jobyard.client.usage import JobUsage

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0


@contextlib.contextmanager
def _answering(url: str) -> Iterator[None]:
    """Turn httpx's transport errors (refused, timeout, connection lost) into ServerUnreachable."""
    try:
        yield
    except httpx.TransportError as exc:
        raise ServerUnreachable(url, calls.transport_detail(exc)) from exc


class _Deadline:
    """wait()'s clock: how long to pause before the next poll, or WaitTimeout once it ran out."""

    def __init__(self, timeout: float | None) -> None:
        self._timeout = timeout
        self._end = None if timeout is None else time.monotonic() + timeout

    def pause(self, job: Job, poll: float) -> float:
        if self._timeout is None or self._end is None:
            return poll
        left = self._end - time.monotonic()
        if left <= 0:
            raise WaitTimeout(job, self._timeout)
        return min(poll, left)


class _LogText:
    """Log bytes as text (UTF-8, bad bytes replaced), and the byte offset in the log just after
    the text given out so far: where to resume (`offset=`) once the stream is lost."""

    def __init__(self, offset: int | None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._start = offset
        self._taken = 0

    @property
    def offset(self) -> int | None:
        if self._start is None:
            return None
        return self._start + self._taken - len(self._decoder.getstate()[0])

    def decode(self, chunk: bytes) -> str:
        self._taken += len(chunk)
        return self._decoder.decode(chunk)

    def end(self) -> str:
        return self._decoder.decode(b"", final=True)


# ---- sync -------------------------------------------------------------------------------------


class LogStream(Iterator[str]):
    """Log text as the server sends it, until the task ends. Closes itself at the end; use it
    as a context manager (or call close()) to stop following early.

    `offset` is the log's byte offset after the text returned so far (None when following
    began at a `tail`): follow_logs(..., offset=stream.offset) resumes a lost stream there."""

    def __init__(self, response: httpx.Response, url: str, offset: int | None = 0) -> None:
        self._response = response
        self._chunks = response.iter_bytes()
        self._text = _LogText(offset)
        self._url = url

    @property
    def offset(self) -> int | None:
        return self._text.offset

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> str:
        text = ""
        while not text:
            try:
                text = self._text.decode(next(self._chunks))
            except StopIteration:
                self.close()
                if text := self._text.end():
                    return text
                raise
            except httpx.TransportError as exc:
                self.close()
                raise ServerUnreachable(self._url, calls.transport_detail(exc)) from exc
        return text

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class Client:
    """Synchronous jobyard client. See `jobyard.client.discovery` for the url and token defaults.

    `transport` replaces the network (e.g. `httpx.MockTransport` in tests).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = discover_url(url)
        options = calls.http_options(self.url, discover_token(token), timeout)
        self._http = httpx.Client(transport=transport, **options)

    def submit(self, entrypoint: Entrypoint, **options: Unpack[SubmitOptions]) -> Job:
        """Queue a job. The same `submission_id` with the same body returns the same job."""
        return self._send(calls.submit(entrypoint, options))

    def get(self, ref: JobRef) -> Job:
        return self._send(calls.get_job(ref))

    def list(self, **filters: Unpack[ListFilters]) -> JobPage:
        return self._send(calls.list_jobs(filters))

    def iter_jobs(self, **filters: Unpack[ListFilters]) -> Iterator[Job]:
        """Every matching job, page after page (`limit` is the page size)."""
        following: ListFilters | None = filters
        while following is not None:
            page = self.list(**following)
            yield from page.items
            following = calls.next_page(following, page)

    def stop(self, ref: JobRef) -> Job:
        """Ask the job to stop (202): it is STOPPING, or STOPPED if it had not started."""
        return self._send(calls.stop_job(ref))

    def delete(self, ref: JobRef, *, force: bool = False) -> None:
        """Forget a finished job and its logs; `force` also stops a live one."""
        self._send(calls.delete_job(ref, force=force))

    def events(self, ref: JobRef) -> builtins.list[Event]:
        return self._send(calls.job_events(ref))

    def metrics(
        self, ref: JobRef, task: str | int | None = None, last: int | None = None
    ) -> JobUsage:
        """Each task's usage samples (CPU, memory, GPUs), oldest first; kept after it ends."""
        return self._send(usage.job_metrics(ref, task=task, last=last))

    def logs(
        self,
        ref: JobRef,
        task: str | int | None = None,
        tail: int | None = None,
        offset: int | None = None,
        timestamps: bool = False,
    ) -> str:
        """A task's output so far (the first task unless named by index or name); with
        timestamps, each line behind the time the server first saw it."""
        call = calls.read_logs(ref, task=task, tail=tail, offset=offset, timestamps=timestamps)
        return self._send(call)

    def follow_logs(
        self,
        ref: JobRef,
        task: str | int | None = None,
        tail: int | None = None,
        offset: int | None = None,
        timestamps: bool = False,
    ) -> LogStream:
        """Stream a task's output until it ends, from the start, the last `tail` lines or byte
        `offset`; with timestamps, each line behind the time the server first saw it (the
        stream's `offset` is then None: its bytes are not the log's). Errors (e.g. no such
        job) raise here."""
        self._send(calls.check_logs(ref, task=task))
        call = calls.read_logs(
            ref, task=task, tail=tail, offset=offset, follow=True, timestamps=timestamps
        )
        request = self._http.build_request(
            call.method, call.path, params=call.params, timeout=calls.STREAM_TIMEOUT
        )
        with _answering(self.url):
            response = self._http.send(request, stream=True)
            if not response.is_success:
                with contextlib.closing(response):
                    response.read()
                raise calls.api_error(response)
        return LogStream(response, self.url, _resume_offset(tail, offset, timestamps))

    def wait(self, ref: JobRef, timeout: float | None = None, poll: float = 0.2) -> Job:
        """Poll until the job is SUCCEEDED, FAILED or STOPPED; WaitTimeout after `timeout` s."""
        deadline = _Deadline(timeout)
        while not (job := self.get(ref)).is_terminal():
            time.sleep(deadline.pause(job, poll))
        return job

    def health(self) -> Health:
        return self._send(calls.health())

    def pools(self) -> builtins.list[Pool]:
        """Each pool's capacity and use, running and queued jobs."""
        return self._send(calls.pools())

    def queues(self) -> builtins.list[Queue]:
        """Each queue's pool, priority, limits, running and queued jobs."""
        return self._send(calls.queues())

    def whoami(self) -> User:
        return self._send(calls.whoami())

    def create_user(self, name: str, *, admin: bool = False) -> NewUser:
        """Admin only: a new user and their token."""
        return self._send(calls.create_user(name, admin=admin))

    def list_users(self) -> builtins.list[UserInfo]:
        """Admin only."""
        return self._send(calls.list_users())

    def remove_user(self, name: str) -> None:
        """Admin only: the user and their tokens (their jobs stay)."""
        self._send(calls.remove_user(name))

    def create_token(
        self,
        user: str | None = None,
        *,
        name: str = "",
        expires_in: float | None = None,
        expires_at: datetime | None = None,
    ) -> NewToken:
        """A new token for `user` (default: yourself; others' need an admin). Its value is in
        the answer only."""
        return self._send(
            calls.create_token(user=user, name=name, expires_in=expires_in, expires_at=expires_at)
        )

    def list_tokens(self, user: str | None = None) -> builtins.list[Token]:
        return self._send(calls.list_tokens(user))

    def revoke_token(self, token_id: int) -> Token:
        return self._send(calls.revoke_token(token_id))

    def set_registry_credential(
        self, registry: str, username: str, password: str
    ) -> RegistryCredential:
        """Store your login to `registry` (host[:port]), replacing the one you had there: your
        jobs' images from that registry are pulled with it. The answer never has the password."""
        return self._send(calls.set_registry_credential(registry, username, password))

    def list_registry_credentials(self) -> builtins.list[RegistryCredential]:
        return self._send(calls.list_registry_credentials())

    def remove_registry_credential(self, registry: str) -> None:
        self._send(calls.remove_registry_credential(registry))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: calls.Call[T]) -> T:
        with _answering(self.url):
            response = self._http.request(
                call.method, call.path, params=call.params, json=call.body
            )
        return call.parse(response)


# ---- async ------------------------------------------------------------------------------------


class AsyncLogStream(AsyncIterator[str]):
    """The async LogStream: `async for`, and `async with` (or aclose()) to stop early."""

    def __init__(self, response: httpx.Response, url: str, offset: int | None = 0) -> None:
        self._response = response
        self._chunks = response.aiter_bytes()
        self._text = _LogText(offset)
        self._url = url

    @property
    def offset(self) -> int | None:
        return self._text.offset

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        text = ""
        while not text:
            try:
                text = self._text.decode(await anext(self._chunks))
            except StopAsyncIteration:
                await self.aclose()
                if text := self._text.end():
                    return text
                raise
            except httpx.TransportError as exc:
                await self.aclose()
                raise ServerUnreachable(self._url, calls.transport_detail(exc)) from exc
        return text

    async def aclose(self) -> None:
        await self._response.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()


class AsyncClient:
    """The asynchronous twin of Client: the same methods, awaited."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = discover_url(url)
        options = calls.http_options(self.url, discover_token(token), timeout)
        self._http = httpx.AsyncClient(transport=transport, **options)

    async def submit(self, entrypoint: Entrypoint, **options: Unpack[SubmitOptions]) -> Job:
        return await self._send(calls.submit(entrypoint, options))

    async def get(self, ref: JobRef) -> Job:
        return await self._send(calls.get_job(ref))

    async def list(self, **filters: Unpack[ListFilters]) -> JobPage:
        return await self._send(calls.list_jobs(filters))

    async def iter_jobs(self, **filters: Unpack[ListFilters]) -> AsyncIterator[Job]:
        following: ListFilters | None = filters
        while following is not None:
            page = await self.list(**following)
            for job in page.items:
                yield job
            following = calls.next_page(following, page)

    async def stop(self, ref: JobRef) -> Job:
        return await self._send(calls.stop_job(ref))

    async def delete(self, ref: JobRef, *, force: bool = False) -> None:
        await self._send(calls.delete_job(ref, force=force))

    async def events(self, ref: JobRef) -> builtins.list[Event]:
        return await self._send(calls.job_events(ref))

    async def metrics(
        self, ref: JobRef, task: str | int | None = None, last: int | None = None
    ) -> JobUsage:
        return await self._send(usage.job_metrics(ref, task=task, last=last))

    async def logs(
        self,
        ref: JobRef,
        task: str | int | None = None,
        tail: int | None = None,
        offset: int | None = None,
        timestamps: bool = False,
    ) -> str:
        call = calls.read_logs(ref, task=task, tail=tail, offset=offset, timestamps=timestamps)
        return await self._send(call)

    async def follow_logs(
        self,
        ref: JobRef,
        task: str | int | None = None,
        tail: int | None = None,
        offset: int | None = None,
        timestamps: bool = False,
    ) -> AsyncLogStream:
        await self._send(calls.check_logs(ref, task=task))
        call = calls.read_logs(
            ref, task=task, tail=tail, offset=offset, follow=True, timestamps=timestamps
        )
        request = self._http.build_request(
            call.method, call.path, params=call.params, timeout=calls.STREAM_TIMEOUT
        )
        with _answering(self.url):
            response = await self._http.send(request, stream=True)
            if not response.is_success:
                try:
                    await response.aread()
                finally:
                    await response.aclose()
                raise calls.api_error(response)
        return AsyncLogStream(response, self.url, _resume_offset(tail, offset, timestamps))

    async def wait(self, ref: JobRef, timeout: float | None = None, poll: float = 0.2) -> Job:
        deadline = _Deadline(timeout)
        while not (job := await self.get(ref)).is_terminal():
            await asyncio.sleep(deadline.pause(job, poll))
        return job

    async def health(self) -> Health:
        return await self._send(calls.health())

    async def pools(self) -> builtins.list[Pool]:
        return await self._send(calls.pools())

    async def queues(self) -> builtins.list[Queue]:
        return await self._send(calls.queues())

    async def whoami(self) -> User:
        return await self._send(calls.whoami())

    async def create_user(self, name: str, *, admin: bool = False) -> NewUser:
        return await self._send(calls.create_user(name, admin=admin))

    async def list_users(self) -> builtins.list[UserInfo]:
        return await self._send(calls.list_users())

    async def remove_user(self, name: str) -> None:
        await self._send(calls.remove_user(name))

    async def create_token(
        self,
        user: str | None = None,
        *,
        name: str = "",
        expires_in: float | None = None,
        expires_at: datetime | None = None,
    ) -> NewToken:
        return await self._send(
            calls.create_token(user=user, name=name, expires_in=expires_in, expires_at=expires_at)
        )

    async def list_tokens(self, user: str | None = None) -> builtins.list[Token]:
        return await self._send(calls.list_tokens(user))

    async def revoke_token(self, token_id: int) -> Token:
        return await self._send(calls.revoke_token(token_id))

    async def set_registry_credential(
        self, registry: str, username: str, password: str
    ) -> RegistryCredential:
        return await self._send(calls.set_registry_credential(registry, username, password))

    async def list_registry_credentials(self) -> builtins.list[RegistryCredential]:
        return await self._send(calls.list_registry_credentials())

    async def remove_registry_credential(self, registry: str) -> None:
        await self._send(calls.remove_registry_credential(registry))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(self, call: calls.Call[T]) -> T:
        with _answering(self.url):
            response = await self._http.request(
                call.method, call.path, params=call.params, json=call.body
            )
        return call.parse(response)


def _resume_offset(tail: int | None, offset: int | None, timestamps: bool) -> int | None:
    """Where a followed stream's text begins in the log; None where it cannot say (after a
    tail, or with timestamps: the stamps are not the log's bytes)."""
    return None if tail is not None or timestamps else offset or 0
