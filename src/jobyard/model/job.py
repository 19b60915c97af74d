"""Job, JobSpec, Task, Resources and Placement: what a user asked for and what happened to it."""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from jobyard.model.registry import RegistryLogin
from jobyard.model.state import JobState

MAX_ENTRYPOINT_BYTES = 64 * 1024
MAX_ENV_BYTES = 256 * 1024
MAX_ENV_VARS = 4096
MAX_NAME_LENGTH = 256
MAX_REPLICAS = 1024
# An env key must be a shell name: a job starts under /bin/sh (its supervisor, and `sh -c` for a
# string entrypoint), and dash drops every other variable, so such a key would never reach it.
# (This also keeps out '=', NUL and the empty key.)
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SUBMISSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
_NAME = re.compile(rf"^[^\x00-\x1f]{{1,{MAX_NAME_LENGTH}}}$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_./-]{0,126}[A-Za-z0-9])?$")
_QUEUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_MEMORY_UNITS: dict[str, float] = {"": 1, "K": 1 / 2**10, "M": 1, "G": 2**10, "T": 2**20}


class TerminationReason(enum.StrEnum):
    EXIT_NONZERO = "EXIT_NONZERO"
    STOPPED_BY_USER = "STOPPED_BY_USER"
    MAX_RUNTIME_EXCEEDED = "MAX_RUNTIME_EXCEEDED"
    START_FAILED = "START_FAILED"
    # The container image could not be pulled (or no registry has it): Kubernetes' ErrImagePull.
    IMAGE_PULL_FAILED = "IMAGE_PULL_FAILED"
    LOST = "LOST"
    SUCCEEDED = "SUCCEEDED"
    IDLE_GPU = "IDLE_GPU"  # its GPUs stayed idle for idle_gpu_timeout (docs/observability.md)

    def final_state(self) -> JobState:
        """The terminal state a job reaches when it ends for this reason."""
        if self is TerminationReason.SUCCEEDED:
            return JobState.SUCCEEDED
        if self is TerminationReason.STOPPED_BY_USER:
            return JobState.STOPPED
        return JobState.FAILED


class TaskState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    EXITED = "EXITED"
    LOST = "LOST"

    def is_finished(self) -> bool:
        return self in (TaskState.EXITED, TaskState.LOST)


def parse_memory_mib(value: Any) -> int:
    """Memory as MiB: a bare number is MiB; a string may carry a binary unit (512M, 4GiB, 1.5G).

    K, M, G and T are read as KiB, MiB, GiB and TiB (with or without 'i' and 'B'); 'B' is bytes.
    """
    if isinstance(value, bool):
        raise ValueError("must be an integer (MiB) or a size such as '4GiB'")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return _whole(value)
    match = _MEMORY.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError("must be an integer (MiB) or a size such as '4GiB'")
    unit = (match.group(2) or "").upper()
    factor = 1 / 2**20 if unit == "B" else _MEMORY_UNITS[unit[:1]]
    return _whole(float(match.group(1)) * factor)


def _whole(mib: float) -> int:
    """int(mib), refusing infinity and NaN (int() would raise OverflowError, not ValueError)."""
    if not math.isfinite(mib):
        raise ValueError("must be a finite size")
    return int(mib)


class Resources(BaseModel):
    """What one replica needs. Zero means 'no reservation' (as a Ray driver's num_cpus=0)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: Annotated[float, Field(ge=0, le=4096)] = 0
    memory: Annotated[int, Field(ge=0, description="MiB; strings such as '4GiB' accepted")] = 0
    gpus: Annotated[int, Field(ge=0, le=64)] = 0
    gpu_model: Annotated[str | None, Field(max_length=128)] = None

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> int:
        return parse_memory_mib(value)


def _check_env(env: dict[str, str]) -> dict[str, str]:
    if len(env) > MAX_ENV_VARS:
        raise ValueError(f"env has more than {MAX_ENV_VARS} variables")
    size = 0
    for key, value in env.items():
        if not _ENV_KEY.fullmatch(key):
            raise ValueError(
                f"env key {key!r} is not a shell variable name (ASCII letters, digits and _, "
                "not starting with a digit): jobs start under /bin/sh, which drops such "
                "variables, so the job would never see it"
            )
        if "\x00" in value:
            raise ValueError(f"env value of {key!r} must not contain NUL")
        size += len(key) + len(value)
    if size > MAX_ENV_BYTES:
        raise ValueError(f"env is larger than {MAX_ENV_BYTES} bytes")
    return env


class PortProtocol(enum.StrEnum):
    SSH = "ssh"
    HTTP = "http"


class PortSpec(BaseModel):
    """A port the job's program serves, reached through the server's gateway."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: Annotated[int, Field(ge=1, le=65535)]
    protocol: PortProtocol


@dataclass(frozen=True)
class Lease:
    """One gateway port lent to one declared port of a live job."""

    port: int
    job_id: int
    display_id: str
    owner: str
    task_index: int
    target_port: int
    protocol: PortProtocol


MAX_PORTS = 16


def _check_ports(ports: list[PortSpec]) -> list[PortSpec]:
    if len(ports) > MAX_PORTS:
        raise ValueError(f"at most {MAX_PORTS} ports")
    seen: set[int] = set()
    for item in ports:
        if item.port in seen:
            raise ValueError(f"port {item.port} is declared twice")
        seen.add(item.port)
    return ports


class IdleGpuAction(enum.StrEnum):
    """What happens to a job whose GPUs stay idle for its idle_gpu_timeout."""

    WARN = "warn"  # a Warning event (IdleGpu), once per idle spell
    STOP = "stop"  # the event, then the job is stopped: FAILED with reason IDLE_GPU


MAX_IDLE_GPU_TIMEOUT = 30 * 86400


def _check_idle_gpu_timeout(value: float | None, info: ValidationInfo) -> float | None:
    resources = info.data.get("resources")
    if value is not None and isinstance(resources, Resources) and resources.gpus == 0:
        raise ValueError("needs resources.gpus of at least 1 (idle GPUs are the job's own)")
    return value


def _check_idle_gpu_action(value: str, info: ValidationInfo) -> str:
    if value == IdleGpuAction.STOP and info.data.get("idle_gpu_timeout") is None:
        raise ValueError("'stop' needs idle_gpu_timeout (how long the GPUs may stay idle)")
    return value


class JobSpec(BaseModel):
    """What to run. `entrypoint` is a shell string (run by /bin/sh -c) or an argv list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entrypoint: str | list[str]
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: Annotated[str | None, Field(max_length=4096)] = None
    image: Annotated[str | None, Field(max_length=1024)] = None
    runtime_env: dict[str, Any] | None = None
    resources: Resources = Field(default_factory=Resources)
    replicas: Annotated[int, Field(ge=1, le=MAX_REPLICAS)] = 1
    max_runtime: Annotated[float | None, Field(gt=0, le=365 * 86400)] = None
    max_retries: Annotated[int, Field(ge=0, le=100)] = 0
    ports: Annotated[list[PortSpec], AfterValidator(_check_ports)] = Field(default_factory=list)
    # Shell commands run before the entrypoint, in the same task (e.g. preparing a virtualenv).
    setup: Annotated[str | None, Field(max_length=MAX_ENTRYPOINT_BYTES)] = None
    # Seconds all of the job's GPUs may stay below the server's idle_gpu_threshold_percent
    # before idle_gpu_action is taken (None: never).
    idle_gpu_timeout: Annotated[
        float | None,
        Field(gt=0, le=MAX_IDLE_GPU_TIMEOUT),
        AfterValidator(_check_idle_gpu_timeout),
    ] = None
    # An IdleGpuAction (a plain string: stored specs are read back without validation).
    idle_gpu_action: Annotated[Literal["warn", "stop"], AfterValidator(_check_idle_gpu_action)] = (
        "warn"
    )

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint(cls, value: str | list[str]) -> str | list[str]:
        parts = [value] if isinstance(value, str) else value
        if not parts or not parts[0].strip():
            raise ValueError("must not be empty")
        if any("\x00" in part for part in parts):
            raise ValueError("must not contain NUL")
        if sum(len(part.encode()) for part in parts) > MAX_ENTRYPOINT_BYTES:
            raise ValueError(f"is longer than {MAX_ENTRYPOINT_BYTES} bytes")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_env(value)

    def argv(self) -> list[str]:
        main = (
            ["/bin/sh", "-c", self.entrypoint]
            if isinstance(self.entrypoint, str)
            else list(self.entrypoint)
        )
        if not self.setup:
            return main
        # The setup runs first in the same shell, which then becomes the entrypoint: what the
        # setup exports reaches the entrypoint, and a failing setup ends the task with its code.
        script = f'set -e\n{self.setup}\nset +e\nexec "$@"'
        return ["/bin/sh", "-c", script, "jobyard-setup", *main]


def check_submission_id(value: str) -> str:
    if not _SUBMISSION_ID.match(value):
        raise ValueError("must be 1-128 characters of letters, digits and _.:@-")
    return value


def check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("must be 1-256 characters without control characters")
    return value


def check_queue(value: str) -> str:
    if not _QUEUE.match(value):
        raise ValueError("must be 1-128 characters of letters, digits and ._-")
    return value


def check_labels(value: dict[str, str]) -> dict[str, str]:
    if len(value) > 64:
        raise ValueError("at most 64 labels")
    for key, item in value.items():
        if not _LABEL_KEY.match(key):
            raise ValueError(
                f"label key {key!r} must be 1-128 characters of letters, digits and _./-"
            )
        if len(item) > 256 or "\x00" in item:
            raise ValueError(f"label {key!r}: value must be at most 256 characters, no NUL")
    return value


SubmissionId = Annotated[str, AfterValidator(check_submission_id)]
JobName = Annotated[str, AfterValidator(check_name)]
QueueName = Annotated[str, AfterValidator(check_queue)]
Labels = Annotated[dict[str, str], AfterValidator(check_labels)]
Priority = Annotated[int, Field(ge=-10000, le=10000)]


class StateLogEntry(BaseModel):
    id: int
    state: JobState
    timestamp: datetime


class Task(BaseModel):
    """One process of a job (a pod in the training face, the driver in the ray face)."""

    index: int
    name: str
    state: TaskState = TaskState.PENDING
    node: str | None = None
    pid: int | None = None
    gpus: list[int] = Field(default_factory=list)
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    handle: dict[str, Any] | None = None


class Attempt(BaseModel):
    """An earlier attempt of a retried job, with how it ended."""

    attempt: int
    exit_code: int | None = None
    reason: TerminationReason | None = None
    message: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None


class PendingReason(enum.StrEnum):
    """Why a queued job is not running yet (a machine code; the message says more)."""

    WAITING_FOR_CAPACITY = "WAITING_FOR_CAPACITY"
    GANG_DOES_NOT_FIT_YET = "GANG_DOES_NOT_FIT_YET"
    NO_MATCHING_GPU_MODEL = "NO_MATCHING_GPU_MODEL"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    PRIORITY = "PRIORITY"
    BACKOFF = "BACKOFF"
    EXECUTOR = "EXECUTOR"
    PULLING = "PULLING"  # started, while its container image is pulled
    EXECUTOR_UNAVAILABLE = "EXECUTOR_UNAVAILABLE"  # started, while its engine does not answer


class Job(BaseModel):
    id: int
    display_id: str
    submission_id: str
    name: str
    owner: str
    queue: str
    pool: str
    priority: int
    labels: dict[str, str]
    spec: JobSpec
    state: JobState
    reason: TerminationReason | None = None
    message: str = ""
    exit_code: int | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    stop_requested_at: datetime | None = None
    stop_reason: TerminationReason | None = None
    tasks: list[Task] = Field(default_factory=list)
    state_log: list[StateLogEntry] = Field(default_factory=list)
    # Retries: the attempt now queued or running (0 first), earlier ones, and the backoff.
    attempt: int = 0
    attempts: list[Attempt] = Field(default_factory=list)
    not_before: datetime | None = None
    # While queued: why it waits, and how many jobs of its queue are ahead of it.
    pending_reason: PendingReason | None = None
    pending_message: str = ""
    queue_position: int | None = None


def task_name(display_id: str, index: int) -> str:
    return f"{display_id}-worker-{index}"


class TaskPlacement(BaseModel):
    index: int
    name: str
    node: str
    gpus: list[int] = Field(default_factory=list)


class Placement(BaseModel):
    """A scheduler decision handed to an executor: which tasks go where, with which GPUs."""

    job_id: int
    display_id: str
    owner: str
    spec: JobSpec
    tasks: list[TaskPlacement]
    master_port: int | None = None
    # The owner's registry logins (model/registry.py), for the pull of a container image: set
    # by the scheduler as it starts the job, never stored, never dumped or shown.
    registry_logins: list[RegistryLogin] = Field(default_factory=list, exclude=True, repr=False)
