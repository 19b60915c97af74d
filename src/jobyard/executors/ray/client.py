"""Ray's own Job Submission client, made safe for an event loop.

`JobSubmissionClient` is synchronous (`requests`, a new connection per call) and sets no
timeout on its requests, so an unreachable head would hang a call for minutes. Here every call
runs on a small thread pool of its own (the event loop never blocks, and a slow Ray cannot
take the threads the rest of the server uses), each request carries a timeout, and Ray's
errors come back as two kinds: `Unreachable` (no answer: connection refused, timeout) and
`RayRefused` (an answer that is not 200, with its status code). Ray's JobDetails become
`RayJob`, plain data.

Why Ray's client rather than the REST API over httpx: it is the reference implementation of
that API, and it does what a submission needs beyond the POST: the working directory is hashed,
zipped and uploaded the way Ray's package mechanism expects (skipped when the cluster has it),
`pip` and the rest of runtime_env are normalised as Ray's CLI does, the version gates and
Ray's token auth come with it. Its cost (a TCP connection per call) is measured by
`python -m bench ray-executor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests
from ray.job_submission import JobDetails, JobSubmissionClient

try:  # Ray's token authentication (2.52 on): its errors, as Ray's own client words them
    from ray._private.authentication.http_token_authentication import (
        format_authentication_http_error,
    )
    from ray.exceptions import AuthenticationError
except ImportError:  # pragma: no cover - an older Ray, without token authentication

    class AuthenticationError(Exception):  # type: ignore[no-redef]
        pass

    def format_authentication_http_error(status: int, body: str) -> str | None:  # noqa: ARG001
        return None


from jobyard.errors import ExecutorUnavailable, JobyardError

T = TypeVar("T")
_ENV_ADDRESSES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


class Unreachable(ExecutorUnavailable):
    """The Ray cluster did not answer (refused, timed out, or its address cannot be resolved)."""


class RayRefused(JobyardError):
    """Ray answered, but not with a 200: `status` is the HTTP code (0 when not known)."""

    code = "ray_refused"

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RayJob:
    """What jobyard reads of one Ray job (Ray's JobDetails)."""

    submission_id: str
    status: str  # PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED
    entrypoint: str
    message: str = ""
    error_type: str | None = None
    exit_code: int | None = None
    start_ms: int | None = None  # when Ray took the submission
    node_id: str | None = None  # the node its driver runs on, once it started
    ray_job_id: str | None = None  # Ray's id of the driver's job, once it called ray.init()
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.status in ("STOPPED", "SUCCEEDED", "FAILED")


def _ray_job(details: JobDetails) -> RayJob:
    return RayJob(
        submission_id=str(details.submission_id or details.job_id or ""),
        status=str(details.status.value),
        entrypoint=details.entrypoint,
        message=details.message or "",
        error_type=details.error_type,
        exit_code=details.driver_exit_code,
        start_ms=details.start_time,
        node_id=details.driver_node_id,
        ray_job_id=details.job_id,
        metadata=dict(details.metadata or {}),
    )


class _TimedClient(JobSubmissionClient):
    """Ray's client with a timeout on every request (Ray's own sets none), each thread's
    requests on one kept-alive connection (Ray's own opens a new one for every request: half
    of a status call's time on loopback)."""

    def __init__(self, address: str | None, *, timeout: float, headers: dict[str, str]) -> None:
        self._timeout = timeout  # before Ray's constructor: it already makes requests
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        super().__init__(address, headers=headers)

    def _do_request(
        self,
        method: str,
        endpoint: str,
        *,
        data: bytes | None = None,
        json_data: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """Ray's `_do_request` (its authentication errors included) on this thread's session."""
        kwargs.setdefault("timeout", self._timeout)
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            self._sessions.append(session)
        response = session.request(
            method,
            self._address + endpoint,
            cookies=self._cookies,
            data=data,
            json=json_data,
            headers=self._headers,
            verify=self._verify,
            **kwargs,
        )
        formatted = format_authentication_http_error(response.status_code, response.text)
        if formatted:
            raise AuthenticationError(formatted)
        return response

    def close_sessions(self) -> None:
        for session in self._sessions:
            session.close()

    @property
    def http_address(self) -> str:
        return str(self._address)

    def nodes(self) -> list[dict[str, Any]]:
        """Ray's State API (`/api/v0/nodes`): every node with its total resources."""
        response = self._do_request("GET", "/api/v0/nodes?detail=true&limit=10000")
        if response.status_code != 200:
            self._raise_error(response)
        found: list[dict[str, Any]] = response.json()["data"]["result"]["result"]
        return found

    def state(self, resource: str, **equal: str) -> list[dict[str, Any]]:
        """Ray's State API list of `resource` (actors, workers, ...) whose fields equal these."""
        params = [("detail", "true"), ("limit", "10000")]
        for key, value in equal.items():
            params += [("filter_keys", key), ("filter_predicates", "="), ("filter_values", value)]
        response = self._do_request("GET", f"/api/v0/{resource}", params=params)
        if response.status_code != 200:
            self._raise_error(response)
        found: list[dict[str, Any]] = response.json()["data"]["result"]["result"]
        return found

    def node_stats(self, node_id: str) -> dict[str, Any]:
        """The dashboard's figures of one node: its worker processes' CPU and memory, its GPUs
        and the processes on them (`/nodes/<id>`, from each node's reporter agent)."""
        response = self._do_request("GET", f"/nodes/{node_id}")
        if response.status_code != 200:
            self._raise_error(response)
        detail: dict[str, Any] = response.json()["data"]["detail"]
        return detail

    def log_file(self, node_id: str, filename: str, lines: int) -> str:
        """The last `lines` of one of Ray's log files on a node (Ray's log API)."""
        params = {"node_id": node_id, "filename": filename, "lines": str(lines)}
        response = self._do_request("GET", "/api/v0/logs/file", params=params)
        if response.status_code != 200:
            self._raise_error(response)
        return str(response.text)


def check_address(address: str | None) -> None:
    """Ray's client lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override the address it is
    given, silently: refuse to run against another cluster than the one configured."""
    for name in _ENV_ADDRESSES:
        value = os.environ.get(name)
        if address and value and value.rstrip("/") != address.rstrip("/"):
            raise ExecutorUnavailable(
                f"{name}={value} in the server's environment would override ray.address="
                f"{address} (Ray's client prefers the variable); unset it or make them agree"
            )


class RayClient:
    """Async calls to one Ray cluster's Job API, each on the client's own thread pool."""

    def __init__(
        self,
        address: str | None,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        max_concurrent: int = 4,
    ) -> None:
        check_address(address)
        self.address = address
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(max_concurrent, thread_name_prefix="jobyard-ray")
        self._client: _TimedClient | None = None
        self._dropped: list[_TimedClient] = []

    @property
    def where(self) -> str:
        return self.address or "the default address (RAY_ADDRESS, or a local cluster)"

    # ---- the thread side --------------------------------------------------------------------

    def _connected(self) -> _TimedClient:
        if self._client is None:
            client = _TimedClient(self.address, timeout=self._timeout, headers=self._headers)
            # A ray:// address was resolved through Ray Client once: keep the HTTP address.
            self.address = self.address if self._is_http(self.address) else client.http_address
            self._client = client
        return self._client

    @staticmethod
    def _is_http(address: str | None) -> bool:
        return bool(address) and str(address).startswith(("http://", "https://"))

    def call_sync(self, method: Callable[[_TimedClient], T]) -> T:
        """Run one call here and now (for the executor's constructor), errors translated."""
        try:
            return method(self._connected())
        except requests.HTTPError as exc:  # from Ray's version check: a 5xx
            status = exc.response.status_code if exc.response is not None else 0
            raise RayRefused(str(exc), status=status) from exc
        except (requests.RequestException, OSError) as exc:  # refused, timed out, cut off
            if self._client is not None:  # its sessions are closed with this client
                self._dropped.append(self._client)
            self._client = None  # connect afresh next time (the head may have moved)
            raise Unreachable(f"the Ray cluster at {self.where} does not answer: {exc}") from exc
        except RuntimeError as exc:
            raise RayRefused(str(exc), status=_status_of(str(exc))) from exc
        except Exception as exc:  # Ray's client raises ValueError, KeyError, HTTPError, ...
            if self._client is None:  # while connecting: the address is wrong or not Ray's
                raise Unreachable(f"cannot reach the Ray cluster at {self.where}: {exc}") from exc
            raise RayRefused(f"{type(exc).__name__}: {exc}") from exc

    async def call(self, method: Callable[[_TimedClient], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(self.call_sync, method))

    # ---- the calls --------------------------------------------------------------------------

    async def submit(self, **kwargs: Any) -> str:
        return await self.call(lambda c: str(c.submit_job(**kwargs)))

    async def job(self, submission_id: str) -> RayJob | None:
        """The job, or None when Ray does not know it (404)."""
        try:
            return await self.call(lambda c: _ray_job(c.get_job_info(submission_id)))
        except RayRefused as exc:
            if exc.status == 404:
                return None
            raise

    async def look(self, submission_id: str) -> tuple[RayJob | None, str | None]:
        """The job (None: Ray does not know it) and, if it has ended, its log, asked in one
        go on one thread: the end of a job is worth its log at once (None if that failed)."""

        def both(c: _TimedClient) -> tuple[RayJob | None, str | None]:
            try:
                job = _ray_job(c.get_job_info(submission_id))
            except RuntimeError as exc:
                if _status_of(str(exc)) == 404:
                    return None, None
                raise
            if not job.is_terminal:
                return job, None
            try:
                return job, str(c.get_job_logs(submission_id))
            except (requests.RequestException, OSError, RuntimeError):
                return job, None

        return await self.call(both)

    async def jobs(self) -> dict[str, RayJob]:
        """Every submitted job the cluster knows, by submission id (one request)."""
        found = await self.call(lambda c: [_ray_job(d) for d in c.list_jobs()])
        return {job.submission_id: job for job in found if job.submission_id}

    async def logs(self, submission_id: str) -> str:
        return await self.call(lambda c: str(c.get_job_logs(submission_id)))

    async def stop(self, submission_id: str) -> bool:
        return await self.call(lambda c: bool(c.stop_job(submission_id)))

    async def delete(self, submission_id: str) -> bool:
        return await self.call(lambda c: bool(c.delete_job(submission_id)))

    async def nodes(self) -> list[dict[str, Any]]:
        return await self.call(lambda c: c.nodes())

    async def state(self, resource: str, **equal: str) -> list[dict[str, Any]]:
        return await self.call(lambda c: c.state(resource, **equal))

    async def node_stats(self, node_id: str) -> dict[str, Any]:
        return await self.call(lambda c: c.node_stats(node_id))

    async def supervisor_log(self, job: RayJob, lines: int = 50) -> str:
        """The end of the log Ray's supervisor of the job keeps (what it did on a stop)."""
        if not job.node_id:
            return ""
        name = f"jobs/supervisor-{job.submission_id}.log"
        node = job.node_id
        return await self.call(lambda c: c.log_file(node, name, lines))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for client in [*self._dropped, *([self._client] if self._client else [])]:
            client.close_sessions()


def _status_of(text: str) -> int:
    """The code in Ray's `Request failed with status code N: ...` (0 if it says none)."""
    marker = "status code "
    at = text.find(marker)
    digits = text[at + len(marker) : at + len(marker) + 3] if at >= 0 else ""
    with contextlib.suppress(ValueError):
        return int(digits)
    return 0
