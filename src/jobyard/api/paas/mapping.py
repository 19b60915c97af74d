"""The PaaS face's one home of names: core states -> numeric states, the state log, error codes,
the GPU names it offers.

The original's numeric states: 6 initialising, 1 queued, 2 scheduled, 3 running, 5 cancelling,
4 finished. The core never shows a job before it is queued (it is accepted and queued in one
transaction), so 6 is the first entry of every state log, synthesised from `created_at`, and
never a current status. STARTING is 2: resources are assigned and the task is being set up;
3 means the program runs. A job the core stops before it started goes QUEUED (or SCHEDULED)
-> STOPPED in one step; the face shows the cancel as 5 then 4, as the original does.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from fastapi.responses import JSONResponse, Response

from jobyard.api.errors import Problem
from jobyard.model import Job, JobState, PortProtocol, TerminationReason
from jobyard.model.capacity import GpuInfo


class Status(enum.IntEnum):
    QUEUED = 1
    SCHEDULED = 2
    RUNNING = 3
    FINISHED = 4
    CANCELLING = 5
    INITIALISING = 6


STATUS: dict[JobState, Status] = {
    JobState.QUEUED: Status.QUEUED,
    JobState.SCHEDULED: Status.SCHEDULED,
    JobState.STARTING: Status.SCHEDULED,
    JobState.RUNNING: Status.RUNNING,
    JobState.STOPPING: Status.CANCELLING,
    JobState.SUCCEEDED: Status.FINISHED,
    JobState.FAILED: Status.FINISHED,
    JobState.STOPPED: Status.FINISHED,
}

# The core states behind each numeric state (a count per numeric state is a count of these).
CORE_STATES: dict[Status, list[JobState]] = {
    status: [state for state, mapped in STATUS.items() if mapped is status] for status in Status
}

PROTOCOL: dict[int, PortProtocol] = {1: PortProtocol.SSH, 2: PortProtocol.HTTP}
PROTOCOL_NUMBER: dict[PortProtocol, int] = {value: key for key, value in PROTOCOL.items()}

# The gpuName every server offers beside its GPUs' models: a job that uses no GPU.
CPU_GPU_NAME = "cpu"


def gpu_names(gpus: Sequence[GpuInfo]) -> list[str]:
    """The gpuName values this server offers: each model of its GPUs once, then `cpu`."""
    return [*dict.fromkeys(gpu.model for gpu in gpus), CPU_GPU_NAME]


class Code(enum.IntEnum):
    """The `code` of every answer. Failures still leave with HTTP 200, as on the original."""

    OK = 0
    FAILED = 1  # anything else: a conflict (cancelling a finished job), an internal error
    PARAM_ILLEGAL = 6  # an invalid parameter; msg names it
    JOB_NOT_FOUND = 404  # no such job id, or another user's job
    TOKEN_FAILED = 176  # a missing or invalid token


_CODES: dict[str, Code] = {
    "unauthorized": Code.TOKEN_FAILED,
    "forbidden": Code.TOKEN_FAILED,
    "invalid": Code.PARAM_ILLEGAL,
    "invalid_json": Code.PARAM_ILLEGAL,
    "unsupported": Code.PARAM_ILLEGAL,
    "not_found": Code.JOB_NOT_FOUND,
}
_PREFIX: dict[Code, str] = {
    Code.TOKEN_FAILED: "check jwt token failed",
    Code.PARAM_ILLEGAL: "param illegal",
}


def code_of(problem: Problem) -> Code:
    if problem.status == 405:
        return Code.FAILED
    return _CODES.get(problem.code, Code.FAILED)


def render_problem(problem: Problem) -> Response:
    """`{code, msg}` with HTTP 200; msg says what is wrong (the field first, when known)."""
    code = code_of(problem)
    message = problem.message
    if code is Code.PARAM_ILLEGAL and problem.field and not message.startswith(problem.field):
        message = f"{problem.field}: {message}"
    prefix = _PREFIX.get(code)
    msg = f"{prefix}: {message}" if prefix else message
    return JSONResponse({"code": int(code), "msg": msg}, 200, problem.headers)


def status_of(job: Job) -> Status:
    return STATUS[job.state]


def seconds(moment: datetime) -> dict[str, int]:
    return {"seconds": int(moment.timestamp())}


def state_log(job: Job) -> list[dict[str, Any]]:
    """The job's transitions as numeric states, each with its own increasing id.

    Core entry k becomes id 2k; a synthesised entry takes the odd id just below the entry it
    precedes (6 before the first, 5 before a STOPPED that had no STOPPING), so ids stay unique
    and increasing across all jobs. Consecutive entries of one numeric state (SCHEDULED then
    STARTING) show once."""
    entries: list[dict[str, Any]] = []
    if job.state_log:
        first = job.state_log[0].id
        entries.append(_entry(job, 2 * first - 1, Status.INITIALISING, job.created_at))
    for item in job.state_log:
        status = STATUS[item.state]
        last = entries[-1]["status"] if entries else None
        if item.state is JobState.STOPPED and last != Status.CANCELLING:
            cancelled = job.stop_requested_at or item.timestamp
            entries.append(_entry(job, 2 * item.id - 1, Status.CANCELLING, cancelled))
            last = Status.CANCELLING
        if status != last:
            entries.append(_entry(job, 2 * item.id, status, item.timestamp))
    return entries


def _entry(job: Job, entry_id: int, status: Status, moment: datetime) -> dict[str, Any]:
    return {"id": entry_id, "status": int(status), "ts": seconds(moment), "sourceId": job.id}


def description(job: Job) -> str:
    """`desc`: why a queued job waits; how a finished one ended (reason and exit code)."""
    if job.state is JobState.QUEUED:
        return str(getattr(job, "pending_message", "") or "")
    if not job.state.is_terminal():
        return ""
    parts = [job.state.value]
    if job.reason is not None and job.reason is not TerminationReason.SUCCEEDED:
        parts[0] += f" ({job.reason.value})"
    if job.exit_code is not None:
        parts.append(f"exit code {job.exit_code}")
    text = ", ".join(parts)
    return f"{text}: {job.message}" if job.message else text
