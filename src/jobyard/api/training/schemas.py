"""Request bodies of the training-job API and their translation to the core's request.

Create (the platform's unified format, flattened): `jobName` and `command` are required;
`image` names an environment of the catalog (absent: the host), `resourcePoolId` and `queue`
the scheduler's pool and queue (absent: the defaults). `resources.memory` is in GiB when a
bare number (as the original's unified format), or a size with a unit ("512Mi", "4GiB").
`envs` is a map or a list of {name, value}. `priority` is a number, or high/normal/low.
"""

from __future__ import annotations

import shlex
from typing import Annotated, Any

from pydantic import ConfigDict, Field, field_validator

from jobyard.api.strict import RequestModel
from jobyard.api.training.mapping import MIB_PER_GIB, core_states
from jobyard.model import JobSpec, Resources
from jobyard.model.job import parse_memory_mib
from jobyard.service import JobQuery, JobRequest

MAX_PAGE_SIZE = 500
_PRIORITIES = {"high": 100, "normal": 0, "low": -100}


class JobListQuery(RequestModel):
    """`POST /api/jobs`: from the JSON body, or the query string (the body wins)."""

    model_config = ConfigDict(extra="forbid")

    keyword: Annotated[str | None, Field(max_length=256)] = None
    status: Annotated[str | None, Field(max_length=256)] = None
    pageNumber: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    pageSize: Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE)] = 10
    queue: Annotated[str | None, Field(max_length=128)] = None
    owner: Annotated[str | None, Field(max_length=128)] = None

    def to_query(self) -> JobQuery:
        return JobQuery(
            states=core_states(self.status),
            queue=self.queue,
            owner=self.owner,
            keyword=self.keyword or None,
            limit=self.pageSize,
            offset=(self.pageNumber - 1) * self.pageSize,
        )


class ResourcesIn(RequestModel):
    model_config = ConfigDict(extra="forbid")

    cpus: Annotated[float, Field(ge=0, le=4096)] = 0
    memory: float | str = 0
    gpus: Annotated[int, Field(ge=0, le=64)] = 0
    gpuType: Annotated[str | None, Field(max_length=128)] = None

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: float | str) -> float | str:
        mib = _memory_mib(value)
        if mib < 0:
            raise ValueError("must not be negative")
        return value

    def to_resources(self) -> Resources:
        return Resources(
            cpus=self.cpus, memory=_memory_mib(self.memory), gpus=self.gpus, gpu_model=self.gpuType
        )


def _memory_mib(value: float | str) -> int:
    if isinstance(value, str):
        return parse_memory_mib(value)
    return parse_memory_mib(value * MIB_PER_GIB)  # refuses infinity (1e308 GiB)


class EnvVar(RequestModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1)]
    value: str = ""


class JobCreateBody(RequestModel):
    """`POST /api/jobs/create`."""

    model_config = ConfigDict(extra="forbid")

    jobName: Annotated[str, Field(min_length=1, max_length=256)]
    command: list[str] | str
    args: list[str] = Field(default_factory=list)
    image: Annotated[str | None, Field(max_length=1024)] = None
    resourcePoolId: Annotated[str | None, Field(max_length=128)] = None
    queue: Annotated[str | None, Field(max_length=128)] = None
    envs: dict[str, str] | list[EnvVar] = Field(default_factory=dict)
    replicas: Annotated[int, Field(ge=1, le=1024)] = 1
    resources: ResourcesIn = Field(default_factory=ResourcesIn)
    priority: int | str = 0
    maxRetries: Annotated[int, Field(ge=0, le=100)] = 0
    timeout: Annotated[float | None, Field(gt=0)] = None
    workingDir: Annotated[str | None, Field(max_length=4096)] = None
    description: Annotated[str | None, Field(max_length=4096)] = None

    @field_validator("priority")
    @classmethod
    def _priority(cls, value: int | str) -> int | str:
        if isinstance(value, str) and value.lower() not in _PRIORITIES:
            raise ValueError(f"must be a number or one of {', '.join(_PRIORITIES)}")
        return value

    def to_request(self) -> JobRequest:
        return JobRequest(
            spec=JobSpec(
                entrypoint=self._entrypoint(),
                env=self._env(),
                working_dir=self.workingDir,
                image=self.image or None,
                resources=self.resources.to_resources(),
                replicas=self.replicas,
                max_runtime=self.timeout,
                max_retries=self.maxRetries,
            ),
            name=self.jobName,
            queue=self.queue or None,
            pool=self.resourcePoolId or None,
            priority=self._priority_number(),
            labels={"description": self.description[:256]} if self.description else {},
        )

    def _entrypoint(self) -> str | list[str]:
        if isinstance(self.command, str):
            return " ".join([self.command, *map(shlex.quote, self.args)])
        return [*self.command, *self.args]

    def _env(self) -> dict[str, str]:
        if isinstance(self.envs, dict):
            return dict(self.envs)
        return {item.name: item.value for item in self.envs}

    def _priority_number(self) -> int:
        if isinstance(self.priority, str):
            return _PRIORITIES[self.priority.lower()]
        return self.priority


def parse_list_query(params: dict[str, Any], body: dict[str, Any]) -> JobListQuery:
    return JobListQuery.model_validate({**params, **body})
