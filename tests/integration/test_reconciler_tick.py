"""The reconciler driven one tick() at a time, with no sleeps: a scripted executor over a real
SQLite store. Pending reasons follow the situation; retries wait out their backoff."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from jobyard.config import GpuSpec, QueueSpec, Settings
from jobyard.executors.base import Capacity, Executor, GpuInfo, Handle, StartedTask, TaskReport
from jobyard.model import Job, JobSpec, JobState, Placement, Resources, TaskState
from jobyard.scheduler.reconciler import Reconciler
from jobyard.store import jobs as q
from jobyard.store.db import Database, migrate
from tests.factories import new_job


class ScriptedExecutor(Executor):
    """Tasks run until the test ends them with `finish(job_id, code)`."""

    kind: ClassVar[str] = "scripted"

    def __init__(self, capacity: Capacity) -> None:
        self._capacity = capacity
        self.codes: dict[int, int | None] = {}
        self.starts: list[Placement] = []

    async def start(self, placement: Placement) -> list[StartedTask]:
        self.starts.append(placement)
        self.codes[placement.job_id] = None
        return [
            StartedTask(t.index, None, "n1", {"job": placement.job_id}) for t in placement.tasks
        ]

    async def poll(self, handles: Sequence[Handle]) -> list[TaskReport]:
        reports = []
        for handle in handles:
            code = self.codes.get(handle["job"])
            reports.append(
                TaskReport(TaskState.RUNNING)
                if code is None
                else TaskReport(TaskState.EXITED, code)
            )
        return reports

    def finish(self, job_id: int, code: int) -> None:
        self.codes[job_id] = code

    async def stop(self, handle: Handle, grace: float) -> None:
        self.codes[handle["job"]] = -15

    def capacity(self) -> Capacity:
        return self._capacity

    def check_spec_supported(self, placement_spec: Any) -> None:
        return None

    def read_log(self, handle: Handle, offset: int, limit: int) -> bytes:
        return b""

    def log_size(self, handle: Handle) -> int:
        return 0

    def release(self, handle: Handle, *, remove_files: bool) -> None:
        return None


_SEQUENCE = itertools.count()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def world(
    tmp_path: Path,
) -> AsyncIterator[tuple[Reconciler, ScriptedExecutor, Database, Clock]]:
    settings = Settings(
        home=tmp_path,
        gpus=[GpuSpec(index=i, model="NVIDIA A16") for i in range(2)],
        queues=[QueueSpec(name="default", max_gpus_per_user=1)],
        retry_backoff_seconds=30,
        reservation_after_seconds=3600,
    )
    migrate(settings.effective_database_url)
    db = Database(settings.effective_database_url)
    capacity = Capacity(
        node="n1",
        cpus=4,
        memory_mib=8192,
        max_tasks=16,
        gpus=[GpuInfo(index=i, model="NVIDIA A16") for i in range(2)],
    )
    executor = ScriptedExecutor(capacity)
    clock = Clock()
    reconciler = Reconciler(db, executor, settings, clock=clock)
    reconciler.leading = True  # the test drives the passes itself, as the scheduling server
    yield reconciler, executor, db, clock
    db.close()


async def submit(db: Database, owner: str, clock: Clock, **spec: Any) -> int:
    spec_ = JobSpec(**{"entrypoint": "true", **spec})
    new = new_job(owner=owner, submission_id=f"s-{next(_SEQUENCE)}", pool="local", spec=spec_)
    job = await db.write(lambda c: q.insert_new_job(c, new, clock.now))
    return job.id


async def load(db: Database, job_id: int) -> Job:
    (job,) = await db.read(lambda c: q.load_jobs(c, [job_id], with_log=True))
    return job


async def tick(reconciler: Reconciler) -> None:
    reconciler.wake()
    await reconciler.tick()


async def test_pending_reasons_follow_the_situation(world: Any) -> None:
    reconciler, executor, db, clock = world
    first = await submit(db, "alice", clock, resources=Resources(gpus=1))
    second = await submit(db, "alice", clock, resources=Resources(gpus=1))
    third = await submit(db, "bob", clock, resources=Resources(cpus=4))
    fourth = await submit(db, "bob", clock, resources=Resources(cpus=1))
    await tick(reconciler)
    assert [p.job_id for p in executor.starts] == [first, third]
    waiting = await load(db, second)
    assert (waiting.state, waiting.pending_reason) == (JobState.QUEUED, "QUOTA_EXCEEDED")
    assert (await load(db, fourth)).pending_reason == "WAITING_FOR_CAPACITY"

    executor.finish(third, 0)
    await tick(reconciler)
    assert executor.starts[-1].job_id == fourth
    assert (await load(db, third)).state is JobState.SUCCEEDED

    executor.finish(first, 0)
    await tick(reconciler)
    await tick(reconciler)
    assert executor.starts[-1].job_id == second
    events = await db.read(lambda c: q.list_events(c, second))
    pending = [e.message for e in events if e.reason == "Pending"]
    assert len(pending) == 1 and pending[0].startswith("QUOTA_EXCEEDED")


async def test_a_retry_waits_out_its_backoff_then_runs_again(world: Any) -> None:
    reconciler, executor, db, clock = world
    job_id = await submit(db, "alice", clock, max_retries=1)
    await tick(reconciler)
    executor.finish(job_id, 7)
    await tick(reconciler)
    job = await load(db, job_id)
    assert (job.state, job.attempt, job.pending_reason) == (JobState.QUEUED, 1, "BACKOFF")
    assert [(a.attempt, a.exit_code) for a in job.attempts] == [(0, 7)]

    clock.now += 29  # still inside the 30 s backoff
    await tick(reconciler)
    assert len(executor.starts) == 1
    clock.now += 2
    await tick(reconciler)
    assert len(executor.starts) == 2
    executor.finish(job_id, 7)
    await tick(reconciler)
    job = await load(db, job_id)
    assert (job.state, job.exit_code, job.reason) == (JobState.FAILED, 7, "EXIT_NONZERO")


async def test_no_gpu_is_handed_out_twice_across_ticks(world: Any) -> None:
    reconciler, executor, db, clock = world
    ids = [await submit(db, f"user{i}", clock, resources=Resources(gpus=1)) for i in range(5)]
    for _ in range(3):
        await tick(reconciler)
    running = [p for p in executor.starts]
    assert sorted(g for p in running for t in p.tasks for g in t.gpus) == [0, 1]
    executor.finish(running[0].job_id, 0)
    await tick(reconciler)
    await tick(reconciler)
    live = [p for p in executor.starts if executor.codes[p.job_id] is None]
    assert sorted(g for p in live for t in p.tasks for g in t.gpus) == [0, 1]
    assert len(executor.starts) == 3 and ids
