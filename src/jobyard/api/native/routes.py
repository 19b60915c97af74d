"""Thin handlers: parse, make one core call, render."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from jobyard import __version__
from jobyard.api.bounds import MAX_ID, MAX_OFFSET
from jobyard.api.deps import CurrentUser, JobsDep, LogsDep
from jobyard.api.errors import NATIVE_ERRORS, described
from jobyard.api.native.schemas import (
    EventList,
    JobCreate,
    JobList,
    JobPublic,
    job_response,
    page_response,
)
from jobyard.api.native.usage import stamped_follow, stamped_log
from jobyard.errors import InvalidInput
from jobyard.model import JobState
from jobyard.service import JobQuery, LogQuery

router = APIRouter(prefix="/api/v1", responses=NATIVE_ERRORS)
_JOB_RESPONSES: dict[int | str, dict[str, Any]] = {404: described("no such job (or not yours)")}


@router.get("/health", tags=["meta"])
async def health() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get("/whoami", tags=["meta"])
async def whoami(user: CurrentUser) -> dict[str, Any]:
    return {"name": user.name, "admin": user.is_admin}


@router.post(
    "/jobs",
    tags=["jobs"],
    status_code=201,
    response_model=JobPublic,
    responses={
        200: {"model": JobPublic, "description": "same submission_id and body: the existing job"},
        409: described("submission_id already used for another body"),
        429: described("a configured limit is reached (max_live_jobs_per_user)"),
    },
)
async def submit_job(body: JobCreate, user: CurrentUser, jobs: JobsDep) -> Response:
    submitted = await jobs.submit(user, body.to_request())
    return job_response(submitted.job, 201 if submitted.created else 200)


def _states(raw: list[str]) -> list[JobState]:
    try:
        return [JobState(s.strip().upper()) for item in raw for s in item.split(",") if s.strip()]
    except ValueError:
        known = ", ".join(s.value for s in JobState)
        raise InvalidInput(f"state: must be one of {known}", field="state") from None


def _cursor(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 10 or int(raw) > MAX_ID:
        raise InvalidInput("cursor: not a cursor returned by this API", field="cursor")
    return int(raw)


@router.get("/jobs", tags=["jobs"], response_model=JobList)
async def list_jobs(
    user: CurrentUser,
    jobs: JobsDep,
    state: Annotated[list[str], Query(description="state(s), repeated or comma-separated")] = [],  # noqa: B006
    queue: str | None = None,
    owner: str | None = None,
    q: Annotated[str | None, Query(max_length=256, description="name substring")] = None,
    label: Annotated[list[str], Query(description="key=value or key; repeatable")] = [],  # noqa: B006
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Response:
    labels = [(k, v if sep else None) for k, sep, v in (item.partition("=") for item in label)]
    query = JobQuery(
        states=_states(state),
        queue=queue,
        owner=owner,
        name_contains=q,
        labels=labels,
        descending=order == "desc",
        limit=limit,
        cursor=_cursor(cursor),
    )
    page = await jobs.list_jobs(user, query, page_field="limit")
    return page_response(page.items, page.next_cursor, page.total)


@router.get("/jobs/{ref}", tags=["jobs"], response_model=JobPublic, responses=_JOB_RESPONSES)
async def get_job(ref: str, user: CurrentUser, jobs: JobsDep) -> Response:
    return job_response(await jobs.get(user, ref))


@router.post(
    "/jobs/{ref}/stop",
    tags=["jobs"],
    status_code=202,
    response_model=JobPublic,
    responses={**_JOB_RESPONSES, 409: described("the job already finished")},
)
async def stop_job(ref: str, user: CurrentUser, jobs: JobsDep) -> Response:
    return job_response(await jobs.stop(user, ref), 202)


@router.delete(
    "/jobs/{ref}",
    tags=["jobs"],
    status_code=204,
    responses={**_JOB_RESPONSES, 409: described("live job without force=true")},
)
async def delete_job(ref: str, user: CurrentUser, jobs: JobsDep, force: bool = False) -> Response:
    await jobs.delete(user, ref, force=force)
    return Response(status_code=204)


@router.get("/jobs/{ref}/events", tags=["jobs"], response_model=EventList, responses=_JOB_RESPONSES)
async def job_events(ref: str, user: CurrentUser, jobs: JobsDep) -> EventList:
    return EventList(items=await jobs.events(user, ref))


@router.get(
    "/jobs/{ref}/logs",
    tags=["jobs"],
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "the task's output"},
        **_JOB_RESPONSES,
    },
)
async def job_logs(
    request: Request,
    ref: str,
    user: CurrentUser,
    logs: LogsDep,
    task: Annotated[str | None, Query(description="task name or index; default the first")] = None,
    tail: Annotated[int | None, Query(ge=0, le=1_000_000, description="last N lines")] = None,
    offset: Annotated[
        int | None, Query(ge=0, le=MAX_OFFSET, description="byte offset to start from")
    ] = None,
    follow: bool = False,
    timestamps: Annotated[
        bool, Query(description="each line behind the time jobyard first saw it (RFC 3339)")
    ] = False,
) -> Response:
    query = LogQuery(task=task, offset=offset, tail=tail)
    media = "text/plain; charset=utf-8"
    if timestamps and follow:
        stamped = await stamped_follow(request, user, ref, query)
        return StreamingResponse(stamped, media_type=media)
    if timestamps:
        return Response(await stamped_log(request, user, ref, query), media_type=media)
    if follow:
        return StreamingResponse(await logs.follow(user, ref, query), media_type=media)
    return Response(await logs.read(user, ref, query), media_type=media)
