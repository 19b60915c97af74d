"""The dashboard's usage charts read this: a job's samples, as GET /api/v1/jobs/{ref}/metrics
answers them, for the signed-in user (the owner or an admin; 404 for anyone else)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from jobyard.errors import NotFound
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
