"""What a running task uses, sampled every few seconds: CPU, memory and its GPUs. Pure data.

A figure that could not be measured is absent (None), never zero: a task on a machine without
NVML has `gpus` None; a task with no GPU of its own has `gpus` [].
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class GpuUsage(BaseModel):
    """One GPU of a task, as NVML reports the device: busy time and memory in use."""

    index: int
    utilization_percent: float = Field(description="share of the last sample period busy, 0-100")
    memory_used_bytes: int
    memory_total_bytes: int


class UsageSample(BaseModel):
    """One sample of one task: its process tree's CPU and memory, and each of its GPUs."""

    timestamp: datetime
    cpu_cores: float | None = Field(
        description="CPU time of the task's processes over the last interval / that interval "
        "(1.0: one core busy); None: not measured"
    )
    memory_rss_bytes: int | None = Field(
        description="resident memory of the task's processes, summed; None: not measured"
    )
    gpus: list[GpuUsage] | None = Field(
        description="each GPU of the task; [] the task has none; None: no GPU figures here"
    )


class TaskUsage(BaseModel):
    index: int
    name: str
    samples: list[UsageSample]


class JobUsage(BaseModel):
    """A job's samples, task by task, oldest first; kept after the job ends."""

    job_id: int
    display_id: str
    interval_seconds: float
    tasks: list[TaskUsage]
