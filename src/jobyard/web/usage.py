"""What the dashboard's usage charts and its log view's Timestamps read: a job's samples (as
GET /api/v1/jobs/{ref}/metrics answers them) and its stamped log tail, for the signed-in user
(the owner or an admin; 404 for anyone else)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from jobyard.errors import NotFound
from jobyard.service import LogQuery
from jobyard.service.usage import UsageService
from jobyard.web.session import SessionUser

router = APIRouter(prefix="/ui/api", include_in_schema=False)


@router.get("/jobs/{ref}/metrics")
async def job_metrics(
    request: Request,
    ref: str,
    user: SessionUser,
    task: str | None = None,
    last: Annotated[int | None, Query(ge=1, le=100_000)] = None,
) -> dict[str, Any]:
    usage: UsageService | None = request.app.state.usage
    if usage is None:
        raise NotFound("this server keeps no usage figures", field="usage")
    found = await usage.job_usage(user, ref, task=task, last=last)
    return found.model_dump(mode="json")


@router.get("/jobs/{ref}/logs/stamped")
async def job_log_stamped(
    request: Request,
    ref: str,
    user: SessionUser,
    task: str | None = None,
    tail: Annotated[int | None, Query(ge=0, le=100_000)] = None,
) -> Response:
    """The log view's Timestamps: the tail, each line behind the time jobyard first saw it."""
    usage: UsageService | None = request.app.state.usage
    if usage is None:
        raise NotFound("this server keeps no log timestamps", field="timestamps")
    text = await usage.stamped_log(user, ref, LogQuery(task=task, tail=tail))
    return Response(text, media_type="text/plain; charset=utf-8")
