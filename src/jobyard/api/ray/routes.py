"""Ray's Job Submission REST API (what `ray job` and JobSubmissionClient speak), thin handlers.

Paths work with and without the trailing slash. Success is always 200 with exactly the keys
Ray's client builds its dataclasses from; errors are a JSON string (the seed's convention),
which Ray's client quotes in its exception.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, WebSocket
from fastapi.requests import HTTPConnection
from starlette.websockets import WebSocketDisconnect

from jobyard.api.deps import JobsDep, LogsDep
from jobyard.api.errors import problem_for
from jobyard.api.ray.driver import driver_setup
from jobyard.api.ray.mapping import (
    API_VERSION,
    LOG_LINES_IN_MESSAGE,
    RAY_COMMIT,
    RAY_VERSION,
    last_lines,
    may_have_failed_setup,
)
from jobyard.api.ray.nodes import NodeAddresses
from jobyard.api.ray.runtime_env import PreparedEnv, RuntimeEnvService, TooLarge
from jobyard.api.ray.schemas import SubmitRequest, job_details, read_runtime_env
from jobyard.api.responses import JSONResponse
from jobyard.errors import Conflict, Forbidden, InvalidInput, JobyardError, NotFound, Unauthorized
from jobyard.model import Job, JobSpec, JobState, TerminationReason
from jobyard.service import AuthService, JobQuery, JobRequest, LogQuery, LogService, User


def _error(description: str) -> dict[str, Any]:
    """An error answer in this face's OpenAPI: a JSON string, as Ray's server sends."""
    return {
        "description": description,
        "content": {"application/json": {"schema": {"type": "string"}}},
    }


# The errors any route of this face may answer (a duplicate submission_id is a 400, as Ray's).
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("invalid input, named in the message"),
    401: _error("no token"),
    403: _error("a token jobyard does not know"),
    404: _error("no such job or package (another user's is not found either)"),
}
router = APIRouter(responses=ERRORS)

_ID_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz123456789"  # Ray's: no I l o O 0
_COOKIE = "ray-authentication-token"


def _token(conn: HTTPConnection) -> str | None:
    """Ray's client sends `Authorization: Bearer`; Ray's server also takes these two."""
    for header in ("authorization", "x-ray-authorization"):
        value = conn.headers.get(header, "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return conn.cookies.get(_COOKIE) or None


async def authenticate(conn: HTTPConnection) -> User:
    """No token: 401. A token jobyard does not know: 403 (what Ray's client expects)."""
    auth: AuthService = conn.app.state.auth
    token = _token(conn)
    if token is None:
        raise Unauthorized("authentication required: send 'Authorization: Bearer <token>'")
    try:
        return await auth.authenticate(token)
    except Unauthorized:
        raise Forbidden("authentication failed: the token is not valid") from None


async def _runtime_env(request: Request) -> RuntimeEnvService:
    service: RuntimeEnvService = request.app.state.runtime_env
    return service


async def _nodes(request: Request) -> NodeAddresses:
    nodes: NodeAddresses = request.app.state.node_addresses
    return nodes


RayUser = Annotated[User, Depends(authenticate)]
RuntimeEnvDep = Annotated[RuntimeEnvService, Depends(_runtime_env)]
NodesDep = Annotated[NodeAddresses, Depends(_nodes)]


@contextlib.contextmanager
def ray_not_found(ref: str) -> Iterator[None]:
    """A missing job in Ray's words (job_head.py), whichever service call found it missing."""
    try:
        yield
    except NotFound as exc:
        if exc.field != "job":
            raise
        raise NotFound(f"Job {ref} does not exist", field="job") from None


def both(method: Callable[..., Any], path: str) -> Callable[[Any], Any]:
    """Register a handler at `path` and at `path` + "/" (openYuanrong's and Ray's spellings)."""

    def register(handler: Any) -> Any:
        method(path, include_in_schema=False)(handler)
        return method(path + "/")(handler)

    return register


# ---- version and packages ---------------------------------------------------------------------


@router.head("/api/version", include_in_schema=False)
@router.get("/api/version")
async def version() -> dict[str, str]:
    """No token needed, as on a Ray head (whose auth is off by default): Ray's client asks it
    before anything else, and it tells only which Ray's API this is."""
    return {
        "version": API_VERSION,
        "ray_version": RAY_VERSION,
        "ray_commit": RAY_COMMIT,
        "session_name": "jobyard",
    }


@router.get("/api/packages/{protocol}/{name}")
async def package_exists(
    protocol: str, name: str, user: RayUser, runtime_env: RuntimeEnvDep
) -> Response:
    if runtime_env.has_package(user.name, protocol, name):
        return Response(status_code=200)
    raise NotFound(f"Package {protocol}://{name} does not exist", field="name")


@router.put(
    "/api/packages/{protocol}/{name}", responses={413: _error("larger than max_package_bytes")}
)
async def upload_package(
    protocol: str, name: str, request: Request, user: RayUser, runtime_env: RuntimeEnvDep
) -> Response:
    runtime_env.package_path(user.name, protocol, name)  # a bad name fails before any upload
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > runtime_env.max_package_bytes:
        raise TooLarge(
            f"package is larger than the limit of {runtime_env.max_package_bytes} bytes",
            field="body",
        )
    await runtime_env.store_package(user.name, protocol, name, request.stream())
    return Response(status_code=200)


# ---- jobs -------------------------------------------------------------------------------------


@both(router.post, "/api/jobs")
async def submit_job(
    body: SubmitRequest, user: RayUser, jobs: JobsDep, runtime_env: RuntimeEnvDep
) -> dict[str, str]:
    if not body.entrypoint.strip():
        raise InvalidInput("entrypoint: must not be empty", field="entrypoint")
    env_request, env_vars = read_runtime_env(body.runtime_env or {})
    labels, resources = body.labels(), body.resources()  # refused before anything is unpacked
    submission_id = body.requested_id() or "raysubmit_" + "".join(
        secrets.choice(_ID_ALPHABET) for _ in range(16)
    )
    if env_request.working_dir is None and not env_request.py_modules:
        prepared = runtime_env.prepare(user.name, env_request)  # nothing to unpack: no thread
    else:
        prepared = await asyncio.to_thread(runtime_env.prepare, user.name, env_request)
    try:
        request = JobRequest(
            spec=_spec(body, submission_id, prepared, _environment(env_vars, prepared), resources),
            labels=labels,
            submission_id=submission_id,
        )
        submitted = await jobs.submit(user, request)
    except Conflict as exc:
        runtime_env.discard(prepared)
        raise _duplicate(submission_id) if exc.field == "submission_id" else exc from None
    except InvalidInput as exc:
        runtime_env.discard(prepared)
        raise _in_ray_terms(exc) from None
    except BaseException:
        runtime_env.discard(prepared)
        raise
    if not submitted.created:
        runtime_env.discard(prepared)
        raise _duplicate(submission_id)
    return {"job_id": submitted.job.display_id, "submission_id": submitted.job.submission_id}


def _spec(
    body: SubmitRequest,
    submission_id: str,
    prepared: PreparedEnv,
    env: dict[str, str],
    resources: dict[str, Any],
) -> JobSpec:
    """The core's spec: the entrypoint after Ray's setup step (api.ray.driver)."""
    setup = driver_setup(
        submission_id,
        body.entrypoint,
        env_setup=prepared.setup,
        cpus=body.entrypoint_num_cpus or 0,
    )
    return JobSpec(
        entrypoint=body.entrypoint,
        env=env,
        working_dir=prepared.working_dir,
        runtime_env=body.runtime_env or None,
        resources=resources,
        setup=setup,
    )


_RESOURCE_FIELDS = {
    "resources.cpus": "entrypoint_num_cpus",
    "resources.gpus": "entrypoint_num_gpus",
    "resources.memory": "entrypoint_memory",
}


def _in_ray_terms(exc: InvalidInput) -> InvalidInput:
    """An ask the pool can never meet, named as the client named it. (Ray would wait for an
    autoscaler; this pool cannot grow, so the job could never start.)"""
    field = _RESOURCE_FIELDS.get(exc.field or "")
    if field is None:
        return exc
    problem = exc.message.removeprefix(f"{exc.field}: ")
    return InvalidInput(
        f"{field}: {problem}; this pool cannot grow, so the job could never start",
        field=field,
    )


def _duplicate(submission_id: str) -> InvalidInput:
    return InvalidInput(
        f"Job with submission_id {submission_id} already exists. "
        "Please use a different submission_id.",
        field="submission_id",
    )


def _environment(env_vars: dict[str, str], prepared: PreparedEnv) -> dict[str, str]:
    env = {**env_vars, **prepared.env}
    if "PYTHONPATH" in prepared.env and env_vars.get("PYTHONPATH"):
        env["PYTHONPATH"] = f"{prepared.env['PYTHONPATH']}:{env_vars['PYTHONPATH']}"
    return env


@both(router.get, "/api/jobs")
async def list_jobs(user: RayUser, jobs: JobsDep, logs: LogsDep, nodes: NodesDep) -> Response:
    found: list[Job] = []
    cursor: int | None = None
    while True:
        page = await jobs.list_jobs(user, JobQuery(descending=False, limit=500, cursor=cursor))
        found += page.items
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    addresses = await nodes.of(_node_of(job) for job in found)
    items = []
    for job in found:  # a log is read only where the setup may have failed (Ray says why)
        tail = await _log_tail(logs, user, job) if may_have_failed_setup(job) else None
        items.append(job_details(job, tail, addresses.get(_node_of(job) or "")))
    return JSONResponse(items)


@both(router.get, "/api/jobs/{ref}")
async def get_job(
    ref: str, user: RayUser, jobs: JobsDep, logs: LogsDep, nodes: NodesDep
) -> dict[str, Any]:
    with ray_not_found(ref):
        job = await jobs.get(user, ref)
    tail = None
    if job.state is JobState.FAILED and job.reason is TerminationReason.EXIT_NONZERO:
        tail = await _log_tail(logs, user, job)
    node = _node_of(job)
    return job_details(job, tail, (await nodes.of([node])).get(node or ""))


def _node_of(job: Job) -> str | None:
    return job.tasks[0].node if job.tasks else None


async def _log_tail(logs: LogService, user: User, job: Job) -> str:
    """The last lines of the job's log (those Ray's failure message quotes, and any setup
    failure's reasons before its last line)."""
    query = LogQuery(tail=LOG_LINES_IN_MESSAGE * 2)
    with contextlib.suppress(NotFound):  # deleted meanwhile
        return last_lines(_text(await logs.read(user, job.display_id, query)), query.tail or 0)
    return ""


@router.post("/api/jobs/{ref}/stop")
async def stop_job(ref: str, user: RayUser, jobs: JobsDep) -> dict[str, bool]:
    try:
        with ray_not_found(ref):
            await jobs.stop(user, ref)
    except Conflict as exc:
        if exc.field != "state":
            raise
        return {"stopped": False}  # it had already finished
    return {"stopped": True}


@both(router.delete, "/api/jobs/{ref}")
async def delete_job(
    ref: str, user: RayUser, jobs: JobsDep, runtime_env: RuntimeEnvDep
) -> dict[str, bool]:
    with ray_not_found(ref):
        job = await jobs.get(user, ref)
    if not job.state.is_terminal():
        raise InvalidInput(
            f"Attempted to delete job {ref!r}, but it is in a non-terminal state "
            f"{job_details(job)['status']}.",
            field="status",
        )
    with ray_not_found(ref):
        await jobs.delete(user, ref)
    _release_dirs(runtime_env, job)
    return {"deleted": True}


def _release_dirs(runtime_env: RuntimeEnvService, job: Job) -> None:
    runtime_env.release_working_dir(job.spec.working_dir)
    for path in job.spec.env.get("PYTHONPATH", "").split(":"):
        runtime_env.release_working_dir(path)


@router.get("/api/jobs/{ref}/logs")
async def job_logs(ref: str, user: RayUser, logs: LogsDep) -> dict[str, str]:
    with ray_not_found(ref):
        return {"logs": _text(await logs.read(user, ref, LogQuery()))}


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


# ---- the log tail: a WebSocket of text frames, closed normally (1000) once the job ended --------


@router.websocket("/api/jobs/{ref}/logs/tail")
async def tail_logs(websocket: WebSocket, ref: str) -> None:
    logs = websocket.app.state.logs
    try:
        user = await authenticate(websocket)
        with ray_not_found(ref):
            stream: AsyncIterator[bytes] = await logs.follow(user, ref, LogQuery())
    except JobyardError as exc:  # refused before the upgrade: 401, 403 or 404
        await _deny(websocket, exc)
        return
    await websocket.accept()
    sender = asyncio.create_task(_send_all(websocket, stream))
    watcher = asyncio.create_task(_until_disconnected(websocket))
    done, pending = await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    if sender in done and sender.exception() is None:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close(1000)


async def _send_all(websocket: WebSocket, stream: AsyncIterator[bytes]) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    with contextlib.suppress(NotFound):  # deleted while followed: the tail simply ends
        async for chunk in stream:
            text = decoder.decode(chunk)
            if text:
                await websocket.send_text(text)
    rest = decoder.decode(b"", final=True)
    if rest:
        await websocket.send_text(rest)


async def _until_disconnected(websocket: WebSocket) -> None:
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


async def _deny(websocket: WebSocket, exc: JobyardError) -> None:
    render: Callable[..., Response] = websocket.app.state.render_problem
    send: Callable[[Response], Awaitable[None]] = websocket.send_denial_response
    try:
        await send(render(problem_for(exc)))
    except RuntimeError:  # a server without the denial-response extension
        await websocket.close(1008)
