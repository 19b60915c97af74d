"""What a pool offers, and whether a request could ever fit in it. Pure data."""

from __future__ import annotations

from pydantic import BaseModel, Field

from jobyard.model.job import Resources


class GpuInfo(BaseModel):
    index: int
    model: str = "unknown"
    memory_mib: int = 0


class Capacity(BaseModel):
    """What one pool offers. Zero-request jobs still count against `max_tasks`."""

    node: str
    cpus: float
    memory_mib: int
    gpus: list[GpuInfo] = Field(default_factory=list)
    max_tasks: int


def gpu_matches(gpu: GpuInfo, resources: Resources) -> bool:
    wanted = resources.gpu_model
    return not wanted or wanted.lower() in gpu.model.lower()


def why_never_fits(
    capacity: Capacity, resources: Resources, replicas: int
) -> tuple[str, str] | None:
    """(field, problem) if a job can never run in this pool, else None."""
    if replicas > capacity.max_tasks:
        return "replicas", f"{replicas} exceeds the pool's {capacity.max_tasks} task slots"
    if resources.cpus * replicas > capacity.cpus:
        return (
            "resources.cpus",
            f"needs {resources.cpus * replicas:g} CPUs, the pool has {capacity.cpus:g}",
        )
    if resources.memory * replicas > capacity.memory_mib:
        return (
            "resources.memory",
            f"needs {resources.memory * replicas} MiB, the pool has {capacity.memory_mib} MiB",
        )
    matching = [g for g in capacity.gpus if gpu_matches(g, resources)]
    if resources.gpus * replicas > len(matching):
        model = f" of model {resources.gpu_model!r}" if resources.gpu_model else ""
        return (
            "resources.gpus",
            f"needs {resources.gpus * replicas} GPUs{model}, the pool has {len(matching)}",
        )
    return None
