"""What the server returns, as typed, immutable models.

These mirror the native API's JSON (`/api/v1`), not the server's internals: unknown fields are
ignored, so a newer server does not break an older client.
"""

from __future__ import annotations

import enum
from datetime import datetime

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
