"""What only the local executor does: GPU indices, start checks, process groups, pid reuse.

The executor contract it shares with the others is in `test_executor_contract.py`.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from jobyard.config import GpuSpec
from jobyard.errors import ExecutorRefused
from jobyard.executors.base import Handle, InterruptedStart, StartFailed, TaskReport
from jobyard.executors.local.executor import LocalExecutor
from jobyard.model import JobSpec, Placement, TaskState
from jobyard.model.job import TaskPlacement
from tests.helpers import make_settings

_next_id = iter(range(1, 10_000))


@pytest.fixture
def executor(home: Path) -> LocalExecutor:
    return LocalExecutor.from_settings(
        make_settings(home, gpus=[GpuSpec(index=i, model="test") for i in range(4)])
    )


def placement(*, gpus: list[list[int]] | None = None, **spec: Any) -> Placement:
    job_id = next(_next_id)
    job_spec = JobSpec(**spec)
    gpus = gpus or [[] for _ in range(job_spec.replicas)]
    # Display ids are random in a real store: unique here too, across parallel test workers
    # (processes are found by job id and display id).
    display_id = f"job{job_id}p{os.getpid()}"
    tasks = [
        TaskPlacement(index=i, name=f"{display_id}-worker-{i}", node="n", gpus=gpus[i])
        for i in range(job_spec.replicas)
    ]
    return Placement(
        job_id=job_id, display_id=display_id, owner="alice", spec=job_spec, tasks=tasks
    )


async def gone(pgid: int, timeout: float = 5) -> list[psutil.Process]:
    """The group's live members once they are gone, or what is still alive at the deadline:
    SIGKILLed members can outlive their reaped leader by a few milliseconds."""
    deadline = time.monotonic() + timeout
    while (alive := group_alive(pgid)) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return alive


async def wait_report(executor: LocalExecutor, handle: Handle, timeout: float = 10) -> TaskReport:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (report,) = await executor.poll([handle])
        if report.state is not TaskState.RUNNING:
            return report
        await asyncio.sleep(0.02)
    raise AssertionError("task did not finish in time")


def group_alive(pgid: int) -> list[psutil.Process]:
    alive = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


async def test_a_gpu_job_sees_exactly_its_devices(executor: LocalExecutor) -> None:
    p = placement(entrypoint="env", resources={"gpus": 2}, gpus=[[1, 3]])
    (task,) = await executor.start(p)
    await wait_report(executor, task.handle)
    log = executor.read_log(task.handle, 0, 1 << 20).decode()
    assert "CUDA_VISIBLE_DEVICES=1,3\n" in log.splitlines(keepends=True)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"entrypoint": ["no-such-program-xyz"]}, "not found in PATH"),
        ({"entrypoint": ["./missing.sh"]}, "does not exist or is not executable"),
        ({"entrypoint": "true", "working_dir": "/no/such/dir"}, "working_dir"),
    ],
)
async def test_a_program_that_cannot_start_fails_with_a_reason(
    executor: LocalExecutor, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(StartFailed, match=message):
        await executor.start(placement(**spec))


async def test_images_are_refused_naming_the_field(executor: LocalExecutor) -> None:
    with pytest.raises(ExecutorRefused) as info:
        await executor.start(placement(entrypoint="true", image="python:3.11"))
    assert info.value.field == "image"


async def test_stop_terminates_the_whole_group(executor: LocalExecutor) -> None:
    (task,) = await executor.start(placement(entrypoint="sleep 300 & sleep 300 & wait"))
    pgid = task.handle["pid"]
    await asyncio.sleep(0.2)
    assert len(group_alive(pgid)) >= 3
    await executor.stop(task.handle, grace=5)
    report = await wait_report(executor, task.handle)
    assert report.exit_code == 128 + 15
    assert await gone(pgid) == []


async def test_a_reused_pid_is_not_mistaken_for_the_task(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    handle = {"pid": os.getpid(), "start_ticks": 1, "exit": str(tmp_path / "none"), "log": ""}
    (report,) = await executor.poll([handle])
    assert report.state is TaskState.LOST


# ---- what a crash between a spawn and its stored handle leaves (find_started) -----------------


async def _started_then_forgotten(home: Path, entrypoint: str) -> tuple[Placement, float, int]:
    """Start a task and drop its handle, as a kill -9 before the write that stores it does;
    the executor goes too (the task is no longer the child of a live executor)."""
    first = LocalExecutor.from_settings(make_settings(home))
    job, since = placement(entrypoint=entrypoint), time.time()
    (task,) = await first.start(job)
    await first.close()
    return job, since, task.pid or 0


async def test_a_start_whose_handle_was_never_stored_is_adopted(home: Path) -> None:
    job, since, pid = await _started_then_forgotten(home, "echo up; sleep 0.5; exit 4")
    second = LocalExecutor.from_settings(make_settings(home))  # as after the restart
    ((found,),) = await second.find_started([InterruptedStart(job, since)])
    assert found is not None and found.pid == pid
    assert (await second.poll([found.handle]))[0].state is TaskState.RUNNING
    report = await wait_report(second, found.handle)
    assert (report.state, report.exit_code) == (TaskState.EXITED, 4)
    assert second.read_log(found.handle, 0, 100) == b"up\n"


async def test_a_start_that_ended_while_the_server_was_down_gives_its_exit_code(
    home: Path,
) -> None:
    job, since, pid = await _started_then_forgotten(home, "exit 3")
    await gone(pid)
    second = LocalExecutor.from_settings(make_settings(home))
    ((found,),) = await second.find_started([InterruptedStart(job, since)])
    assert found is not None
    report = await wait_report(second, found.handle)
    assert (report.state, report.exit_code) == (TaskState.EXITED, 3)


async def test_a_start_that_never_spawned_is_not_found_nor_an_earlier_attempts_exit(
    executor: LocalExecutor, home: Path
) -> None:
    never, stale = placement(entrypoint="true"), placement(entrypoint="true")
    since = time.time()
    exit_file = home / "logs" / str(stale.job_id) / f"{stale.tasks[0].name}.exit"
    exit_file.parent.mkdir(parents=True)
    exit_file.write_text("0\n")  # the earlier attempt's, written before this one began
    os.utime(exit_file, (since - 30, since - 30))
    starts = [InterruptedStart(never, since), InterruptedStart(stale, since)]
    assert await executor.find_started(starts) == [[None], [None]]


async def test_an_adopted_task_ends_only_once_what_it_left_running_is_killed(home: Path) -> None:
    # the task's own child leaves its session (setsid): no group kill reaches it
    job, since, pid = await _started_then_forgotten(home, "setsid sleep 300 & sleep 0.3; exit 5")
    await asyncio.sleep(0.1)
    second = LocalExecutor.from_settings(make_settings(home))
    ((found,),) = await second.find_started([InterruptedStart(job, since)])
    assert found is not None
    left = [p for p in _task_processes(job) if p.pid != pid]
    assert left, "the escaped child should run"
    seen = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        (report,) = await second.poll([found.handle])
        seen.append(report)
        if report.state is not TaskState.RUNNING:
            break
        await asyncio.sleep(0.05)
    assert (report.state, report.exit_code) == (TaskState.EXITED, 5)
    assert any("left running" in r.message for r in seen), seen
    assert _task_processes(job) == []


async def test_a_value_the_spawn_cannot_encode_fails_the_start(executor: LocalExecutor) -> None:
    job = placement(entrypoint="true")
    spec = job.spec.model_copy(update={"env": {"BAD": "\ud800"}})  # a lone surrogate
    with pytest.raises(StartFailed, match="cannot start"):
        await executor.start(job.model_copy(update={"spec": spec}))


def _task_processes(job: Placement) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if (
                env.get("JOBYARD_DISPLAY_ID") == job.display_id
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found
