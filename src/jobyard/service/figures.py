"""The figures a Prometheus scrape reads afresh (sources for `jobyard.metrics.Metrics`): jobs by
state, queue and pool, from one GROUP BY; running tasks and each pool's CPUs, memory and GPUs,
from the same pool views `GET /api/v1/pools` answers with."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily, Metric

from jobyard.metrics import Source
from jobyard.model import JobState
from jobyard.service.jobs import JobService, PoolView, ResourceUse
from jobyard.store import scheduling as store_scheduling
from jobyard.store.db import Database

_Figure = Callable[[PoolView], float]
_Use = Callable[[ResourceUse], float]


def job_counts(db: Database, jobs: JobService) -> Source:
    """jobyard_jobs{state,queue,pool}: every state of every queue, 0 where none."""

    async def read() -> Iterable[Metric]:
        counts = await db.read(store_scheduling.counts_by_queue)
        family = GaugeMetricFamily(
            "jobyard_jobs", "Jobs by state, queue and pool.", labels=["state", "queue", "pool"]
        )
        for queue in jobs.queues():
            for state in JobState:
                n = counts.get((queue.name, state.value), 0)
                family.add_metric([state.value, queue.name, queue.pool], n)
        return [family]

    return read


def pool_figures(jobs: JobService) -> Source:
    """Running tasks, and CPUs, memory and GPUs per pool: what it has and what is held."""

    async def read() -> Iterable[Metric]:
        views = await jobs.pool_views()
        return [
            _per_pool(views, "jobyard_running_tasks", "Tasks running.", lambda v: v.in_use.tasks),
            *_have_and_hold(views, "cpus", "CPUs", lambda u: u.cpus),
            *_have_and_hold(views, "memory_bytes", "Memory", lambda u: u.memory_mib * 2**20),
            *_have_and_hold(views, "gpus", "GPUs", lambda u: u.gpus),
        ]

    return read


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
