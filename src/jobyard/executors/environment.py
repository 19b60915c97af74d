"""What every executor gives a task's environment: the catalog entry the spec names (its
virtualenv, PATH prefix and variables), the spec's env, jobyard's ids and the declared ports."""

from __future__ import annotations

import os

from jobyard.config import EnvironmentSpec, ExecutorSettings
from jobyard.errors import ExecutorRefused
from jobyard.executors.containers import looks_like_reference, reference_problem
from jobyard.model import JobSpec, Placement
from jobyard.model.job import TaskPlacement


def catalog_entry(
    settings: ExecutorSettings, spec: JobSpec, *, kind: str
) -> EnvironmentSpec | None:
    """The catalog entry the spec's image names; None for the server's own environment (no
    image and no host entry). A container image, or a name the catalog lacks, is refused."""
    entry = settings.find_environment(spec.image)
    if spec.image is None and (entry is None or entry.image is not None):
        return None
    if entry is None and spec.image is not None and not looks_like_reference(spec.image):
        raise ExecutorRefused(unknown_word(settings, spec.image), field="image")
    if entry is None or entry.image is not None:
        known = ", ".join(f"{e.id} ({e.name})" for e in settings.environments if e.image is None)
        raise ExecutorRefused(
            f"the {kind} executor runs jobs as processes and cannot run the container image "
            f"{spec.image!r}; use an environment of the catalog: {known or 'none'}",
            field="image",
        )
    return entry


def unknown_word(settings: ExecutorSettings, word: str) -> str:
    """Why a plain word (no '/', ':' or '@') that no catalog entry is called is refused, and
    what `image` takes instead: a plain word names a catalog entry only (so a mistyped name is
    not pulled from a registry), and an image reference says its tag, registry or digest."""
    entries = ", ".join(f"{e.id} ({e.name})" for e in settings.environments) or "none"
    tagged = f"{word}:latest"
    example = f"{tagged!r}, " if reference_problem(tagged) is None else ""
    return (
        f"{word!r} is not an environment of the catalog, and a plain word names nothing else; "
        f"image takes a catalog entry's id or name (here: {entries}) or a container image "
        f"reference with a tag, a registry or a digest (e.g. {example}'docker.io/library/"
        "python:3.11', 'registry.example.com:5000/team/tool@sha256:<digest>')"
    )


def task_environment(
    placement: Placement, task: TaskPlacement, entry: EnvironmentSpec | None, path: str
) -> dict[str, str]:
    """The variables a task gets on top of what it inherits (whose PATH is `path`): the catalog
    entry's, the spec's env, JOBYARD_JOB_ID/_DISPLAY_ID/_TASK_NAME/_TASK_INDEX, and
    JOBYARD_PORT_<n> per declared port (PORT too when exactly one is HTTP). The program listens
    on the ports it declared, on its node; the gateway reaches it there."""
    env: dict[str, str] = {}
    if entry is not None:
        prefix = list(entry.path_prefix)
        if entry.venv is not None:
            prefix.insert(0, str(entry.venv / "bin"))
            env["VIRTUAL_ENV"] = str(entry.venv)
        if prefix:
            env["PATH"] = os.pathsep.join([*prefix, path])
        env.update(entry.env)
    env.update(placement.spec.env)
    env.update(
        JOBYARD_JOB_ID=str(placement.job_id),
        JOBYARD_DISPLAY_ID=placement.display_id,
        JOBYARD_TASK_NAME=task.name,
        JOBYARD_TASK_INDEX=str(task.index),
    )
    for item in placement.spec.ports:
        env[f"JOBYARD_PORT_{item.port}"] = str(item.port)
    http = [item.port for item in placement.spec.ports if item.protocol == "http"]
    if len(http) == 1:
        env["PORT"] = str(http[0])
    return env
