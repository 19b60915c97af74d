"""A scripted GPU source for usage tests: a real `GpuSource` (executors/usage.py) whose figures
the test sets, in place of NVML (no patching)."""

from __future__ import annotations

import threading

from jobyard.executors.usage import GpuReading

GIB = 2**30


class ScriptedGpus:
    """GPUs 0..count-1 of `total_gib` each, at the utilisation the test last set."""

    def __init__(self, count: int = 2, total_gib: int = 80) -> None:
        self._lock = threading.Lock()
        self._figures = {i: GpuReading(i, 0.0, 0, total_gib * GIB) for i in range(count)}
        self.reads = 0
        self.closed = False

    def set(self, index: int, utilization_percent: float, used_gib: float = 1.0) -> None:
        with self._lock:
            total = self._figures[index].memory_total_bytes
            self._figures[index] = GpuReading(
                index, utilization_percent, int(used_gib * GIB), total
            )

    def read(self) -> dict[int, GpuReading] | None:
        with self._lock:
            self.reads += 1
            return dict(self._figures)

    def close(self) -> None:
        self.closed = True
