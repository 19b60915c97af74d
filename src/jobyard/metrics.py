"""The server's Prometheus metrics: one registry per server (no module-level singleton, so tests
build their own), its instruments, and the figures read when a scrape comes.

Instruments (counted as things happen):
    jobyard_jobs_submitted_total                    jobs accepted (committed) by any face
    jobyard_scheduling_pass_seconds                 one reconciler pass (histogram)
    jobyard_submit_to_running_seconds               a job's submission to its RUNNING (histogram)
    jobyard_queue_wait_seconds                      a job's submission to its start (histogram)
    jobyard_reconciler_errors_total                 passes that raised
    jobyard_store_commit_seconds                    one commit of the store's writer (histogram)
    jobyard_http_requests_total{method,route,status}
    jobyard_http_request_seconds{method,route}      (histogram)

Read at scrape time, from sources the composition root registers (see `Source`): jobs by
state, queue and pool; running tasks; CPUs, memory and GPUs per pool (total and used).
Nothing here imports the rest of jobyard.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Source = Callable[[], Awaitable[Iterable[Metric]]]
"""Figures read when a scrape comes: an async function giving finished metric families."""

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_WAITS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class _Snapshot(Collector):
    """Hands the registry the families the sources gave for the scrape in progress."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.submitted = Counter("jobyard_jobs_submitted", "Jobs accepted.", registry=r)
        self.scheduling_pass = Histogram(
            "jobyard_scheduling_pass_seconds", "One reconciler pass.", buckets=_FAST, registry=r
        )
        self.submit_to_running = Histogram(
            "jobyard_submit_to_running_seconds",
            "From a job's submission to its RUNNING state.",
            buckets=_WAITS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "jobyard_queue_wait_seconds",
            "From a job's submission to the start of its tasks.",
            buckets=_WAITS,
            registry=r,
        )
        self.reconciler_errors = Counter(
            "jobyard_reconciler_errors", "Reconciler passes that raised.", registry=r
        )
        self.store_commit = Histogram(
            "jobyard_store_commit_seconds", "One commit of the store's writer.", buckets=_FAST,
            registry=r,
        )  # fmt: skip
        self.http_requests = Counter(
            "jobyard_http_requests",
            "HTTP requests answered, by route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "jobyard_http_request_seconds",
            "Time to answer an HTTP request (to the start of its body for streams).",
            ["method", "route"],
            buckets=_FAST,
            registry=r,
        )
        self._snapshot = _Snapshot()
        r.register(self._snapshot)
        self._sources: list[Source] = []
        self._lock = asyncio.Lock()

    def add_source(self, source: Source) -> None:
        self._sources.append(source)

    async def exposition(self) -> bytes:
        """The registry in Prometheus' text format, with every source read afresh."""
        async with self._lock:  # one scrape at a time owns the snapshot
            families: list[Metric] = []
            for source in self._sources:
                families.extend(await source())
            self._snapshot.families = families
            try:
                return generate_latest(self.registry)
            finally:
                self._snapshot.families = []
