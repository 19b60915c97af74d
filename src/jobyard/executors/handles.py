"""The handles of the built-in executors, field by field.

A handle is what an executor needs to find a task again (after a restart too): the core
stores it as JSON with the task and gives it back to the executor that made it. The contract
(`base.Handle`) is a mapping of names to JSON values; each executor builds its own shape,
declared here. Fields an earlier release did not write are read with `.get()` and a default.
"""

from __future__ import annotations

from typing import Any, TypedDict


class SavedRuntime(TypedDict):
    """The container runtime a task was started with: its CLI and global arguments."""

    name: str
    argv: list[str]


class ContainerFields(TypedDict, total=False):
    """What a task run in a container adds to its handle (executors/containers.py; all of
    them, or none for a task on the host): every one follows from the job and the task, so a
    restarted server finds them again."""

    container: str  # the container's name
    image: str
    labels: dict[str, str]
    runtime: SavedRuntime | None
    env_file: str
    pull_state: str
    pull_log: str
    auth_dir: str  # the pull's registry login (a private auth file), while the pull runs
    pid_file: str  # the container's first process (podman --pidfile), for its usage


class LocalHandle(ContainerFields):
    """A local task: its supervisor's pid (0 until spawned) and start time in clock ticks
    (a reused pid is not it), its log and exit files, and the key in its environment."""

    pid: int
    start_ticks: int
    log: str
    exit: str
    node: str
    key: list[str]  # [job id, display id, task name]


class SlurmHandle(ContainerFields):
    """A task of a Slurm job: the job's id and name, the task's files (its node is written
    to `node_file` once it runs) and working directory."""

    slurm_job_id: str
    name: str
    task: int
    log: str
    exit: str
    node_file: str
    batch_log: str | None  # a multi-task job's batch script's own output
    cwd: str


class RayHandle(TypedDict):
    """A Ray job: its submission id, the task's log and exit files (the log appended to from
    `log_base` on, for a retried task), and the whole submission while it waits for the
    cluster to answer (`deferred`; else None)."""

    submission_id: str
    task: int
    log: str
    log_base: int
    exit: str
    deferred: dict[str, Any] | None
