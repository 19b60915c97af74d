"""What the server returns, as typed, immutable models.

These mirror the native API's JSON (`/api/v1`), not the server's internals: unknown fields are
ignored, so a newer server does not break an older client.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class JobState(enum.StrEnum):
    QUEUED = "QUEUED"
    SCHEDULED = "SCHEDULED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    def is_terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED)


class Resources(_Model):
    """What one replica needs. `memory` is MiB; when submitting, a size such as '4GiB' works too."""

    cpus: float = 0
    memory: int | str = 0
    gpus: int = 0
    gpu_model: str | None = None


class JobSpec(_Model):
    entrypoint: str | list[str]
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str | None = None
    image: str | None = None
    resources: Resources = Field(default_factory=Resources)
    replicas: int = 1
    max_runtime: float | None = None
    max_retries: int = 0
    ports: list[dict[str, Any]] = Field(default_factory=list)


class Task(_Model):
    """One process of a job. `state` is PENDING, RUNNING, EXITED or LOST."""

    index: int
    name: str
    state: str
    node: str | None = None
    pid: int | None = None
    gpus: list[int] = Field(default_factory=list)
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class StateChange(_Model):
    """One entry of a job's state log."""

    state: JobState
    timestamp: datetime


class Attempt(_Model):
    """An earlier attempt of a retried job."""

    attempt: int
    exit_code: int | None = None
    reason: str | None = None
    message: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Job(_Model):
    id: int
    display_id: str
    submission_id: str
    name: str
    owner: str
    queue: str
    pool: str = ""
    priority: int = 0
    labels: dict[str, str] = Field(default_factory=dict)
    spec: JobSpec
    state: JobState
    reason: str | None = None
    message: str = ""
    exit_code: int | None = None
    created_at: datetime
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    tasks: list[Task] = Field(default_factory=list)
    state_log: list[StateChange] = Field(default_factory=list)
    attempt: int = 0
    attempts: list[Attempt] = Field(default_factory=list)
    pending_reason: str | None = None
    pending_message: str = ""
    queue_position: int | None = None

    def is_terminal(self) -> bool:
        return self.state.is_terminal()


class JobPage(_Model):
    """One page of a listing; pass `next_cursor` back as `cursor` for the next (None: the end)."""

    items: list[Job]
    next_cursor: str | None = None
    total: int


class Event(_Model):
    """A Kubernetes-style event: `type` is Normal or Warning, `reason` e.g. Started, Failed."""

    type: str
    reason: str
    message: str
    timestamp: datetime


class EventList(_Model):
    items: list[Event]


class ResourceUse(_Model):
    cpus: float = 0
    memory_mib: int = 0
    gpus: int = 0
    tasks: int = 0


class PoolGpu(_Model):
    index: int
    model: str
    in_use: bool


class Pool(_Model):
    name: str
    executor: str
    node: str = ""
    capacity: ResourceUse
    in_use: ResourceUse
    gpus: list[PoolGpu] = Field(default_factory=list)
    running_jobs: int
    queued_jobs: int


class Queue(_Model):
    name: str
    pool: str
    priority: int
    limits: dict[str, float | None] = Field(default_factory=dict)
    running_jobs: int
    queued_jobs: int
    in_use: ResourceUse


class Health(_Model):
    status: str
    version: str = ""


class User(_Model):
    name: str
    admin: bool


class NewUser(_Model):
    """A user just created, with the token that authenticates as them (shown only once)."""

    name: str
    token: str
    admin: bool = False
    token_id: int | None = None


class UserInfo(_Model):
    """A user as an admin lists them; `tokens` counts those not revoked."""

    name: str
    admin: bool
    created_at: datetime
    tokens: int = 0


class UserList(_Model):
    items: list[UserInfo]


class Token(_Model):
    """An API token as listed: never its value."""

    id: int
    user: str
    name: str = ""
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


class NewToken(Token):
    """A token just created: `token` is its value, shown only this once."""

    token: str


class TokenList(_Model):
    items: list[Token]


class RegistryCredential(_Model):
    """A registry login of yours as listed: the registry and the username, never the
    password (the server uses it for your jobs' pulls from that registry only)."""

    registry: str
    username: str
    created_at: datetime
    updated_at: datetime


class RegistryCredentialList(_Model):
    items: list[RegistryCredential]
