"""The figures a Prometheus scrape reads afresh (a source for `jobyard.metrics.Metrics`): jobs by
state, queue and pool, from one GROUP BY (over the (queue, state) index); running tasks and each
pool's CPUs, memory and GPUs, from the same pool views `GET /api/v1/pools` answers with. Both
come from one store read per scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily, Metric

from jobyard.metrics import Source
from jobyard.model import JobState
from jobyard.service.jobs import JobService, PoolView, ResourceUse

_Figure = Callable[[PoolView], float]
_Use = Callable[[ResourceUse], float]


def jobs_and_pools(jobs: JobService) -> Source:
    """jobyard_jobs{state,queue,pool} (every state of every queue, 0 where none), running tasks,
    and what each pool has and holds."""

    async def read() -> Iterable[Metric]:
        views, counts = await jobs.pool_views_and_counts()
        return [
            _job_counts(jobs, counts),
            _per_pool(views, "jobyard_running_tasks", "Tasks running.", lambda v: v.in_use.tasks),
            *_have_and_hold(views, "cpus", "CPUs", lambda u: u.cpus),
            *_have_and_hold(views, "memory_bytes", "Memory", lambda u: u.memory_mib * 2**20),
            *_have_and_hold(views, "gpus", "GPUs", lambda u: u.gpus),
        ]

    return read


def _job_counts(jobs: JobService, counts: dict[tuple[str, str], int]) -> Metric:
    family = GaugeMetricFamily(
        "jobyard_jobs", "Jobs by state, queue and pool.", labels=["state", "queue", "pool"]
    )
    for queue in jobs.queues():
        for state in JobState:
            n = counts.get((queue.name, state.value), 0)
            family.add_metric([state.value, queue.name, queue.pool], n)
    return family


def _per_pool(views: list[PoolView], name: str, doc: str, value: _Figure) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=["pool"])
    for view in views:
        family.add_metric([view.name], value(view))
    return family


def _have_and_hold(views: list[PoolView], unit: str, what: str, value: _Use) -> list[Metric]:
    name = f"jobyard_pool_{unit}"
    have = _per_pool(views, name, f"{what} a pool has.", lambda v: value(v.capacity))
    hold = _per_pool(
        views, f"{name}_used", f"{what} its live jobs hold.", lambda v: value(v.in_use)
    )
    return [have, hold]
