"""The local executor against real processes: env, cwd, logs, exit codes, stop, restart."""

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
from jobyard.executors.base import Handle, StartFailed, TaskReport
from jobyard.executors.local.executor import LocalExecutor
from jobyard.model import JobSpec, Placement, TaskState
from jobyard.model.job import TaskPlacement
from tests.helpers import make_settings

_next_id = iter(range(1, 10_000))


@pytest.fixture
def executor(home: Path) -> LocalExecutor:
    return LocalExecutor(
        make_settings(home, gpus=[GpuSpec(index=i, model="test") for i in range(4)])
    )


def placement(*, gpus: list[list[int]] | None = None, **spec: Any) -> Placement:
    job_id = next(_next_id)
    job_spec = JobSpec(**spec)
    gpus = gpus or [[] for _ in range(job_spec.replicas)]
    tasks = [
        TaskPlacement(index=i, name=f"job{job_id}-worker-{i}", node="n", gpus=gpus[i])
        for i in range(job_spec.replicas)
    ]
    return Placement(
        job_id=job_id, display_id=f"job{job_id}", owner="alice", spec=job_spec, tasks=tasks
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


async def run_to_end(executor: LocalExecutor, **spec: Any) -> tuple[TaskReport, str]:
    (task,) = await executor.start(placement(**spec))
    report = await wait_report(executor, task.handle)
    return report, executor.read_log(task.handle, 0, 1 << 20).decode()


def group_alive(pgid: int) -> list[psutil.Process]:
    alive = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


async def test_exit_code_and_output_are_recorded(executor: LocalExecutor) -> None:
    report, log = await run_to_end(executor, entrypoint="echo out; echo err >&2; exit 7")
    assert (report.state, report.exit_code) == (TaskState.EXITED, 7)
    assert "out\n" in log and "err\n" in log


async def test_argv_entrypoint_is_not_shell_parsed(executor: LocalExecutor) -> None:
    report, log = await run_to_end(executor, entrypoint=["echo", "$HOME", "a b"])
    assert report.exit_code == 0
    assert log == "$HOME a b\n"


async def test_environment_has_spec_env_and_jobyard_variables(executor: LocalExecutor) -> None:
    p = placement(entrypoint="env", env={"FOO": "bar baz"}, resources={"gpus": 2}, gpus=[[1, 3]])
    (task,) = await executor.start(p)
    await wait_report(executor, task.handle)
    env = dict(
        line.split("=", 1)
        for line in executor.read_log(task.handle, 0, 1 << 20).decode().splitlines()
        if "=" in line
    )
    assert env["FOO"] == "bar baz"
    assert env["JOBYARD_JOB_ID"] == str(p.job_id)
    assert env["JOBYARD_TASK_NAME"] == p.tasks[0].name
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert not any(
        k.startswith("JOBYARD_")
        and k
        not in ("JOBYARD_JOB_ID", "JOBYARD_TASK_NAME", "JOBYARD_TASK_INDEX", "JOBYARD_DISPLAY_ID")
        for k in env
    )


async def test_a_job_without_gpus_sees_none_on_a_gpu_machine(executor: LocalExecutor) -> None:
    _, log = await run_to_end(executor, entrypoint='printf "[%s]" "$CUDA_VISIBLE_DEVICES"')
    assert log == "[]"


async def test_multi_worker_jobs_get_rank_variables(executor: LocalExecutor) -> None:
    p = placement(entrypoint='echo "$RANK/$WORLD_SIZE $MASTER_ADDR:$MASTER_PORT"', replicas=2)
    tasks = await executor.start(p)
    logs = []
    for task in tasks:
        await wait_report(executor, task.handle)
        logs.append(executor.read_log(task.handle, 0, 4096).decode().strip())
    assert logs[0].startswith("0/2 127.0.0.1:") and logs[1].startswith("1/2 127.0.0.1:")
    assert logs[0].split(":")[1] == logs[1].split(":")[1]


async def test_cwd_is_working_dir_or_a_per_job_directory(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    _, log = await run_to_end(executor, entrypoint="pwd", working_dir=str(tmp_path))
    assert log.strip() == str(tmp_path)
    _, log = await run_to_end(executor, entrypoint="pwd")
    assert Path(log.strip()).parent == (tmp_path / "home" / "jobs").resolve()


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


async def test_stop_kills_after_the_grace_period_when_term_is_ignored(
    executor: LocalExecutor,
) -> None:
    (task,) = await executor.start(
        placement(entrypoint=["sh", "-c", "trap '' TERM; echo ready; sleep 300"])
    )
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await executor.stop(task.handle, grace=0.5)
    await executor.stop(task.handle, grace=0.5)  # idempotent
    report = await wait_report(executor, task.handle)
    assert time.monotonic() - started >= 0.45
    assert report.exit_code == 128 + 9
    assert await gone(task.handle["pid"]) == []


async def test_processes_left_behind_by_a_finished_task_are_killed(executor: LocalExecutor) -> None:
    (task,) = await executor.start(placement(entrypoint="sleep 300 & echo $! > child.pid; exit 0"))
    report = await wait_report(executor, task.handle)
    assert report.exit_code == 0
    assert await gone(task.handle["pid"]) == []


async def test_a_new_executor_adopts_running_tasks_and_reads_their_exit_code(home: Path) -> None:
    first = LocalExecutor(make_settings(home))
    (task,) = await first.start(placement(entrypoint="sleep 0.5; exit 4"))
    await first.close()
    second = LocalExecutor(make_settings(home))  # as after a server restart
    (report,) = await second.poll([task.handle])
    assert report.state is TaskState.RUNNING
    deadline = time.monotonic() + 10
    while report.state is TaskState.RUNNING and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        os.waitid(
            os.P_PID, task.handle["pid"], os.WEXITED | os.WNOHANG
        )  # we are still its parent here
        (report,) = await second.poll([task.handle])
    assert (report.state, report.exit_code) == (TaskState.EXITED, 4)


async def test_a_reused_pid_is_not_mistaken_for_the_task(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    handle = {"pid": os.getpid(), "start_ticks": 1, "exit": str(tmp_path / "none"), "log": ""}
    (report,) = await executor.poll([handle])
    assert report.state is TaskState.LOST


async def test_unknown_handles_report_lost(executor: LocalExecutor, tmp_path: Path) -> None:
    handle = {"pid": 2**22 - 3, "start_ticks": 1, "exit": str(tmp_path / "none"), "log": ""}
    (report,) = await executor.poll([handle])
    assert report.state is TaskState.LOST


async def test_release_with_files_removes_the_log(executor: LocalExecutor) -> None:
    (task,) = await executor.start(placement(entrypoint="echo x"))
    await wait_report(executor, task.handle)
    executor.release(task.handle, remove_files=True)
    assert not Path(task.handle["log"]).exists()
