"""A job's usage samples: GET /api/v1/jobs/{ref}/metrics (docs/observability.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from jobyard.api.deps import CurrentUser
from jobyard.api.errors import NATIVE_ERRORS, described
from jobyard.errors import NotFound
from jobyard.model.usage import JobUsage
from jobyard.service import LogQuery, User
from jobyard.service.usage import UsageService

router = APIRouter(prefix="/api/v1", tags=["jobs"], responses=NATIVE_ERRORS)
_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: described("no such job (or not yours), no such task, or no usage on this server")
}


async def _usage(request: Request) -> UsageService:
    service: UsageService | None = request.app.state.usage
    if service is None:
        raise NotFound("this server keeps no usage figures", field="usage")
    return service


UsageDep = Annotated[UsageService, Depends(_usage)]


@router.get("/jobs/{ref}/metrics", response_model=JobUsage, responses=_RESPONSES)
async def job_metrics(
    ref: str,
    user: CurrentUser,
    usage: UsageDep,
    task: Annotated[str | None, Query(description="task name or index; default every task")] = None,
    last: Annotated[
        int | None, Query(ge=1, le=100_000, description="only the latest N samples of each task")
    ] = None,
) -> JobUsage:
    """Each task's usage samples, oldest first: CPU (cores), resident memory, and each of its
    GPUs' utilisation and memory. Kept after the job ends (the latest `usage_samples` of each
    task); a figure this server cannot measure is null, never 0."""
    return await usage.job_usage(user, ref, task=task, last=last)


async def stamped_log(request: Request, user: User, ref: str, query: LogQuery) -> bytes:
    """`GET .../logs?timestamps=true` (routes.py): the log with each line's time in front."""
    return await (await _usage(request)).stamped_log(user, ref, query)


async def stamped_follow(
    request: Request, user: User, ref: str, query: LogQuery
) -> AsyncIterator[bytes]:
    """`GET .../logs?timestamps=true&follow=true`: the followed log, each line stamped."""
    return await (await _usage(request)).stamped_follow(user, ref, query)
