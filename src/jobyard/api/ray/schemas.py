"""Ray's JobSubmitRequest in, Ray's JobDetails out; runtime_env read into the core's terms."""

from __future__ import annotations

import math
import shlex
from typing import Annotated, Any

from pydantic import ConfigDict, Field, StrictStr

from jobyard.api.ray.mapping import (
    MAX_LABEL_KEY,
    error_type,
    label_key,
    message,
    metadata_of,
    millis,
    node_id,
    setup_failure,
    status_of,
)
from jobyard.api.ray.runtime_env import DEFAULT_SETUP_TIMEOUT, EnvRequest, PipRequirements
from jobyard.api.strict import RequestModel
from jobyard.errors import InvalidInput
from jobyard.model import Job, JobState
from jobyard.model.job import check_labels

NonNegative = Annotated[float, Field(ge=0)]

# Keys of a runtime_env jobyard understands (`conda` only to fail the job's setup: it is not
# built here). `excludes` was applied by the client when it zipped the directory;
# `_ray_commit`, `_ray_release` and `_inject_current_ray` (which Ray's client adds) carry
# nothing jobyard needs.
RUNTIME_ENV_KEYS = ("working_dir", "py_modules", "env_vars", "pip", "conda", "excludes", "config")
_IGNORED_KEYS = ("excludes", "_ray_commit", "_ray_release", "_inject_current_ray")
_PIP_KEYS = ("packages", "pip_check", "pip_version", "pip_install_options")
_CONFIG_KEYS = ("setup_timeout_seconds", "eager_install", "log_files")


class SubmitRequest(RequestModel):
    """Ray's JobSubmitRequest. Unknown fields are refused, as Ray's server does."""

    model_config = ConfigDict(extra="forbid")

    entrypoint: StrictStr
    submission_id: StrictStr | None = None
    job_id: StrictStr | None = None  # the deprecated alias of submission_id
    runtime_env: dict[StrictStr, Any] | None = None
    metadata: dict[StrictStr, StrictStr] | None = None
    entrypoint_num_cpus: NonNegative | None = None
    entrypoint_num_gpus: NonNegative | None = None
    entrypoint_memory: Annotated[int, Field(ge=0)] | None = None
    entrypoint_resources: dict[StrictStr, NonNegative] | None = None
    entrypoint_label_selector: dict[StrictStr, StrictStr] | None = None

    def requested_id(self) -> str | None:
        return self.submission_id or self.job_id

    def resources(self) -> dict[str, Any]:
        """The core's resources: GPUs are whole devices, memory MiB (both rounded up)."""
        for key, amount in (self.entrypoint_resources or {}).items():
            if amount > 0:
                raise InvalidInput(
                    f"entrypoint_resources.{key}: jobyard has no custom resource {key!r}; "
                    "use entrypoint_num_cpus, entrypoint_num_gpus and entrypoint_memory",
                    field=f"entrypoint_resources.{key}",
                )
        out: dict[str, Any] = {}
        if self.entrypoint_num_cpus:
            out["cpus"] = self.entrypoint_num_cpus
        if self.entrypoint_num_gpus:
            out["gpus"] = math.ceil(self.entrypoint_num_gpus)
        if self.entrypoint_memory:
            out["memory"] = math.ceil(self.entrypoint_memory / 2**20)
        return out

    def labels(self) -> dict[str, str]:
        """The metadata as job labels: any key Ray takes (see mapping.label_key)."""
        labels = {}
        for key, value in (self.metadata or {}).items():
            encoded = label_key(key)
            if len(encoded) > MAX_LABEL_KEY:
                raise InvalidInput(
                    f"metadata.{key}: too long a key for jobyard (at most {MAX_LABEL_KEY} "
                    "characters of letters, digits and _./-, or 71 bytes of any others)",
                    field=f"metadata.{key}",
                )
            labels[encoded] = value
        try:
            return check_labels(labels)
        except ValueError as exc:
            raise InvalidInput(f"metadata: {exc}", field="metadata") from None


# ---- runtime_env ------------------------------------------------------------------------------


def read_runtime_env(raw: dict[str, Any]) -> tuple[EnvRequest, dict[str, str]]:
    """(what to prepare, env_vars) from a Ray runtime_env; 400 naming any key not understood."""
    for key in raw:
        if key not in RUNTIME_ENV_KEYS and key not in _IGNORED_KEYS:
            raise InvalidInput(
                f"runtime_env.{key}: not supported by jobyard (supported: "
                f"{', '.join(RUNTIME_ENV_KEYS)})",
                field=f"runtime_env.{key}",
            )
    working_dir = raw.get("working_dir")
    if working_dir is not None and (not isinstance(working_dir, str) or not working_dir):
        raise InvalidInput(
            "runtime_env.working_dir: must be a string", field="runtime_env.working_dir"
        )
    modules = raw.get("py_modules") or []
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise InvalidInput(
            "runtime_env.py_modules: must be a list of strings", field="runtime_env.py_modules"
        )
    request = EnvRequest(
        working_dir,
        tuple(modules),
        _read_pip(raw.get("pip")),
        conda=raw.get("conda") is not None,
        setup_timeout=_read_config(raw.get("config")),
    )
    return request, _read_env_vars(raw.get("env_vars"))


def _read_config(value: Any) -> float | None:
    """Ray's RuntimeEnvConfig: the setup timeout (seconds; -1: none), checked as Ray does."""
    where = "runtime_env.config"
    if value is None:
        return DEFAULT_SETUP_TIMEOUT
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: must be an object", field=where)
    for key in value:
        if key not in _CONFIG_KEYS:
            raise InvalidInput(f"{where}.{key}: not supported", field=f"{where}.{key}")
    timeout = value.get("setup_timeout_seconds", DEFAULT_SETUP_TIMEOUT)
    if timeout == -1 and not isinstance(timeout, bool):
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise InvalidInput(
            f"{where}.setup_timeout_seconds: must be a number of seconds greater than 0, or -1",
            field=f"{where}.setup_timeout_seconds",
        )
    return float(timeout)


def _read_env_vars(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidInput(
            "runtime_env.env_vars: must map names to string values", field="runtime_env.env_vars"
        )
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidInput(f"{where}: must be a list of strings", field=where)
    return tuple(value)


def _read_pip(value: Any) -> PipRequirements | None:
    """Ray's list or {"packages", ...}, or the seed's `pip install ... && pip check`."""
    where = "runtime_env.pip"
    if value is None:
        return None
    if isinstance(value, str):
        pip = _pip_command(value)
    elif isinstance(value, list):
        pip = PipRequirements(_strings(value, where))
    elif isinstance(value, dict):
        for key in value:
            if key not in _PIP_KEYS:
                raise InvalidInput(f"{where}.{key}: not supported", field=f"{where}.{key}")
        packages = value.get("packages", [])
        if isinstance(packages, str):
            raise InvalidInput(
                f"{where}.packages: a requirements file on the client must be read by the client",
                field=f"{where}.packages",
            )
        check = value.get("pip_check", False)
        if not isinstance(check, bool):
            raise InvalidInput(f"{where}.pip_check: must be a boolean", field=f"{where}.pip_check")
        options = value.get("pip_install_options") or []
        pip = PipRequirements(
            _strings(packages, f"{where}.packages"),
            _strings(options, f"{where}.pip_install_options") if options else (),
            check,
        )
    else:
        raise InvalidInput(f"{where}: must be a list of requirements", field=where)
    return pip if pip.packages else None


def _pip_command(command: str) -> PipRequirements:
    """`pip3.9 install numpy==1.24 scipy && pip3.9 check`: the requirements and the check."""
    where = "runtime_env.pip"
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise InvalidInput(f"{where}: {exc}", field=where) from None
    parts: list[list[str]] = [[]]
    for word in words:
        if word == "&&":
            parts.append([])
        else:
            parts[-1].append(word)
    install, *rest = parts
    ok = len(install) >= 3 and _is_pip(install[0]) and install[1] == "install"
    checks = [p for p in rest if len(p) == 2 and _is_pip(p[0]) and p[1] == "check"]
    if not ok or len(checks) != len(rest):
        raise InvalidInput(
            f"{where}: a string must read 'pip install REQUIREMENTS [&& pip check]'", field=where
        )
    return PipRequirements(tuple(install[2:]), (), bool(checks))


def _is_pip(word: str) -> bool:
    return word == "pip" or (word.startswith("pip") and word[3:].replace(".", "").isdigit())


# ---- JobDetails -------------------------------------------------------------------------------


def job_details(
    job: Job, log_tail: str | None = None, node_ip: str | None = None
) -> dict[str, Any]:
    """Ray's JobDetails with every field of the seed's example, in Ray's types. `log_tail` is
    the end of a failed job's log (for its message); `node_ip` the address of its node."""
    no_driver = setup_failure(job, log_tail) is not None
    details: dict[str, Any] = {
        "type": "SUBMISSION",
        "job_id": job.display_id,
        "submission_id": job.submission_id,
        "driver_info": None if no_driver else _driver_info(job, node_ip),
        "status": status_of(job).value,
        "entrypoint": _entrypoint(job),
        "message": message(job, log_tail),
        "error_type": error_type(job, log_tail),
        "start_time": millis(job.created_at),
        "end_time": millis(job.finished_at) if job.state.is_terminal() else None,
        "metadata": metadata_of(job.labels),
        "runtime_env": job.spec.runtime_env or {},
        "driver_agent_http_address": "",
        "driver_node_id": None if no_driver else _driver_node(job),
        "driver_exit_code": (None if no_driver or job.state is JobState.STOPPED else job.exit_code),
    }
    return details | _resources(job)


def _driver_info(job: Job, node_ip: str | None) -> dict[str, str] | None:
    """The entrypoint's process, once it has one (the seed has it; Ray only for a driver that
    joined a Ray cluster)."""
    task = job.tasks[0] if job.tasks else None
    if task is None or task.pid is None:
        return None
    return {"id": job.display_id, "node_ip_address": node_ip or "", "pid": str(task.pid)}


def _driver_node(job: Job) -> str | None:
    task = job.tasks[0] if job.tasks else None
    if task is None or task.pid is None or not task.node:
        return None
    return node_id(task.node)


def _resources(job: Job) -> dict[str, Any]:
    resources, out = job.spec.resources, {}
    if resources.cpus:
        out["entrypoint_num_cpus"] = resources.cpus
    if resources.gpus:
        out["entrypoint_num_gpus"] = resources.gpus
    if resources.memory:
        out["entrypoint_memory"] = resources.memory * 2**20
    return out


def _entrypoint(job: Job) -> str:
    entrypoint = job.spec.entrypoint
    return entrypoint if isinstance(entrypoint, str) else shlex.join(entrypoint)
