"""A placement as one Ray job submission: entrypoint, runtime_env, entrypoint resources and
metadata. Pure: nothing here talks to Ray."""

from __future__ import annotations

import math
import os
import shlex
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from jobyard.config import EnvironmentSpec
from jobyard.errors import ExecutorRefused
from jobyard.executors.environment import task_environment
from jobyard.model import JobSpec, Placement, Resources

# Ray's supervisor reads the time between its TERM and its KILL from the job's own
# environment (runtime_env env_vars reach the supervisor as well as the driver).
STOP_WAIT_VARIABLE = "RAY_JOB_STOP_WAIT_TIME_S"
# After the job's command: KILL every other process of this shell's group (Ray starts the
# shell as a session and group leader), read from /proc with shell builtins only; then exit
# with the command's status. Field 3 after the command name in /proc/<pid>/stat is the group.
_END_THE_GROUP = (
    "_jobyard_rc=$?; for _jobyard_p in /proc/[0-9]*; do set -f; "
    "read -r _jobyard_s < $_jobyard_p/stat && set -- ${_jobyard_s##*) } && "
    '[ "$3" = $$ ] && [ ${_jobyard_p#/proc/} != $$ ] && kill -9 ${_jobyard_p#/proc/}; '
    "done 2>/dev/null; exit $_jobyard_rc"
)


@dataclass(frozen=True)
class Submission:
    """The arguments of one `JobSubmissionClient.submit_job`; JSON data (a handle keeps it
    while the cluster does not answer, so that a restarted server can still submit it)."""

    submission_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    resources: dict[str, Any]

    def with_id(self, submission_id: str) -> Submission:
        return replace(self, submission_id=submission_id)

    def kwargs(self) -> dict[str, Any]:
        return {
            "entrypoint": self.entrypoint,
            "submission_id": self.submission_id,
            "runtime_env": dict(self.runtime_env),
            "metadata": dict(self.metadata),
            **self.resources,
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Submission:
        return cls(**data)


def submission_id(base: str, attempt: int) -> str:
    """The n-th id of a task: `jobyard-<job id>-<task name>`, then `-2`, `-3`, ... Ray never
    takes an id twice, and a retried task has the same name: each start takes the first id
    Ray does not hold yet, so one that was submitted but never recorded is found again."""
    return base if attempt == 0 else f"{base}-{attempt + 1}"


def base_id(placement: Placement) -> str:
    return f"jobyard-{placement.job_id}-{placement.tasks[0].name}"


def check_spec(spec: JobSpec) -> None:
    """What the Ray executor never runs: multi-worker jobs, and a pip command line."""
    if spec.replicas > 1:
        raise ExecutorRefused(
            "the ray executor runs one-worker jobs only: a Ray job has one driver, which "
            "starts its own workers on the cluster (Ray Train, tasks, actors); submit one "
            "worker and let it use the cluster",
            field="replicas",
        )
    pip = (spec.runtime_env or {}).get("pip")
    if pip is not None and not isinstance(pip, list | dict):
        raise ExecutorRefused(
            "runtime_env.pip: the ray executor gives Ray a list of requirements or Ray's "
            '{"packages": [...]} object, not a command line',
            field="runtime_env.pip",
        )


def build_submission(
    placement: Placement,
    entry: EnvironmentSpec | None,
    *,
    stop_wait: float,
    gpu_type: str | None,
    instance: str,
    log_base: int = 0,
    unpacked: Path | None = None,
) -> Submission:
    """The job's one task as a Ray job. Its metadata says which server submitted it for which
    task and when, and where this attempt's output starts in the task's log, so that a start
    cut short by a crash is found again (`RayExecutor.find_started`). `unpacked` is where the
    server unpacks the packages a face took (the Ray face's py_modules: see ray_runtime_env)."""
    spec, task = placement.spec, placement.tasks[0]
    # On the node, PATH is the node's: Ray expands ${PATH} in env_vars.
    env = task_environment(placement, task, entry, "${PATH}")
    if spec.resources.gpus == 0:
        env["CUDA_VISIBLE_DEVICES"] = ""  # no GPUs asked for: the driver sees none
    env[STOP_WAIT_VARIABLE] = str(math.ceil(stop_wait))
    runtime_env = ray_runtime_env(spec, env, unpacked)
    runtime_env["env_vars"] = env
    return Submission(
        submission_id=base_id(placement),
        entrypoint=entrypoint_of(spec, ray_sets_up=_set_up_by_ray(runtime_env)),
        runtime_env=runtime_env,
        metadata={
            "jobyard_job_id": str(placement.job_id),
            "jobyard_task": task.name,
            "jobyard_owner": placement.owner,
            "jobyard_instance": instance,
            "jobyard_submitted_at": f"{time.time():.6f}",
            "jobyard_log_base": str(log_base),
        },
        resources=entrypoint_resources(spec.resources, gpu_type),
    )


def ray_runtime_env(spec: JobSpec, env: dict[str, str], unpacked: Path | None) -> dict[str, Any]:
    """What Ray sets up for the job on the cluster (`env` loses the server's paths to it):

    - working_dir: a directory on the server is uploaded by Ray's client (Ray's package
      mechanism); a remote URI the face could not fetch (https://, s3://) is Ray's to fetch;
    - py_modules: directories and .py files on the server are uploaded the same way, the
      packages the Ray face unpacked (`unpacked`/<dir>, on the job's PYTHONPATH) as what they
      hold, and remote URIs are Ray's to fetch;
    - pip, conda, excludes and config (setup_timeout_seconds, eager_install) as given: Ray
      installs the packages, or fails the job the way Ray fails it (RUNTIME_ENV_SETUP_FAILURE,
      with Ray's message), e.g. where the cluster has no conda."""
    raw = spec.runtime_env or {}
    out: dict[str, Any] = {key: raw[key] for key in _AS_GIVEN if raw.get(key) is not None}
    working_dir = spec.working_dir or _remote(raw.get("working_dir"))
    if working_dir:
        out["working_dir"] = working_dir
        if spec.working_dir:
            _drop_from_pythonpath(env, [spec.working_dir])
    face_modules = _unpacked_modules(env, unpacked, spec.working_dir)
    _drop_from_pythonpath(env, face_modules)
    modules = [str(p) for d in face_modules for p in _module_entries(Path(d))]
    given = raw.get("py_modules")
    if isinstance(given, list):
        modules += [m for m in given if isinstance(m, str) and not m.startswith(_UNPACKED)]
    if modules:
        out["py_modules"] = modules
    return out


_AS_GIVEN = ("pip", "conda", "excludes", "config")  # handed to Ray as the job gave them
_UNPACKED = ("gcs://", "file://")  # the zips a face unpacks on the server


def _set_up_by_ray(runtime_env: dict[str, Any]) -> bool:
    """Whether Ray makes what jobyard's own set-up step would make (or fail on): packages to
    install, or a URI to fetch."""
    return (
        "pip" in runtime_env
        or "conda" in runtime_env
        or _remote(runtime_env.get("working_dir")) is not None
        or any(_remote(m) for m in runtime_env.get("py_modules", ()))
    )


def _remote(uri: Any) -> str | None:
    """A URI only the cluster can fetch (not a package jobyard took, not a path)."""
    if isinstance(uri, str) and "://" in uri and not uri.startswith(_UNPACKED):
        return uri
    return None


def _unpacked_modules(
    env: dict[str, str], unpacked: Path | None, working_dir: str | None
) -> list[str]:
    """The job's PYTHONPATH entries that are packages the server unpacked for it."""
    if unpacked is None:
        return []
    root = unpacked.resolve()
    return [
        p
        for p in env.get("PYTHONPATH", "").split(os.pathsep)
        if p and p != working_dir and Path(p).resolve().parent == root and Path(p).is_dir()
    ]


def _module_entries(directory: Path) -> list[Path]:
    """What one unpacked py_modules package holds: its packages (directories) and modules
    (.py files), each of which Ray uploads as a module of its own."""
    try:
        found = sorted(directory.iterdir())
    except OSError:
        return []
    return [p for p in found if p.is_dir() or p.suffix == ".py"]


def entrypoint_of(spec: JobSpec, *, ray_sets_up: bool) -> str:
    """The command line Ray's supervisor runs under /bin/sh: the job's argv (a shell string as
    `/bin/sh -c '...'`), then what ends every process the job left running in its process
    group. Ray itself leaves those running once the driver has exited. Where Ray sets up the
    job's runtime_env, jobyard's own set-up step (a virtualenv on the server, or the words of
    what it cannot set up) is not run.
    The shell that runs both sets no variable before the job starts, and only `_jobyard_*`
    ones after."""
    if ray_sets_up and spec.setup:
        spec = spec.model_copy(update={"setup": None})
    return f"{shlex.join(spec.argv())}; {_END_THE_GROUP}"


def entrypoint_resources(resources: Resources, gpu_type: str | None) -> dict[str, Any]:
    """entrypoint_num_cpus/_gpus/_memory, and the GPU model as Ray's accelerator resource;
    only what the job asks for (Ray's driver reserves nothing by default)."""
    out: dict[str, Any] = {}
    if resources.cpus:
        out["entrypoint_num_cpus"] = resources.cpus
    if resources.gpus:
        out["entrypoint_num_gpus"] = resources.gpus
        if gpu_type:
            out["entrypoint_resources"] = {f"accelerator_type:{gpu_type}": 0.001}
    if resources.memory:
        out["entrypoint_memory"] = resources.memory * 2**20
    return out


def _drop_from_pythonpath(env: dict[str, str], paths: list[str]) -> None:
    """Ray puts its copies of the working directory and modules on the driver's path; the
    server's own paths to them mean nothing on the cluster."""
    if "PYTHONPATH" not in env or not paths:
        return
    kept = [p for p in env["PYTHONPATH"].split(os.pathsep) if p and p not in paths]
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        del env["PYTHONPATH"]
