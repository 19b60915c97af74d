"""Each executor gets its own slice of the server's settings (config.ExecutorSettings and one
subclass per built-in executor), made from Settings in one place (`of`, which
Executor.from_settings and the registry call)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest

from jobyard.config import (
    ExecutorSettings,
    GpuSpec,
    LocalExecutorSettings,
    PoolSpec,
    RayExecutorSettings,
    RaySettings,
    Settings,
    SlurmExecutorSettings,
    SlurmSettings,
)
from jobyard.executors.local.executor import LocalExecutor
from jobyard.executors.registry import load_executor
from jobyard.executors.slurm.executor import SlurmExecutor
from tests.helpers import make_settings

KINDS = [ExecutorSettings, LocalExecutorSettings, SlurmExecutorSettings, RayExecutorSettings]


@pytest.mark.parametrize("kind", KINDS)
def test_an_executors_settings_are_the_servers_of_the_same_names(
    kind: type[ExecutorSettings], tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path,
        node_name="n7",
        max_tasks=9,
        default_image="img",
        slurm=SlurmSettings(partition="gpu"),
        ray=RaySettings(address="http://127.0.0.1:1", pool_can_grow=False),
    )
    mine = kind.of(settings)
    assert set(kind.model_fields) <= set(Settings.model_fields)
    for name in kind.model_fields:
        if name not in ("cpus", "memory_mib", "gpus"):  # the local pool's: below
            assert getattr(mine, name) == getattr(settings, name), name
    assert (mine.logs_dir, mine.jobs_dir) == (settings.logs_dir, settings.jobs_dir)
    assert mine.find_environment(None) == settings.find_environment(None)
    assert not hasattr(mine, "database_url") and not hasattr(mine, "max_page_size")


def test_the_local_pools_own_capacity_wins_over_the_servers(tmp_path: Path) -> None:
    gpus = [GpuSpec(index=0, model="A100")]
    declared = make_settings(tmp_path, pools=[PoolSpec(name="local", cpus=3, gpus=gpus)])
    local = LocalExecutorSettings.of(declared)
    assert (local.cpus, local.memory_mib, local.gpus) == (3, 16384, gpus)
    server = LocalExecutorSettings.of(make_settings(tmp_path, cpus=5, memory_mib=None))
    assert (server.cpus, server.memory_mib, server.gpus) == (5, None, [])


def test_the_registry_builds_each_executor_with_its_own_settings(tmp_path: Path) -> None:
    executor = load_executor("local", make_settings(tmp_path))
    assert isinstance(executor, LocalExecutor)
    assert type(executor._settings) is LocalExecutorSettings
    assert executor.capacity().cpus == 8  # make_settings' cpus, through LocalExecutorSettings
    assert LocalExecutor.settings_type is LocalExecutorSettings
    assert SlurmExecutor.settings_type is SlurmExecutorSettings
    if importlib.util.find_spec("ray") is not None:  # the Ray executor needs ray installed
        ray = importlib.import_module("jobyard.executors.ray.executor")
        assert ray.RayExecutor.settings_type is RayExecutorSettings
