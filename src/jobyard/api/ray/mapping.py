"""The Ray face's one home of names: core states -> Ray JobStatus, messages, error types, times.

STOPPING maps to RUNNING, not STOPPED: a stop can still end FAILED (a worker failed, the
runtime ran out), and a Ray client takes a terminal status as final. `ray job stop` polls on
until the job really is STOPPED.
"""

from __future__ import annotations

import enum
from datetime import datetime

from jobyard.model import Job, JobState, TerminationReason


class RayStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


STATUS: dict[JobState, RayStatus] = {
    JobState.QUEUED: RayStatus.PENDING,
    JobState.SCHEDULED: RayStatus.PENDING,
    JobState.STARTING: RayStatus.PENDING,
    JobState.RUNNING: RayStatus.RUNNING,
    JobState.STOPPING: RayStatus.RUNNING,
    JobState.SUCCEEDED: RayStatus.SUCCEEDED,
    JobState.FAILED: RayStatus.FAILED,
    JobState.STOPPED: RayStatus.STOPPED,
}

ERROR_TYPE: dict[TerminationReason, str] = {
    TerminationReason.EXIT_NONZERO: "JOB_ENTRYPOINT_COMMAND_ERROR",
    TerminationReason.START_FAILED: "JOB_ENTRYPOINT_COMMAND_START_ERROR",
    TerminationReason.LOST: "JOB_SUPERVISOR_ACTOR_DIED",
    TerminationReason.MAX_RUNTIME_EXCEEDED: "JOB_MAX_RUNTIME_EXCEEDED",
}

# Ray's versions: `version` 4 has DELETE; ray_version >= 2.8 lets clients ask for memory.
API_VERSION = "4"
RAY_VERSION = "2.60.0+jobyard"
LOG_LINES_IN_MESSAGE = 10


def status_of(job: Job) -> RayStatus:
    return STATUS[job.state]


def millis(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def error_type(job: Job) -> str:
    """Ray's JobErrorType of a failed job; "" otherwise (as the seed writes it)."""
    if job.state is not JobState.FAILED:
        return ""
    return ERROR_TYPE.get(
        job.reason or TerminationReason.EXIT_NONZERO, "JOB_ENTRYPOINT_COMMAND_ERROR"
    )


def message(job: Job, log_tail: str | None = None) -> str:
    """Ray's message for the job's status; a failed job says why, with its last log lines."""
    status = status_of(job)
    if status is RayStatus.PENDING:
        text = "Job has not started yet."
        if job.spec.resources.cpus or job.spec.resources.gpus or job.spec.resources.memory:
            text += (
                " It may be waiting for resources (CPUs, GPUs, memory, custom resources) to "
                "become available."
            )
        if job.spec.runtime_env:
            text += " It may be waiting for the runtime environment to be set up."
        return text
    if status is RayStatus.RUNNING:
        if job.state is JobState.STOPPING:
            return "Job is being stopped."
        return "Job is currently running."
    if status is RayStatus.STOPPED:
        return "Job was intentionally stopped."
    if status is RayStatus.SUCCEEDED:
        return "Job finished successfully."
    if job.reason is TerminationReason.EXIT_NONZERO and job.exit_code is not None:
        text = f"Job entrypoint command failed with exit code {job.exit_code}"
        if log_tail is None:
            return text + "."
        return f"{text}, last available logs (truncated to 20,000 chars):\n{log_tail}"
    return f"Job failed: {job.message}" if job.message else "Job failed."


def last_lines(text: str, count: int = LOG_LINES_IN_MESSAGE) -> str:
    return "\n".join(text.splitlines()[-count:])[-20_000:]
