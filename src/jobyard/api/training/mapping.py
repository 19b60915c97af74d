"""The training face's one home of names: core states -> status names, the envelope, errors,
and the job, pod and event objects of the training-job API.

Status names: Pending (QUEUED), Scheduled (SCHEDULED and STARTING: resources are assigned, the
task is being set up), Running, Stopping, Succeeded, Failed, Stopped. Pods are the job's tasks,
with Kubernetes pod phases: Pending, Running, Succeeded, Failed, Unknown (a lost task).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Literal

from fastapi.responses import Response
from pydantic import BaseModel

from jobyard.api.errors import Problem
from jobyard.api.responses import JSONResponse
from jobyard.errors import InvalidInput
from jobyard.model import Event, Job, JobSpec, JobState, Task, TaskState


class Status(enum.StrEnum):
    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    STOPPING = "Stopping"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    STOPPED = "Stopped"


STATUS: dict[JobState, Status] = {
    JobState.QUEUED: Status.PENDING,
    JobState.SCHEDULED: Status.SCHEDULED,
    JobState.STARTING: Status.SCHEDULED,
    JobState.RUNNING: Status.RUNNING,
    JobState.STOPPING: Status.STOPPING,
    JobState.SUCCEEDED: Status.SUCCEEDED,
    JobState.FAILED: Status.FAILED,
    JobState.STOPPED: Status.STOPPED,
}
CORE_STATES: dict[Status, list[JobState]] = {
    status: [state for state, mapped in STATUS.items() if mapped is status] for status in Status
}
MIB_PER_GIB = 1024

# Validation problems are 422 in the native face; here every bad input is a 400.
_STATUS_CODES = {422: 400}


def core_states(raw: str | None) -> list[JobState]:
    """Status names (case-insensitive, comma-separated) -> core states; unknown is an error."""
    if raw is None or not raw.strip():
        return []
    by_name = {status.value.lower(): status for status in Status}
    states: list[JobState] = []
    for name in (part.strip().lower() for part in raw.split(",")):
        if name not in by_name:
            known = ", ".join(s.value for s in Status)
            raise InvalidInput(f"status must be one of {known}, not {name!r}", field="status")
        states += CORE_STATES[by_name[name]]
    return states


def ok(data: dict[str, Any] | None = None, message: str = "ok") -> dict[str, Any]:
    body: dict[str, Any] = {"success": True, "message": message}
    if data is not None:
        body["data"] = data
    return body


class ErrorDetails(BaseModel):
    code: str
    field: str | None = None


class ErrorAnswer(BaseModel):
    """Every error of this face."""

    success: Literal[False]
    message: str
    details: ErrorDetails


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorAnswer, "description": description}


# The errors any route of this face may answer (a validation problem is a 400 here, not 422).
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("invalid input; details.field names it"),
    401: _error("missing or invalid token"),
    404: _error("no such job or pod (another user's job is not found either)"),
    409: _error("conflicts with the job's state"),
}


def render_problem(problem: Problem) -> Response:
    """`{success: false, message, details: {code, field?}}` with the HTTP status of the error."""
    message = problem.message
    if problem.field and not message.startswith(problem.field):
        message = f"{problem.field}: {message}"
    details: dict[str, Any] = {"code": problem.code}
    if problem.field:
        details["field"] = problem.field
    status = _STATUS_CODES.get(problem.status, problem.status)
    body = {"success": False, "message": message, "details": details}
    return JSONResponse(body, status, problem.headers)


def timestamp(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat().replace("+00:00", "Z")


def job_item(job: Job) -> dict[str, Any]:
    """A job as the list shows it."""
    return {
        "jobId": job.display_id,
        "jobName": job.name,
        "status": STATUS[job.state].value,
        "createdAt": timestamp(job.created_at),
        "startedAt": timestamp(job.started_at),
        "finishedAt": timestamp(job.finished_at),
        "id": job.id,
        "owner": job.owner,
        "queue": job.queue,
        "resourcePoolId": job.pool,
        "priority": job.priority,
        "replicas": job.spec.replicas,
        "image": job.spec.image,
        "reason": job.reason.value if job.reason else None,
        "message": job.pending_message if job.state is JobState.QUEUED else job.message,
        "exitCode": job.exit_code,
    }


def job_detail(job: Job) -> dict[str, Any]:
    return {
        **job_item(job),
        "submissionId": job.submission_id,
        "config": config(job),
        "pods": [pod(task) for task in job.tasks],
        "queuePosition": job.queue_position,
        "retries": len(job.attempts),
    }


def config(job: Job) -> dict[str, Any]:
    """The job's spec in the create body's own vocabulary."""
    spec = job.spec
    res = spec.resources
    return {
        "jobName": job.name,
        "image": spec.image,
        "command": command_of(spec),
        "envs": [{"name": key, "value": value} for key, value in spec.env.items()],
        "workingDir": spec.working_dir,
        "replicas": spec.replicas,
        "resources": {
            "cpus": res.cpus,
            "memory": res.memory / MIB_PER_GIB,
            "gpus": res.gpus,
            "gpuType": res.gpu_model,
        },
        "priority": job.priority,
        "maxRetries": spec.max_retries,
        "timeout": spec.max_runtime,
        "queue": job.queue,
        "resourcePoolId": job.pool,
    }


def command_of(spec: JobSpec) -> list[str]:
    if isinstance(spec.entrypoint, str):
        return ["/bin/sh", "-c", spec.entrypoint]
    return list(spec.entrypoint)


_PHASES = {
    TaskState.PENDING: "Pending",
    TaskState.RUNNING: "Running",
    TaskState.LOST: "Unknown",
}


def pod_status(task: Task) -> str:
    if task.state is TaskState.EXITED:
        return "Succeeded" if task.exit_code == 0 else "Failed"
    return _PHASES[task.state]


def pod(task: Task) -> dict[str, Any]:
    return {
        "podName": task.name,
        "index": task.index,
        "status": pod_status(task),
        "node": task.node,
        "startedAt": timestamp(task.started_at),
        "finishedAt": timestamp(task.finished_at),
        "exitCode": task.exit_code,
    }


def event(item: Event) -> dict[str, Any]:
    return {
        "type": item.type.value,
        "reason": item.reason,
        "message": item.message,
        "timestamp": timestamp(item.timestamp),
    }
