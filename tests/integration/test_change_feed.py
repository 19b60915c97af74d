"""Readers wait on the change feed instead of reading jobs on a timer: a log follower reads its
job again only when a change to it is published, and ends as soon as it is."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jobyard.config import Settings
from jobyard.executors.base import Capacity, Executor
from jobyard.model import Job, JobSpec, JobState, TaskState
from jobyard.service import JobRequest, JobService, LogQuery, LogService, User
from jobyard.store import jobs as q
from jobyard.store.db import Database, migrate
from tests.integration.test_reconciler_tick import ScriptedExecutor

ALICE = User(id=1, name="alice", is_admin=False)


class FileLogs(ScriptedExecutor):
    """Logs from the file the handle names, as the local executor keeps them."""

    read_log = Executor.read_log
    log_size = Executor.log_size


class CountingJobs(JobService):
    """A JobService that counts its reads of one job."""

    reads = 0

    async def get(self, user: User, ref: str) -> Job:
        self.reads += 1
        return await super().get(user, ref)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Database, CountingJobs, LogService]]:
    settings = Settings(home=tmp_path)
    migrate(settings.effective_database_url)
    db = Database(settings.effective_database_url)
    executor = FileLogs(Capacity(node="n1", cpus=4, memory_mib=4096, max_tasks=8))
    jobs = CountingJobs(db, executor, settings, wake=lambda _job_id: None)
    yield db, jobs, LogService(jobs, executor, follow_poll=0.02)
    db.close()


async def _running_job(db: Database, jobs: JobService, log: Path) -> int:
    submitted = await jobs.submit(ALICE, JobRequest(spec=JobSpec(entrypoint="true")))
    job_id = submitted.job.id

    def start(conn: Any) -> None:
        q.transition(conn, job_id, q.Transition(JobState.STARTING), time.time())
        running = q.TaskUpdate(state=TaskState.RUNNING, handle={"log": str(log)})
        q.update_tasks(conn, [(job_id, 0, running)])
        q.transition(conn, job_id, q.Transition(JobState.RUNNING), time.time())

    await db.write(start)
    return job_id


async def test_a_follower_reads_its_job_only_when_it_changes(world: Any, tmp_path: Path) -> None:
    db, jobs, logs = world
    log = tmp_path / "task.log"
    log.write_bytes(b"first\n")
    job_id = await _running_job(db, jobs, log)
    stream = await logs.follow(ALICE, str(job_id), LogQuery())
    assert await anext(stream) == b"first\n"
    reads = jobs.reads
    with log.open("ab") as f:  # the file itself is read every follow_poll
        f.write(b"second\n")
    assert await asyncio.wait_for(anext(stream), 5) == b"second\n"
    rest = asyncio.ensure_future(anext(stream, b"<end>"))
    await asyncio.sleep(0.5)  # 25 follow_polls: the job was read every 0.1 s before the feed
    assert jobs.reads == reads and not rest.done()

    def finish(conn: Any) -> None:
        ended = q.TaskUpdate(state=TaskState.EXITED, exit_code=0, finished_at=time.time())
        q.update_tasks(conn, [(job_id, 0, ended)])
        q.transition(conn, job_id, q.Transition(JobState.SUCCEEDED), time.time())

    await db.write(finish)
    with log.open("ab") as f:
        f.write(b"last\n")
    db.feed.publish([job_id])  # what the reconciler does after each of its writes
    assert await asyncio.wait_for(rest, 5) == b"last\n"
    assert await asyncio.wait_for(anext(stream, b"<end>"), 5) == b"<end>"
    assert jobs.reads == reads + 1
    assert db.feed.watching() == 0


async def test_a_stop_is_published_by_the_service(world: Any, tmp_path: Path) -> None:
    db, jobs, _ = world
    job_id = await _running_job(db, jobs, tmp_path / "task.log")
    with jobs.watch(job_id) as changed, jobs.watch() as every:
        await jobs.stop(ALICE, str(job_id))
        assert await changed.wait(0) and await every.wait(0)
        await jobs.submit(ALICE, JobRequest(spec=JobSpec(entrypoint="true")))
        assert not await changed.wait(0) and await every.wait(0)
