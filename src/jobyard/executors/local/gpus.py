"""GPU discovery: NVML where present, else the configured inventory, else none."""

from __future__ import annotations

import logging

from jobyard.config import GpuSpec
from jobyard.model.capacity import GpuInfo

log = logging.getLogger(__name__)


def discover_gpus(configured: list[GpuSpec] | None) -> list[GpuInfo]:
    if configured is not None:
        return [GpuInfo(index=g.index, model=g.model, memory_mib=g.memory_mib) for g in configured]
    return _nvml_gpus()


def _nvml_gpus() -> list[GpuInfo]:
    try:
        import pynvml  # optional dependency: jobyard[gpu]
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.info("no NVIDIA GPUs found (%s)", exc)
        return []
    try:
        return [_nvml_gpu(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()


def _nvml_gpu(pynvml: object, index: int) -> GpuInfo:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)  # type: ignore[attr-defined]
    name = pynvml.nvmlDeviceGetName(handle)  # type: ignore[attr-defined]
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)  # type: ignore[attr-defined]
    model = name.decode() if isinstance(name, bytes) else str(name)
    return GpuInfo(index=index, model=model, memory_mib=int(memory.total) // 2**20)
