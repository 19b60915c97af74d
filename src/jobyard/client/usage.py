"""A job's usage samples as the SDK returns them (GET /api/v1/jobs/{ref}/metrics), and the
Call that asks for them. A figure the server could not measure is None, never 0."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from jobyard.client import calls
from jobyard.client.calls import Call, JobRef


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class GpuUsage(_Model):
    index: int
    utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int


class UsageSample(_Model):
    timestamp: datetime
    cpu_cores: float | None = None
    memory_rss_bytes: int | None = None
    gpus: list[GpuUsage] | None = None  # [] the task has no GPU; None: no GPU figures


class TaskUsage(_Model):
    index: int
    name: str
    samples: list[UsageSample]


class JobUsage(_Model):
    job_id: int
    display_id: str
    interval_seconds: float
    tasks: list[TaskUsage]


def job_metrics(
    ref: JobRef, *, task: str | int | None = None, last: int | None = None
) -> Call[JobUsage]:
    """Each task's samples, oldest first (one task if named; the latest `last` of each)."""
    given = {"task": task, "last": last}
    params = tuple((key, str(value)) for key, value in given.items() if value is not None)
    # calls.py's path and parser helpers, shared by every Call of the package
    return Call("GET", calls._job_path(ref, "/metrics"), calls._model(JobUsage), params=params)
