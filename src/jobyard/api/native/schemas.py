"""Request and response schemas of the native face: JobCreate, JobPublic, JobList."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from fastapi import Response
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticSerializationError

from jobyard.api.responses import encodable
from jobyard.api.strict import RequestModel
from jobyard.model import Event, Job, JobSpec, Task, TerminationReason
from jobyard.model.job import JobName, Labels, Priority, QueueName, SubmissionId
from jobyard.service import JobRequest

_SPEC_FIELDS = set(JobSpec.model_fields)


class JobCreate(JobSpec, RequestModel):
    """A job to run: the spec's fields plus how to queue it."""

    name: JobName | None = None
    queue: QueueName | None = None
    pool: QueueName | None = None
    priority: Priority = 0
    labels: Labels = Field(default_factory=dict)
    submission_id: SubmissionId | None = None

    def to_request(self) -> JobRequest:
        # Every field was validated on the way in: build the core request without doing it twice.
        spec = JobSpec.model_construct(
            _fields_set=self.model_fields_set & _SPEC_FIELDS,
            **{name: getattr(self, name) for name in _SPEC_FIELDS},
        )
        return JobRequest.model_construct(
            spec=spec,
            name=self.name,
            queue=self.queue,
            pool=self.pool,
            priority=self.priority,
            labels=self.labels,
            submission_id=self.submission_id,
        )


class TaskPublic(Task):
    """A task as clients see it: the executor's handle stays inside."""

    handle: SkipJsonSchema[dict[str, Any] | None] = Field(default=None, exclude=True)


class JobPublic(Job):
    """A job as clients see it (documents what `job_json` writes)."""

    tasks: list[TaskPublic] = Field(default_factory=list)  # type: ignore[assignment]
    stop_requested_at: SkipJsonSchema[datetime | None] = Field(default=None, exclude=True)
    stop_reason: SkipJsonSchema[TerminationReason | None] = Field(default=None, exclude=True)


class JobList(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None
    total: int


class EventList(BaseModel):
    items: list[Event]


class UserCreate(BaseModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")
    admin: bool = False


class UserCreated(BaseModel):
    name: str
    token: str


_INTERNAL: Any = {"stop_requested_at": True, "stop_reason": True, "tasks": {"__all__": {"handle"}}}


def job_json(job: Job) -> str:
    """The JSON of JobPublic, serialised straight from the core Job by pydantic-core (or, for
    a job stored with text UTF-8 cannot encode, through Python: see api.responses)."""
    try:
        return job.model_dump_json(exclude=_INTERNAL)
    except PydanticSerializationError:
        data = job.model_dump(mode="json", exclude=_INTERNAL)
        return encodable(json.dumps(data, ensure_ascii=False, separators=(",", ":")))


def job_response(job: Job, status: int = 200) -> Response:
    return Response(job_json(job), status, media_type="application/json")


def page_response(items: list[Job], next_cursor: int | None, total: int) -> Response:
    cursor = "null" if next_cursor is None else f'"{next_cursor}"'
    jobs = ",".join(job_json(job) for job in items)
    body = f'{{"items":[{jobs}],"next_cursor":{cursor},"total":{total}}}'
    return Response(body, media_type="application/json")
