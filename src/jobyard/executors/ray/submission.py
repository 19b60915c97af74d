"""A placement as one Ray job submission: entrypoint, runtime_env, entrypoint resources and
metadata. Pure: nothing here talks to Ray."""

from __future__ import annotations

import math
import os
import shlex
import time
from dataclasses import asdict, dataclass, replace
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
) -> Submission:
    """The job's one task as a Ray job. Its metadata says which server submitted it for which
    task and when, and where this attempt's output starts in the task's log, so that a start
    cut short by a crash is found again (`RayExecutor.find_started`)."""
    spec, task = placement.spec, placement.tasks[0]
    runtime_env: dict[str, Any] = {}
    pip = (spec.runtime_env or {}).get("pip")
    if pip is not None:
        runtime_env["pip"] = pip  # installed by Ray on the cluster
    # On the node, PATH is the node's: Ray expands ${PATH} in env_vars.
    env = task_environment(placement, task, entry, "${PATH}")
    if spec.resources.gpus == 0:
        env["CUDA_VISIBLE_DEVICES"] = ""  # no GPUs asked for: the driver sees none
    env[STOP_WAIT_VARIABLE] = str(math.ceil(stop_wait))
    if spec.working_dir:
        runtime_env["working_dir"] = spec.working_dir  # a local one is uploaded by Ray's client
        _drop_from_pythonpath(env, spec.working_dir)
    runtime_env["env_vars"] = env
    return Submission(
        submission_id=base_id(placement),
        entrypoint=entrypoint_of(spec, pip_to_ray=pip is not None),
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


def entrypoint_of(spec: JobSpec, *, pip_to_ray: bool) -> str:
    """The command line Ray's supervisor runs under /bin/sh: the job's argv (a shell string as
    `/bin/sh -c '...'`), then what ends every process the job left running in its process
    group. Ray itself leaves those running once the driver has exited. Where Ray installs the
    job's pip requirements, jobyard's own set-up step (a virtualenv on the server) is not run.
    The shell that runs both sets no variable before the job starts, and only `_jobyard_*`
    ones after."""
    if pip_to_ray and spec.setup:
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


def _drop_from_pythonpath(env: dict[str, str], working_dir: str) -> None:
    """Ray puts its copy of the working directory on the driver's path; the server's own path
    to it means nothing on the cluster."""
    if "PYTHONPATH" not in env:
        return
    kept = [p for p in env["PYTHONPATH"].split(os.pathsep) if p and p != working_dir]
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        del env["PYTHONPATH"]
