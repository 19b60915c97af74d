"""The Ray face's one home of names: core states -> Ray JobStatus, messages, error types, times,
node ids, and metadata keys <-> job labels.

STOPPING maps to RUNNING, not STOPPED: a stop can still end FAILED (a worker failed, the
runtime ran out), and a Ray client takes a terminal status as final. `ray job stop` polls on
until the job really is STOPPED.

A job whose runtime_env could not be set up ended in its setup step, with exit code
SETUP_FAILED_EXIT and SETUP_FAILED as its log's last line (model.setup): Ray calls
that RUNTIME_ENV_SETUP_FAILURE, with no driver and no driver exit code.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import math
from datetime import datetime

from jobyard.model import Job, JobState, TerminationReason
from jobyard.model.job import check_labels
from jobyard.model.setup import SETUP_FAILED, SETUP_FAILED_EXIT


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

RUNTIME_ENV_SETUP_FAILURE = "RUNTIME_ENV_SETUP_FAILURE"

# The Ray release whose job API this face speaks (and its commit, as Ray's /api/version says
# it): `version` 4 has DELETE; ray_version >= 2.8 lets clients ask for memory.
API_VERSION = "4"
RAY_VERSION = "2.60.0"
RAY_COMMIT = "b7f4259e944bf6959f721b106adc366ddfa0c356"
LOG_LINES_IN_MESSAGE = 10
SETTING_UP = "Runtime env is setting up."  # Ray's first line of a job's log (job_manager.py)
_SETUP_FAILED_MESSAGE = "runtime_env setup failed: Failed to set up runtime environment."


def status_of(job: Job) -> RayStatus:
    return STATUS[job.state]


def millis(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def may_have_failed_setup(job: Job) -> bool:
    """Whether a job may have ended in its runtime_env setup (its log tail tells for sure)."""
    return (
        job.state is JobState.FAILED
        and job.reason is TerminationReason.EXIT_NONZERO
        and job.exit_code == SETUP_FAILED_EXIT
    )


def setup_failure(job: Job, log_tail: str | None) -> str | None:
    """Why the job's runtime_env could not be set up (the lines its setup step wrote before
    SETUP_FAILED), or None if it got as far as its entrypoint."""
    if log_tail is None or not may_have_failed_setup(job):
        return None
    lines = log_tail.rstrip("\n").splitlines()
    if not lines or lines[-1] != SETUP_FAILED:
        return None
    lines = lines[:-1]
    begun = [i for i, line in enumerate(lines) if line.endswith(SETTING_UP)]
    if begun:  # only what the setup said
        lines = lines[begun[-1] + 1 :]
    return "\n".join(lines[-LOG_LINES_IN_MESSAGE:])


def error_type(job: Job, log_tail: str | None = None) -> str:
    """Ray's JobErrorType of a failed job; "" otherwise (as the seed writes it)."""
    if job.state is not JobState.FAILED:
        return ""
    if setup_failure(job, log_tail) is not None:
        return RUNTIME_ENV_SETUP_FAILURE
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
    return _failed(job, log_tail)


def _failed(job: Job, log_tail: str | None) -> str:
    why = setup_failure(job, log_tail)
    if why is not None:
        return f"{_SETUP_FAILED_MESSAGE}\n{why}" if why else _SETUP_FAILED_MESSAGE
    if job.reason is TerminationReason.EXIT_NONZERO and job.exit_code is not None:
        text = f"Job entrypoint command failed with exit code {job.exit_code}"
        if log_tail is None:
            return text + "."
        return f"{text}, last available logs (truncated to 20,000 chars):\n{log_tail}"
    return f"Job failed: {job.message}" if job.message else "Job failed."


def last_lines(text: str, count: int = LOG_LINES_IN_MESSAGE) -> str:
    return "\n".join(text.splitlines()[-count:])[-20_000:]


def omp_num_threads(cpus: float) -> int:
    """What Ray's supervisor leaves in OMP_NUM_THREADS when it is not set: the whole CPUs the
    driver holds, at least 1 (also when it asked for none)."""
    return max(math.floor(cpus), 1)


def node_id(node: str) -> str:
    """A stable id of a node, in the shape of Ray's (56 hex digits)."""
    return hashlib.sha224(node.encode()).hexdigest()


# ---- metadata <-> labels: Ray takes any string as a metadata key, a label key is narrower ------

_ENCODED = "ray.metadata.k"  # + the key's UTF-8 in lower-case base32, unpadded
MAX_LABEL_KEY = 128


def _is_label_key(key: str) -> bool:
    try:
        check_labels({key: ""})
    except ValueError:
        return False
    return True


def label_key(key: str) -> str:
    """A metadata key as a label key: as it is where it is one, else encoded (reversibly)."""
    if _is_label_key(key) and not key.startswith(_ENCODED[:-1]):
        return key
    return _ENCODED + base64.b32encode(key.encode()).decode().rstrip("=").lower()


def metadata_key(label: str) -> str:
    """The metadata key a label key stands for (label_key's inverse)."""
    if not label.startswith(_ENCODED):
        return label
    body = label.removeprefix(_ENCODED).upper()
    try:
        return base64.b32decode(body + "=" * (-len(body) % 8)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return label


def metadata_of(labels: dict[str, str]) -> dict[str, str]:
    return {metadata_key(key): value for key, value in labels.items()}
