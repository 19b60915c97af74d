"""Pools and queues: what each has, holds, runs and keeps waiting."""

from __future__ import annotations

from fastapi import APIRouter

from jobyard.api.deps import CurrentUser, JobsDep
from jobyard.api.errors import NATIVE_ERRORS
from jobyard.service.jobs import PoolView, QueueView

router = APIRouter(prefix="/api/v1", tags=["scheduling"], responses=NATIVE_ERRORS)


@router.get("/pools", response_model=list[PoolView])
async def list_pools(_user: CurrentUser, jobs: JobsDep) -> list[PoolView]:
    """Capacity and use per pool (GPUs by index and model), running and queued jobs."""
    return await jobs.pool_views()


@router.get("/queues", response_model=list[QueueView])
async def list_queues(_user: CurrentUser, jobs: JobsDep) -> list[QueueView]:
    """Each queue: its pool, priority and limits; running and queued jobs; what it holds."""
    return await jobs.queue_views()
