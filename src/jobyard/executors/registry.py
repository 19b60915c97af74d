"""Executors by name: import strings, imported only when chosen (optional deps stay optional)."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from jobyard.config import Settings
from jobyard.errors import ExecutorUnavailable, InvalidInput
from jobyard.executors.base import Executor

BUILTIN: dict[str, str] = {
    "local": "jobyard.executors.local.executor:LocalExecutor",
    "slurm": "jobyard.executors.slurm.executor:SlurmExecutor",
    "ray": "jobyard.executors.ray.executor:RayExecutor",
}


def _import_string(name: str) -> str:
    if name in BUILTIN:
        return BUILTIN[name]
    for ep in entry_points(group="jobyard.executors"):
        if ep.name == name:
            return str(ep.value)
    known = sorted([*BUILTIN, *(ep.name for ep in entry_points(group="jobyard.executors"))])
    raise InvalidInput(f"unknown executor {name!r}; known: {', '.join(known)}", field="executor")


def load_executor(name: str, settings: Settings) -> Executor:
    """The executor `name`, built with its own settings (Executor.from_settings)."""
    module_name, _, attr = _import_string(name).partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ExecutorUnavailable(
            f"executor {name!r} needs: pip install jobyard[{name}] ({exc})"
        ) from exc
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, Executor)):
        raise ExecutorUnavailable(f"{module_name}:{attr} is not an Executor")
    return cls.from_settings(settings)
