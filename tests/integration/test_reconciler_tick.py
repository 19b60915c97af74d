"""The reconciler driven one tick() at a time, with no sleeps: a scripted executor over a real
SQLite store. Pending reasons follow the situation; retries wait out their backoff."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from sqlalchemy import Connection

from jobyard.config import GpuSpec, QueueSpec, Settings
from jobyard.errors import ExecutorUnavailable
from jobyard.executors.base import (
    Capacity,
    Executor,
    GpuInfo,
    Handle,
    InterruptedStart,
    StartedTask,
    TaskReport,
)
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
        # find_started: which tasks of each job a crash caught mid-start left (default none),
        # and whether the executor cannot tell yet (raises)
        self.left: dict[int, list[bool]] = {}
        self.cannot_tell = False

    async def start(self, placement: Placement) -> list[StartedTask]:
        for value in placement.spec.env.values():
            value.encode()  # what a spawn does: a lone surrogate raises UnicodeEncodeError
        self.starts.append(placement)
        self.left[placement.job_id] = [True] * len(placement.tasks)  # its processes run
        self.codes[placement.job_id] = None
        return [
            StartedTask(t.index, None, "n1", {"job": placement.job_id}) for t in placement.tasks
        ]

    async def find_started(
        self, starts: Sequence[InterruptedStart]
    ) -> list[list[StartedTask | None]]:
        if self.cannot_tell:
            raise TimeoutError("the cluster does not answer")
        found: list[list[StartedTask | None]] = []
        for start in starts:
            job_id, left = start.placement.job_id, self.left.get(start.placement.job_id, [])
            if any(left):
                self.codes[job_id] = None
            found.append(
                [
                    StartedTask(t.index, None, "n1", {"job": job_id})
                    if t.index < len(left) and left[t.index]
                    else None
                    for t in start.placement.tasks
                ]
            )
        return found

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
T = TypeVar("T")


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


async def test_a_start_that_raises_fails_that_job_alone(world: Any) -> None:
    """A value that makes one job's start raise (here a lone surrogate in its env, which the
    API refuses at the edge, stored directly) fails that job only: the pass goes on."""
    reconciler, executor, db, clock = world
    first = await submit(db, "alice", clock)
    bad_spec = JobSpec.model_construct(entrypoint="true", env={"BAD": "\ud800"})
    new = new_job(owner="alice", submission_id="bad", pool="local", spec=bad_spec)
    bad = (await db.write(lambda c: q.insert_new_job(c, new, clock.now))).id
    last = await submit(db, "bob", clock)
    await tick(reconciler)
    assert sorted(p.job_id for p in executor.starts) == [first, last]
    for job_id in (first, last):
        assert (await load(db, job_id)).state is JobState.RUNNING
    failed = await load(db, bad)
    assert (failed.state, failed.reason) == (JobState.FAILED, "START_FAILED")
    events = await db.read(lambda c: q.list_events(c, bad))
    assert any("UnicodeEncodeError" in e.message for e in events), events
    executor.finish(first, 0)
    await tick(reconciler)
    assert (await load(db, first)).state is JobState.SUCCEEDED


async def _caught_mid_start(db: Database, clock: Clock, **spec: Any) -> int:
    """A job as a kill -9 leaves it between the claim and the write of its handles."""
    job_id = await submit(db, "alice", clock, **spec)

    def claim(conn: Any) -> None:
        q.transition(conn, job_id, q.Transition(JobState.STARTING), clock.now)

    await db.write(claim)
    return job_id


async def test_jobs_caught_mid_start_are_adopted_stopped_or_lost(world: Any) -> None:
    reconciler, executor, db, clock = world
    whole = await _caught_mid_start(db, clock)
    partial = await _caught_mid_start(db, clock, replicas=2)
    nothing = await _caught_mid_start(db, clock)
    retried = await _caught_mid_start(db, clock, max_retries=1)
    executor.left = {whole: [True], partial: [True, False]}
    executor.cannot_tell = True
    await reconciler.recover()
    clock.now += 3600  # far past start_timeout_seconds: still held, not failed
    await tick(reconciler)
    for job_id in (whole, partial, nothing, retried):
        assert (await load(db, job_id)).state is JobState.STARTING

    executor.cannot_tell = False
    await tick(reconciler)
    adopted = await load(db, whole)
    assert adopted.state is JobState.RUNNING and adopted.tasks[0].handle == {"job": whole}
    lost = await load(db, nothing)
    assert (lost.state, lost.reason) == (JobState.FAILED, "LOST")
    assert lost.message == "server restarted while starting; the process was not found"
    again = await load(db, retried)
    assert (again.state, again.attempt) == (JobState.QUEUED, 1)
    stopping = await load(db, partial)
    assert (stopping.state, stopping.stop_reason) == (JobState.STOPPING, "LOST")
    assert [t.state for t in stopping.tasks] == [TaskState.RUNNING, TaskState.LOST]
    events = await db.read(lambda c: q.list_events(c, partial))
    assert f"{stopping.tasks[1].name} not found: stopping" in events[-1].message

    await tick(reconciler)  # the found task is stopped, and only then does the job end
    ended = await load(db, partial)
    assert (ended.state, ended.reason) == (JobState.FAILED, "LOST")
    assert ended.message.startswith(f"{ended.tasks[1].name} was lost")
    executor.finish(whole, 6)
    await tick(reconciler)
    done = await load(db, whole)
    assert (done.state, done.exit_code) == (JobState.FAILED, 6)


class RefusingDatabase(Database):
    """A store whose writes fail while `refusing` is set (as on a full disk)."""

    refusing = False

    async def write(self, fn: Callable[[Connection], T]) -> T:
        if self.refusing:
            raise ExecutorUnavailable("the disk holding jobyard's database is full")
        return await super().write(fn)


class StartThenRefuse(ScriptedExecutor):
    def __init__(self, capacity: Capacity, db: RefusingDatabase) -> None:
        super().__init__(capacity)
        self._db = db

    async def start(self, placement: Placement) -> list[StartedTask]:
        started = await super().start(placement)
        self._db.refusing = True  # the write that would store the handles fails
        return started


async def test_starts_whose_handles_could_not_be_stored_are_found_not_failed(
    world: Any, tmp_path: Path
) -> None:
    _, scripted, db, clock = world
    refusing = RefusingDatabase(db.url)
    executor = StartThenRefuse(scripted.capacity(), refusing)
    reconciler = Reconciler(refusing, executor, Settings(home=tmp_path), clock=clock)
    reconciler.leading = True
    job_id = await submit(db, "alice", clock)
    with pytest.raises(ExecutorUnavailable):
        await tick(reconciler)
    assert (await load(db, job_id)).state is JobState.STARTING
    refusing.refusing = False
    clock.now += 3600  # past start_timeout_seconds: found again, not failed as stuck
    await tick(reconciler)
    job = await load(db, job_id)
    assert job.state is JobState.RUNNING and job.tasks[0].handle == {"job": job_id}
    assert len(executor.starts) == 1
    refusing.close()
