"""The scheduler on its own: one pass over 10,000 queued jobs (20 users, 4 queues), and how many
jobs per second it admits when capacity frees, with an in-memory executor that starts nothing.

The store is a real SQLite file; the reconciler is the real one. Only the executor is fake, so
the figures are the scheduler's and the store's, not the cost of forking processes.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from bench.report import Result, at_least, at_most, info, percentile
from jobyard.config import QueueSpec, Settings
from jobyard.executors.base import Capacity, Executor, Handle, StartedTask, TaskReport
from jobyard.model import JobSpec, Placement, Resources, TaskState
from jobyard.scheduler.reconciler import Reconciler
from jobyard.store import jobs as q
from jobyard.store.db import Database, migrate

USERS = 20
QUEUES = ("default", "gpu", "batch", "urgent")


class NullExecutor(Executor):
    """Starts nothing; every task it is given runs until the benchmark says otherwise."""

    kind: ClassVar[str] = "null"

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.started = 0

    async def start(self, placement: Placement) -> list[StartedTask]:
        self.started += 1
        return [
            StartedTask(index=t.index, pid=None, node="bench", handle={"n": self.started})
            for t in placement.tasks
        ]

    async def poll(self, handles: Sequence[Handle]) -> list[TaskReport]:
        return [TaskReport(TaskState.RUNNING) for _ in handles]

    async def stop(self, handle: Handle, grace: float) -> None:  # noqa: ARG002
        return None

    def capacity(self) -> Capacity:
        return Capacity(node="bench", cpus=self.slots, memory_mib=1 << 30, max_tasks=self.slots)

    def check_spec_supported(self, placement_spec: Any) -> None:  # noqa: ARG002
        return None

    def read_log(self, handle: Handle, offset: int, limit: int) -> bytes:  # noqa: ARG002
        return b""

    def log_size(self, handle: Handle) -> int:  # noqa: ARG002
        return 0

    def release(self, handle: Handle, *, remove_files: bool) -> None:  # noqa: ARG002
        return None


def _settings(home: Path) -> Settings:
    return Settings(
        home=home,
        reconcile_interval_seconds=3600,  # no periodic full reloads inside a measurement
        queues=[QueueSpec(name=name, priority=10 * i) for i, name in enumerate(QUEUES)],
    )


def _fill(db: Database, count: int) -> None:
    spec = JobSpec(entrypoint="true", resources=Resources(cpus=1))

    def insert(conn: Any) -> None:
        for i in range(count):
            q.insert_new_job(
                conn,
                q.NewJob(
                    owner=f"user{i % USERS}",
                    submission_id=f"bench-{i}",
                    request_hash="bench",
                    name="bench",
                    queue=QUEUES[i % len(QUEUES)],
                    pool="local",
                    priority=0,
                    labels={},
                    spec=spec,
                ),
                time.time(),
            )

    db.write_sync(insert)


async def _measure(count: int, passes: int) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="jobyard-bench-") as tmp:
        home = Path(tmp)
        settings = _settings(home)
        migrate(settings.effective_database_url)
        db = Database(settings.effective_database_url)
        try:
            _fill(db, count)
            # Phase 1: no free capacity at all, every job stays queued: the pass is pure
            # planning (order, fair share, quotas, pending reasons) over all of them.
            executor = NullExecutor(slots=0)
            reconciler = Reconciler(db, executor, settings)
            reconciler.leading = True  # driven pass by pass here, as the scheduling server
            started = time.perf_counter()
            await reconciler.tick()  # cold: reads every queued job, writes every pending reason
            cold = time.perf_counter() - started
            times = []
            for _ in range(passes):
                reconciler.wake()
                started = time.perf_counter()
                await reconciler.tick()
                times.append(time.perf_counter() - started)
            # Phase 2: capacity for all of them frees at once: admissions per second.
            executor.slots = count
            reconciler.wake()
            started = time.perf_counter()
            while executor.started < count:
                await reconciler.tick()
                reconciler.wake()
            admitted = count / (time.perf_counter() - started)
        finally:
            db.close()
    scenario = "scheduler"
    note = f"{count} queued jobs, {USERS} users, {len(QUEUES)} queues, null executor"
    return [
        at_most(scenario, "scheduling pass, p50", percentile(times, 0.5) * 1000, "ms", 50, note),
        info(scenario, "scheduling pass, max", max(times) * 1000, "ms", note),
        info(scenario, "first pass (reads and records every job)", cold * 1000, "ms", note),
        at_least(scenario, "admissions when capacity frees", admitted, "jobs/s", 2000, note),
    ]


def scheduler(options: Any) -> list[Result]:
    """One scheduling pass over 10,000 queued jobs; admissions/s when capacity frees."""
    count = 2_000 if getattr(options, "quick", False) else 10_000
    return asyncio.run(_measure(count, passes=5 if getattr(options, "quick", False) else 20))
