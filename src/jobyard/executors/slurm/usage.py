"""What jobyard's tasks use on Slurm, from `sstat` (the executor's `task_usage`).

The tasks run on the cluster's nodes, where this server sees no processes, so their figures come
from Slurm's own job accounting: one `sstat -a` per sampling pass for every running job, which
answers from the nodes' slurmd with what `jobacct_gather` last gathered (every
`JobAcctGatherFrequency` seconds). It needs `JobAcctGatherType` other than `jobacct_gather/none`
(asked of `scontrol show config` once); without it there are no figures, not zeros.

A one-task job runs in its batch step, so the task's figures are that step's. A multi-worker job
runs its tasks in one `srun` step, and sstat gives a step's figures per task only as averages
(`TRESUsageInAve`): each of its tasks shows the step's average. After a job ends sstat knows
nothing of it; `sacct` would (MaxRSS, TotalCPU), but only with accounting storage (slurmdbd), so
a finished task keeps the last sample taken while it ran.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from jobyard.executors.slurm.parse import SSTAT_FORMAT, StepUsage
from jobyard.executors.usage import ReportedUsage

NO_GATHER = "jobacct_gather/none"


def sstat_args(job_ids: Iterable[str]) -> list[str]:
    """Every step of these jobs (their own ids: an array element's, not `12_3`)."""
    return ["-n", "-P", "-a", "-j", ",".join(job_ids), "--format", SSTAT_FORMAT]


def gather_type(config: str) -> str | None:
    """JobAcctGatherType from `scontrol show config`; None if it is not there."""
    for line in config.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "JobAcctGatherType":
            return value.strip()
    return None


def by_job(steps: Iterable[StepUsage]) -> dict[str, list[StepUsage]]:
    found: dict[str, list[StepUsage]] = {}
    for step in steps:
        found.setdefault(step.job_id, []).append(step)
    return found


def task_figures(handle: Mapping[str, Any], steps: list[StepUsage]) -> ReportedUsage | None:
    """A task's figures from its job's steps: the batch step's for a one-task job, the per-task
    average of the srun step (the numbered one with the most tasks) for a multi-worker job."""
    if handle.get("batch_log"):  # a multi-worker job: its tasks run in a numbered srun step
        numbered = [s for s in steps if s.step_name.isdigit()]
        step = max(numbered, key=lambda s: (s.tasks, int(s.step_name)), default=None)
    else:
        step = next((s for s in steps if s.step_name == "batch"), None)
    if step is None or (step.cpu_seconds is None and step.rss_bytes is None):
        return None  # a step sstat lists with empty fields (its job completing): no figures
    return ReportedUsage(cpu_seconds=step.cpu_seconds, rss_bytes=step.rss_bytes)
