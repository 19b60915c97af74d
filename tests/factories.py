"""Plain factory functions for model objects (no magic)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

from jobyard.model import Job, JobSpec, JobState, Task, TaskState
from jobyard.model.job import task_name
from jobyard.store.jobs import NewJob

_NOW = datetime(2026, 1, 1, tzinfo=UTC)


def make_job(
    job_id: int = 1,
    *,
    state: JobState = JobState.QUEUED,
    priority: int = 0,
    tasks: list[Task] | None = None,
    **spec: Any,
) -> Job:
    job_spec = JobSpec(**{"entrypoint": "true", **spec})
    display = f"job{job_id:03d}"
    return Job(
        id=job_id,
        display_id=display,
        submission_id=f"s{job_id}",
        name="t",
        owner="alice",
        queue="default",
        pool="local",
        priority=priority,
        labels={},
        spec=job_spec,
        state=state,
        created_at=_NOW,
        updated_at=_NOW,
        tasks=tasks
        if tasks is not None
        else [Task(index=i, name=task_name(display, i)) for i in range(job_spec.replicas)],
    )


def exited(index: int, code: int, name: str = "t") -> Task:
    return Task(
        index=index,
        name=f"{name}-worker-{index}",
        state=TaskState.EXITED,
        exit_code=code,
        handle={"pid": 1},
    )


def running(index: int, name: str = "t") -> Task:
    return Task(
        index=index, name=f"{name}-worker-{index}", state=TaskState.RUNNING, handle={"pid": 1}
    )


def new_job(
    *,
    owner: str = "alice",
    submission_id: str | None = None,
    name: str = "train",
    queue: str = "default",
    pool: str = "default",
    priority: int = 0,
    labels: dict[str, str] | None = None,
    spec: JobSpec | None = None,
) -> NewJob:
    """A submission as the store takes it (what JobService.submit hands to insert_job)."""
    return NewJob(
        owner=owner,
        submission_id=submission_id or f"sub-{uuid.uuid4().hex}",
        request_hash=hashlib.sha256(name.encode()).hexdigest(),
        name=name,
        queue=queue,
        pool=pool,
        priority=priority,
        labels=labels or {},
        spec=spec or JobSpec(entrypoint="echo hello"),
    )
