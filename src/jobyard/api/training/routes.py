"""The training-job API under /api/jobs: thin handlers, one core call each."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from jobyard.api.deps import CurrentUser, JobsDep, LogsDep
from jobyard.api.terminal import terminal_url
from jobyard.api.training.mapping import ERRORS, STATUS, event, job_detail, job_item, ok
from jobyard.api.training.schemas import JobCreateBody, parse_list_query
from jobyard.errors import ExecutorRefused, InvalidInput, JobyardError, NotFound
from jobyard.service import LogQuery
from jobyard.service.terminals import TerminalTokens

router = APIRouter(prefix="/api/jobs", tags=["training"], responses=ERRORS)

# The core's field names, as this face's clients know them.
_FIELDS = {
    "entrypoint": "command",
    "env": "envs",
    "max_runtime": "timeout",
    "max_retries": "maxRetries",
    "working_dir": "workingDir",
    "name": "jobName",
    "pool": "resourcePoolId",
    "gpu_model": "resources.gpuType",
    "gpus": "resources.gpus",
    "cpus": "resources.cpus",
    "memory": "resources.memory",
    "memory_mib": "resources.memory",
    "resources.gpu_model": "resources.gpuType",
}


def _face_field(field: str | None) -> str | None:
    if field is None:
        return None
    field = field.removeprefix("spec.")
    return _FIELDS.get(field, field)


def _in_face_terms(exc: JobyardError) -> JobyardError:
    field = _face_field(exc.field)
    if field == exc.field:
        return exc
    message = exc.message
    if exc.field and message.startswith(exc.field):
        message = f"{field}{message[len(exc.field) :]}"
    return type(exc)(message, field=field)


def _invalid(exc: ValidationError) -> InvalidInput:
    first = exc.errors()[0]
    field = _face_field(".".join(str(part) for part in first.get("loc", ())) or None)
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return InvalidInput(f"{field}: {message}" if field else message, field=field)


async def _terminals(request: Request) -> TerminalTokens:
    tokens: TerminalTokens = request.app.state.terminals
    return tokens


TerminalsDep = Annotated[TerminalTokens, Depends(_terminals)]


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}", field="body") from None
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object", field="body")
    return body


@router.post("")
async def list_jobs(request: Request, user: CurrentUser, jobs: JobsDep) -> dict[str, Any]:
    """`{keyword, status, pageNumber, pageSize}` in the JSON body or the query string."""
    try:
        query = parse_list_query(dict(request.query_params), await _json_object(request))
    except ValidationError as exc:
        raise _invalid(exc) from None
    page = await jobs.list_jobs(user, query.to_query(), page_field="pageSize")
    return ok(
        {
            "jobs": [job_item(job) for job in page.items],
            "totalCount": page.total,
            "pageNumber": query.pageNumber,
            "pageSize": query.pageSize,
        }
    )


@router.post("/create")
async def create_job(body: JobCreateBody, user: CurrentUser, jobs: JobsDep) -> dict[str, Any]:
    try:
        submitted = await jobs.submit(user, body.to_request())
    except ValidationError as exc:
        raise _invalid(exc) from None
    except JobyardError as exc:
        raise _in_face_terms(exc) from None
    job = submitted.job
    return ok({"jobId": job.display_id, "jobName": job.name, "id": job.id}, "训练任务创建成功")


@router.get("/{job_id}")
async def get_job(job_id: str, user: CurrentUser, jobs: JobsDep) -> dict[str, Any]:
    return ok(job_detail(await jobs.get(user, job_id)))


@router.post("/{job_id}/stop")
async def stop_job(job_id: str, user: CurrentUser, jobs: JobsDep) -> dict[str, Any]:
    job = await jobs.stop(user, job_id)
    return ok({"jobId": job.display_id, "status": STATUS[job.state].value}, "任务已停止")


@router.delete("/{job_id}")
async def delete_job(job_id: str, user: CurrentUser, jobs: JobsDep) -> dict[str, Any]:
    """Deletes the job whatever its state (a live one is killed first), as the platform does."""
    await jobs.delete(user, job_id, force=True)
    return ok(message="任务已删除")


@router.get("/{job_id}/events")
async def job_events(job_id: str, user: CurrentUser, jobs: JobsDep) -> dict[str, Any]:
    return ok({"events": [event(item) for item in await jobs.events(user, job_id)]})


async def _until_deleted(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A followed log ends quietly if its job is deleted while it streams."""
    try:
        async for chunk in stream:
            yield chunk
    except NotFound:
        return


@router.get("/{job_id}/pods/{pod_name}/logs", response_model=None)
async def pod_logs(
    job_id: str,
    pod_name: str,
    user: CurrentUser,
    logs: LogsDep,
    tail_lines: Annotated[int | None, Query(alias="tailLines", ge=0, le=1_000_000)] = None,
    follow: bool = False,
) -> dict[str, Any] | Response:
    """The pod's log as `data.logs`; with follow=true, a text/plain stream of its output as it
    is written, until the pod ends or the client goes away."""
    query = LogQuery(task=pod_name, tail=tail_lines)
    if follow:
        stream = _until_deleted(await logs.follow(user, job_id, query))
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        return StreamingResponse(stream, media_type="text/plain; charset=utf-8", headers=headers)
    text = (await logs.read(user, job_id, query)).decode("utf-8", errors="replace")
    return ok({"logs": text})


@router.get("/{job_id}/pods/{pod_name}/webterminal")
async def web_terminal(
    job_id: str,
    pod_name: str,
    request: Request,
    user: CurrentUser,
    jobs: JobsDep,
    terminals: TerminalsDep,
) -> dict[str, Any]:
    """A ws:// URL with a single-use token (valid `terminal_token_ttl_seconds`) that opens a
    shell in the running pod; see jobyard.api.terminal for the wire protocol."""
    if not jobs.supports("shell"):
        raise ExecutorRefused("this server's executor cannot open a terminal into a pod")
    job, _ = await jobs.shell(user, job_id, pod_name)
    task = next(t for t in job.tasks if pod_name in (t.name, str(t.index)))
    token = await terminals.issue(user, str(job.id), task.name)
    return ok({"webTerminalUrl": terminal_url(request, token), "expiresIn": terminals.ttl})
