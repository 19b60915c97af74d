"""What the PaaS face reads (a create request: form fields or JSON) and writes (the job object).

The job object has every key of the original API's documented example in the same order,
nesting and JSON types. Keys with no meaning here keep the example's values (`format` 2,
`clientID` 10001, null, "", 0).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field as dataclass_field
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator

from jobyard.api.inputs import loads_checked
from jobyard.api.paas.mapping import (
    CPU_GPU_NAME,
    PROTOCOL,
    PROTOCOL_NUMBER,
    description,
    gpu_names,
    seconds,
    state_log,
    status_of,
)
from jobyard.api.strict import RequestModel
from jobyard.errors import InvalidInput, JobyardError
from jobyard.model import Job, JobSpec, PortProtocol, PortSpec, Resources
from jobyard.model.capacity import GpuInfo, gpu_matches
from jobyard.service import JobRequest

# A job created without `cmd` keeps running until it is cancelled, as an instance does.
DEFAULT_CMD = "exec tail -f /dev/null"
# Labels that keep what the core has no field for, so the job object can echo it.
LABEL_AGENT_DOMAIN = "paas.agent_domain"
LABEL_DOMAIN = "paas.domain"
LABEL_REMARK = "paas.remark"
LABEL_SOURCE = "paas.source"  # "image" or "snapshot": which field chose the environment
LABEL_GPU_NAME = "paas.gpu_name"  # a gpuName that is no GPU model (`cpu`)


def parse_envs(raw: str) -> dict[str, str]:
    """`K=V;K2=V2` -> {K: V, K2: V2}. A value keeps any '=' after the first; empty segments
    (a trailing ';') are skipped; spaces around a key are dropped; a later key wins."""
    env: dict[str, str] = {}
    for segment in raw.split(";"):
        if not segment.strip():
            continue
        key, sep, value = segment.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"{segment.strip()!r} is not KEY=VALUE", field="envs")
        env[key.strip()] = value
    return env


def format_envs(env: Mapping[str, str]) -> str:
    return ";".join(f"{key}={value}" for key, value in env.items())


def _json_text(value: Any) -> Any:
    """A form sends JSON as a string; a JSON body may send the object itself."""
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return loads_checked(value)  # refused as a body would be (api.inputs)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg})") from None
    return value


def _id_text(value: Any) -> Any:
    """An id as text. Empty, or 0 (what the job object shows in the field that did not choose
    the environment), is not given."""
    if isinstance(value, bool):
        raise ValueError("must be an id")
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, str) and value.strip() in ("", "0"):
        return None
    return value


class PaasSpec(RequestModel):
    """`spec`: the machine asked for. An empty or absent gpuName: no particular GPU model;
    `cpu`: no GPU."""

    model_config = ConfigDict(extra="forbid")

    gpuName: Annotated[str, Field(max_length=128)] = ""
    gpus: Annotated[int | None, Field(ge=0, le=64)] = None
    cpus: Annotated[float, Field(ge=0, le=4096)] = 0


class PaasPort(RequestModel):
    model_config = ConfigDict(extra="forbid")

    port: Annotated[int, Field(ge=1, le=65535)]
    protocol: int
    extraData: Any = None  # ignored

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, value: int) -> int:
        if value not in PROTOCOL:
            raise ValueError(f"protocol {value} is not supported; use 1 (SSH) or 2 (HTTP)")
        return value


class PaasCreate(RequestModel):
    """The create request's fields, from a multipart form or a JSON body alike."""

    model_config = ConfigDict(extra="forbid")

    spec: PaasSpec = Field(default_factory=PaasSpec)
    agent_domain: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    from_image_id: Annotated[str | None, Field(max_length=128)] = None
    from_snapshot_id: Annotated[str | None, Field(max_length=128)] = None
    cmd: str = ""
    envs: str = ""
    remark: Annotated[str, Field(max_length=256)] = ""
    domain: Literal["all", "offical", "others"] = "all"
    ports: list[PaasPort] = Field(default_factory=list)

    @field_validator("spec", mode="before")
    @classmethod
    def _spec(cls, value: Any) -> Any:
        parsed = _json_text(value)
        return {} if parsed is None else parsed

    @field_validator("ports", mode="before")
    @classmethod
    def _ports(cls, value: Any) -> Any:
        parsed = _json_text(value)
        return [] if parsed is None else parsed

    @field_validator("from_image_id", "from_snapshot_id", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        return _id_text(value)

    @field_validator("domain", mode="before")
    @classmethod
    def _domain(cls, value: Any) -> Any:
        return "all" if value in (None, "") else value

    def environment_ref(self) -> tuple[str, str | None]:
        """(the field that names the environment, its id); both given must agree."""
        image, snapshot = self.from_image_id, self.from_snapshot_id
        if image is not None and snapshot is not None and image != snapshot:
            raise InvalidInput(
                "give one of from_image_id and from_snapshot_id", field="from_snapshot_id"
            )
        if snapshot is not None and image is None:
            return "from_snapshot_id", snapshot
        return "from_image_id", image

    def gpu_name(self) -> str:
        return self.spec.gpuName.strip()

    def is_cpu(self) -> bool:
        return self.gpu_name().lower() == CPU_GPU_NAME

    def gpus(self) -> int:
        """A gpuName without a count asks for one GPU of that model (a machine with it)."""
        if self.spec.gpus is not None:
            return self.spec.gpus
        return 1 if self.gpu_name() and not self.is_cpu() else 0

    def check_gpu_name(self, gpus: Sequence[GpuInfo]) -> None:
        """A gpuName is empty, `cpu` (no GPUs), or names a model of the pool's GPUs, matched
        as the scheduler matches it (part of the model's name, in any case)."""
        name = self.gpu_name()
        if self.is_cpu() and self.gpus():
            raise InvalidInput(
                f"gpuName {name!r} runs without GPUs: gpus must be 0, got {self.gpus()}",
                field="spec.gpus",
            )
        if not name or self.is_cpu():
            return
        wanted = Resources(gpu_model=name)
        if not any(gpu_matches(gpu, wanted) for gpu in gpus):
            offered = ", ".join(gpu_names(gpus))
            raise InvalidInput(
                f"unknown GPU name {name!r}; this server offers: {offered}", field="spec.gpuName"
            )

    def to_request(self, image: str | None) -> JobRequest:
        """The core's request; `image` is the catalog entry's id (None: the default entry)."""
        field, _ = self.environment_ref()
        labels = {
            LABEL_AGENT_DOMAIN: str(self.agent_domain),
            LABEL_DOMAIN: self.domain,
            LABEL_SOURCE: "snapshot" if field == "from_snapshot_id" else "image",
        }
        if self.remark:
            labels[LABEL_REMARK] = self.remark
        if self.is_cpu():
            labels[LABEL_GPU_NAME] = self.gpu_name()
        try:
            spec = JobSpec(
                entrypoint=["bash", "-c", self.cmd if self.cmd.strip() else DEFAULT_CMD],
                env=parse_envs(self.envs),
                image=image,
                resources=Resources(
                    cpus=self.spec.cpus,
                    gpus=self.gpus(),
                    gpu_model=None if self.is_cpu() else self.gpu_name() or None,
                ),
                ports=[PortSpec(port=p.port, protocol=PROTOCOL[p.protocol]) for p in self.ports],
            )
            return JobRequest(spec=spec, name=self.remark or None, labels=labels)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(part) for part in first["loc"])
            field = face_field(loc, self)
            message = str(first["msg"]).removeprefix("Value error, ")
            raise InvalidInput(f"{field}: {message}", field=field) from None


_FIELDS = {
    "env": "envs",
    "entrypoint": "cmd",
    "image": "from_image_id",
    "resources.cpus": "spec.cpus",
    "resources.gpu_model": "spec.gpuName",
    "resources.memory": "spec",
    "name": "remark",
    "labels": "remark",
}


def face_field(core_field: str | None, create: PaasCreate) -> str:
    """The request field a core field came from (the core names its own fields)."""
    if not core_field:
        return "spec"
    if core_field.startswith("resources.gpus"):
        return "spec.gpuName" if create.spec.gpuName.strip() else "spec.gpus"
    if core_field == "image":
        return create.environment_ref()[0]
    for prefix, field in _FIELDS.items():
        if core_field == prefix or core_field.startswith(prefix + "."):
            return field
    return core_field


def refused(exc: JobyardError, create: PaasCreate) -> InvalidInput:
    """A refusal of the core at submit, said with the request's field names."""
    field = face_field(exc.field, create)
    message = exc.message
    if field == "spec.gpuName":
        message = f"no GPU {create.spec.gpuName.strip()!r} for this job in the pool ({message})"
    return InvalidInput(f"{field}: {message}", field=field)


# ---- the job object -------------------------------------------------------------------------


@dataclass(frozen=True)
class JobExtras:
    """What a job object needs beyond the Job: from other service calls, made by the route."""

    queue_len: int = 0
    ssh_password: str | None = None
    owner_id: int = 0
    environment_id: str = "0"
    urls: Mapping[str, Sequence[str]] = dataclass_field(default_factory=dict)


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _id_number(value: str) -> int | str:
    """Catalog ids are strings; the original's are numbers: numeric ids leave as numbers."""
    return int(value) if value.isascii() and value.isdigit() and len(value) < 19 else value


def command_of(spec: JobSpec) -> str:
    entry = spec.entrypoint
    if isinstance(entry, str):
        return entry
    if len(entry) == 3 and entry[:2] == ["bash", "-c"]:
        return entry[2]
    return shlex.join(entry)


def _urls(extras: JobExtras) -> dict[str, Any]:
    """`port_<n>: {urls: [...]}`: the gateway's URLs of a live job (HTTP ones carry the
    job's token, as the original's do); {} while none are leased."""
    return {key: {"urls": list(urls)} for key, urls in sorted(extras.urls.items())}


def _ssh_auths(job: Job, extras: JobExtras) -> list[dict[str, Any]]:
    has_ssh = any(p.protocol is PortProtocol.SSH for p in job.spec.ports)
    if not has_ssh or not extras.ssh_password:
        return []
    # The gateway's SSH user for a job is its display id (the password alone is per job).
    cred = {"id": job.id, "user": job.display_id, "password": extras.ssh_password}
    return [{"BaseOn": {"Cred": cred}}]


def _from_ids(job: Job, extras: JobExtras) -> tuple[int | str, int | str]:
    """(fromSnapshotId, fromImageId): the environment under the field that chose it."""
    chosen = _id_number(extras.environment_id)
    if job.labels.get(LABEL_SOURCE) == "snapshot":
        return chosen, 0
    return 0, chosen


def _app(job: Job, extras: JobExtras) -> dict[str, Any]:
    from_snapshot, from_image = _from_ids(job, extras)
    created_here = LABEL_AGENT_DOMAIN in job.labels
    remark = job.labels.get(LABEL_REMARK, "") if created_here else job.name
    return {
        "name": "",
        "ver": "",
        "envs": format_envs(job.spec.env),
        "format": 2,
        "files": None,
        "cmd": command_of(job.spec),
        "hostname": "",
        "creds": "",
        "ports": [
            {"port": p.port, "protocol": PROTOCOL_NUMBER[p.protocol], "extraData": None}
            for p in job.spec.ports
        ],
        "urls": _urls(extras),
        "fromSnapshotId": from_snapshot,
        "SSHAuths": _ssh_auths(job, extras),
        "netConfig": None,
        "remark": remark,
        "fromImageId": from_image,
    }


def _agent_domain(job: Job) -> int:
    raw = job.labels.get(LABEL_AGENT_DOMAIN, "0")
    return int(raw) if raw.isdigit() else 0


def _res(job: Job) -> dict[str, Any]:
    resources = job.spec.resources
    return {
        "cpus": _number(resources.cpus),
        "gpus": resources.gpus,
        "diskGB": 0,
        "gpuName": resources.gpu_model or job.labels.get(LABEL_GPU_NAME, ""),
        "domain": job.labels.get(LABEL_DOMAIN, "all"),
        "agentDomain": _agent_domain(job),
    }


def _ctx(job: Job, extras: JobExtras) -> dict[str, Any]:
    return {
        "ownerId": extras.owner_id,
        "nodeId": job.id,
        "clientID": 10001,
        "nodeDisplayID": job.tasks[0].name if job.tasks else job.display_id,
        "class": "",
        "aotuRelease": False,
        "releaseTime": None,
        "nodeDomain": _agent_domain(job),
    }


def job_object(job: Job, extras: JobExtras) -> dict[str, Any]:
    status = int(status_of(job))
    return {
        "id": job.id,
        "ctx": _ctx(job, extras),
        "state": {"status": status, "log": state_log(job)},
        "status": status,
        "app": _app(job, extras),
        "res": _res(job),
        "createTime": seconds(job.created_at),
        "vols": None,
        "queueLen": extras.queue_len,
        "nets": [],
        "displayID": job.display_id,
        "autoRelease": False,
        "releaseTime": None,
        "updateTime": None,
        "desc": description(job),
    }
