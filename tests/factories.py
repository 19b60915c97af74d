"""Plain factory functions for model objects (no magic)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jobyard.model import Job, JobSpec, JobState, Task, TaskState
from jobyard.model.job import task_name

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
