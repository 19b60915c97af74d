"""The executor contract: the same tests, against every executor that runs jobs for real.

Each test runs on the local executor (processes on this machine), on the Slurm executor (a
real single-machine Slurm, `.ci/slurm-setup.sh`; skipped with the reason where there is none)
and on the Ray executor (a real Ray head the suite starts, `ray_support.py`). What only one
executor does (process groups and reused pids, Slurm's gres, pending reasons and refusals,
Ray's uploads and restarts) is tested in `test_local_executor.py`, `test_slurm_executor.py`
and `test_ray_executor.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shlex
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil
import pytest

from jobyard.config import GpuSpec, RaySettings, Settings
from jobyard.errors import ExecutorRefused
from jobyard.executors.base import (
    Executor,
    Handle,
    Shell,
    StartedTask,
    StartFailed,
    TaskReport,
    TerminalSize,
)
from jobyard.executors.handles import ContainerFields, LocalHandle, RayHandle, SlurmHandle
from jobyard.executors.local.executor import LocalExecutor
from jobyard.executors.registry import load_executor
from jobyard.executors.slurm.executor import SlurmExecutor
from jobyard.model import JobSpec, Placement, TaskState
from jobyard.model.job import TaskPlacement
from tests.helpers import make_settings, wait_for, wait_report
from tests.integration.container_support import (
    SKIP_REASON as NO_PODMAN,
    container_settings,
    gone_in_time,
    host_processes,
    images_fixture,  # noqa: F401 - the images fixture
    running_images,
)
from tests.integration.ray_support import (
    SKIP_REASON as NO_RAY,
    ray_head_fixture,  # noqa: F401 - the ray_head fixture
    running_head,
    stop_jobs_of,
)
from tests.integration.slurm_support import SKIP_REASON, holding_the_cluster, slurm_settings

_numbers = itertools.count(1)

KINDS = [
    pytest.param("local", id="local"),
    pytest.param(
        "slurm",
        id="slurm",
        marks=[
            pytest.mark.slurm,
            pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON)),
        ],
    ),
    pytest.param("ray", id="ray", marks=pytest.mark.skipif(NO_RAY is not None, reason=str(NO_RAY))),
    # the local executor running every job in a container (the session's busybox image)
    pytest.param(
        "local-container",
        id="local-container",
        marks=pytest.mark.skipif(NO_PODMAN is not None, reason=str(NO_PODMAN)),
    ),
    # and Slurm, each batch script running its job's container on the node
    pytest.param(
        "slurm-container",
        id="slurm-container",
        marks=[
            pytest.mark.slurm,
            pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON)),
            pytest.mark.skipif(NO_PODMAN is not None, reason=str(NO_PODMAN)),
        ],
    ),
]


def settings_for(kind: str, home: Path) -> Settings:
    if kind == "slurm":
        return make_settings(home, executor="slurm", slurm=slurm_settings())
    if kind == "slurm-container":
        slurm = slurm_settings()
        image = running_images().local
        return container_settings(home, executor="slurm", slurm=slurm, default_image=image)
    if kind == "ray":  # Ray's own stop takes up to 2 s to see a TERMed job gone
        ray = RaySettings(address=running_head().dashboard)
        return make_settings(home, executor="ray", ray=ray, stop_grace_seconds=4)
    # a machine with GPUs, so that "no GPUs asked for" has something to hide
    gpus = [GpuSpec(index=i, model="test") for i in range(4)]
    if kind == "local-container":  # every job in the session's image (none names one)
        return container_settings(home, gpus=gpus, default_image=running_images().local)
    return make_settings(home, gpus=gpus)


def new_executor(kind: str, settings: Settings) -> Executor:
    if kind == "ray":
        return load_executor("ray", settings)
    return (
        SlurmExecutor.from_settings(settings)
        if kind.startswith("slurm")
        else LocalExecutor.from_settings(settings)
    )


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "ray":
        head = request.getfixturevalue("ray_head")
        yield request.param
        stop_jobs_of(head, tmp_path / "home")  # what the test left running on the head
        return
    if request.param.endswith("-container"):
        request.getfixturevalue("images")
        slurm = request.param.startswith("slurm")
        with holding_the_cluster(tmp_path) if slurm else contextlib.nullcontext():
            yield request.param
        assert gone_in_time(tmp_path / "home") == []  # no container of the test is left
        return
    if request.param != "slurm":
        yield request.param
        return
    with holding_the_cluster(tmp_path):  # and cancels what the test left in Slurm
        yield request.param


@pytest.fixture
async def executor(kind: str, home: Path) -> AsyncIterator[Executor]:
    ex = new_executor(kind, settings_for(kind, home))
    yield ex
    await ex.close()


def placement(**spec: Any) -> Placement:
    """Job ids unique across xdist workers: Slurm sees the jobs of every worker at once."""
    job_id = 10_000_000 + os.getpid() * 1000 + next(_numbers) % 1000
    job_spec = JobSpec(**spec)
    tasks = [
        TaskPlacement(index=i, name=f"job{job_id}-worker-{i}", node="n")
        for i in range(job_spec.replicas)
    ]
    return Placement(
        job_id=job_id, display_id=f"job{job_id}", owner="alice", spec=job_spec, tasks=tasks
    )


async def run_to_end(executor: Executor, **spec: Any) -> tuple[TaskReport, str]:
    (task,) = await executor.start(placement(**spec))
    report = await wait_report(executor, task.handle)
    return report, log_of(executor, task)


def log_of(executor: Executor, task: StartedTask) -> str:
    return executor.read_log(task.handle, 0, 1 << 20).decode()


def in_dir(kind: str, path: Path, script: str) -> dict[str, Any]:
    """A shell script run in `path`: its working_dir, or where a working_dir is uploaded
    elsewhere (Ray), a `cd` (the Ray head of the tests runs on this machine)."""
    if kind == "ray":
        return {"entrypoint": f"cd {shlex.quote(str(path))} || exit 1; {script}"}
    return {"entrypoint": script, "working_dir": str(path)}


def one_worker_only(executor: Executor, replicas: int) -> None:
    if replicas > 1 and executor.kind == "ray":
        pytest.skip("the Ray executor refuses multi-worker jobs (test_ray_executor.py)")


def env_of(log: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in log.splitlines() if "=" in line)


async def wait_log(executor: Executor, task: StartedTask, text: str) -> None:
    """Until the task's log holds `text` (the program has got that far)."""
    deadline = time.monotonic() + 30
    while text not in log_of(executor, task):
        assert time.monotonic() < deadline, f"{text!r} not in the log: {log_of(executor, task)!r}"
        await asyncio.sleep(0.05)


def processes_in(path: Path, task: StartedTask) -> list[psutil.Process]:
    """The live processes whose pids the file lists, taken while they run: psutil then tells
    them from a later process given the same pid (pids wrap at 32,768 here). In a container
    the pids are its own pid namespace's: the host's pids of those processes are taken."""
    pids = [int(word) for word in path.read_text().split()]
    if "container" in task.handle:
        found = host_processes(task.handle["container"], pids)
        assert len(found) == len(pids), f"not all of {pids} found in the container"
        pids = found
    return [psutil.Process(pid) for pid in pids]


def all_gone(procs: list[psutil.Process]) -> Callable[[], bool]:
    def check() -> bool:
        for proc in procs:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    return False
            except psutil.Error:
                continue
        return True

    return check


# ---- running ---------------------------------------------------------------------------------


async def test_exit_code_and_output_are_recorded(executor: Executor) -> None:
    report, log = await run_to_end(executor, entrypoint="echo out; echo err >&2; exit 7")
    assert (report.state, report.exit_code) == (TaskState.EXITED, 7)
    assert "out\n" in log and "err\n" in log
    report, log = await run_to_end(executor, entrypoint="true")
    assert (report.state, report.exit_code, log) == (TaskState.EXITED, 0, "")


HANDLES: dict[str, type[Mapping[str, Any]]] = {
    "local": LocalHandle,
    "local-container": LocalHandle,
    "slurm": SlurmHandle,
    "slurm-container": SlurmHandle,
    "ray": RayHandle,
}


async def test_a_handle_has_the_fields_its_executor_declares(executor: Executor, kind: str) -> None:
    """executors/handles.py declares each executor's handle: what start() gives has every
    required field, nothing undeclared, and in a container every container field."""
    (task,) = await executor.start(placement(entrypoint="true"))
    shape, fields = HANDLES[kind], set(task.handle)
    required: frozenset[str] = shape.__required_keys__  # type: ignore[attr-defined]
    optional: frozenset[str] = shape.__optional_keys__  # type: ignore[attr-defined]
    assert required <= fields <= required | optional, sorted(fields)
    in_container = ContainerFields.__optional_keys__ <= fields
    assert in_container is kind.endswith("-container")
    assert json.loads(json.dumps(task.handle)) == task.handle  # stored as JSON, as it is
    assert (await wait_report(executor, task.handle)).exit_code == 0


async def test_argv_entrypoint_is_not_shell_parsed(executor: Executor) -> None:
    report, log = await run_to_end(executor, entrypoint=["echo", "$HOME", "a b", "it's"])
    assert (report.exit_code, log) == (0, "$HOME a b it's\n")


async def test_environment_has_spec_env_and_jobyard_variables(executor: Executor) -> None:
    p = placement(entrypoint="env", env={"FOO": "bar baz", "Q": "'\"$x;`id`"})
    (task,) = await executor.start(p)
    await wait_report(executor, task.handle)
    env = env_of(log_of(executor, task))
    assert (env["FOO"], env["Q"]) == ("bar baz", "'\"$x;`id`")
    assert env["JOBYARD_JOB_ID"] == str(p.job_id)
    assert env["JOBYARD_DISPLAY_ID"] == p.display_id
    assert (env["JOBYARD_TASK_NAME"], env["JOBYARD_TASK_INDEX"]) == (p.tasks[0].name, "0")
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # no GPUs asked for: none visible
    own = {"JOBYARD_JOB_ID", "JOBYARD_TASK_NAME", "JOBYARD_TASK_INDEX", "JOBYARD_DISPLAY_ID"}
    leaked = [k for k in env if k.startswith("JOBYARD_") and k not in own]
    assert leaked == []  # the server's own settings (tokens, database URLs) never reach a job


@pytest.mark.parametrize("replicas", [1, 2])
async def test_the_job_keeps_its_own_values_of_names_a_supervisor_might_use(
    executor: Executor, replicas: int
) -> None:
    """The supervisors are shell scripts, and a shell exports every variable it was started
    with: one assigning its own `x` or `rc` would hand the task that value instead of the job's."""
    one_worker_only(executor, replicas)
    names = ["x", "n", "t", "p", "i", "v", "rc", "k"]
    env = {name: f"job-{name}" for name in names}
    entrypoint = "echo " + " ".join(f'"${name}"' for name in names)
    p = placement(entrypoint=entrypoint, env=env, replicas=replicas)
    tasks = await executor.start(p)
    for task in tasks:
        assert (await wait_report(executor, task.handle)).exit_code == 0
        assert log_of(executor, task).split() == [f"job-{name}" for name in names]


async def test_every_worker_of_a_multi_worker_job_gets_its_rank(executor: Executor) -> None:
    one_worker_only(executor, 2)
    p = placement(
        entrypoint='echo "$RANK $WORLD_SIZE $MASTER_ADDR:$MASTER_PORT $JOBYARD_TASK_NAME '
        '$NODE_RANK $LOCAL_RANK $NNODES $NPROC_PER_NODE"',
        replicas=2,
    )
    tasks = await executor.start(p)
    assert len(tasks) == 2
    lines = []
    for task in tasks:
        assert (await wait_report(executor, task.handle)).exit_code == 0
        lines.append(log_of(executor, task).split())
    assert [line[:2] for line in lines] == [["0", "2"], ["1", "2"]]
    assert lines[0][2] == lines[1][2]  # one rendezvous address for all
    master_port = lines[0][2].rsplit(":", 1)[1]
    assert master_port.isdigit() and 0 < int(master_port) < 65536
    assert [line[3] for line in lines] == [t.name for t in p.tasks]
    for line in lines:  # nodes x processes per node = world size
        assert all(word.isdigit() for word in line[4:8]), line
        assert int(line[6]) * int(line[7]) == 2


async def test_a_pipeline_ends_quietly_when_its_reader_leaves(executor: Executor) -> None:
    """SIGPIPE at its default in the task, as in a login shell (the server ignores it)."""
    report, log = await run_to_end(executor, entrypoint="yes | head -n 1")
    assert (report.exit_code, log) == (0, "y\n")


async def test_cwd_is_working_dir_or_a_per_job_directory(
    executor: Executor, tmp_path: Path
) -> None:
    if executor.kind == "ray":  # uploaded (Ray's package mechanism): the job runs in its copy
        code = tmp_path / "code"
        code.mkdir()
        (code / "marker").write_text("here\n")
        _, log = await run_to_end(executor, entrypoint="cat marker", working_dir=str(code))
        assert log == "here\n"
        return
    _, log = await run_to_end(executor, entrypoint="pwd", working_dir=str(tmp_path))
    assert log.strip() == str(tmp_path)
    _, log = await run_to_end(executor, entrypoint="pwd")
    assert Path(log.strip()).parent == (tmp_path / "home" / "jobs").resolve()


async def test_a_program_that_cannot_run_never_succeeds_and_says_why(executor: Executor) -> None:
    """Refused at start with the reason (local), or run and ended with the shell's 127 and its
    message in the log (Slurm runs the program on a node, where the check belongs)."""
    try:
        report, log = await run_to_end(executor, entrypoint=["no-such-program-xyz"])
    except StartFailed as refused:
        assert "no-such-program-xyz" in str(refused)
        return
    assert (report.state, report.exit_code) == (TaskState.EXITED, 127)
    assert "no-such-program-xyz" in log


async def test_images_are_refused_naming_the_field(executor: Executor, kind: str) -> None:
    if kind.endswith("-container"):  # images run; what a container's env cannot carry is not
        executor.check_spec_supported(JobSpec(entrypoint="true", image="python:3.11"))
        with pytest.raises(ExecutorRefused) as info:
            executor.check_spec_supported(JobSpec(entrypoint="true", env={"A": "1\n2"}))
        assert info.value.field == "env"
        return
    with pytest.raises(ExecutorRefused) as info:
        executor.check_spec_supported(JobSpec(entrypoint="true", image="python:3.11"))
    assert info.value.field == "image"
    executor.check_spec_supported(JobSpec(entrypoint="true"))  # a plain one is fine


async def test_poll_answers_for_many_tasks_in_their_order(executor: Executor) -> None:
    quick = [(await executor.start(placement(entrypoint=f"exit {i}")))[0] for i in (3, 0, 5)]
    for task in quick:
        await wait_report(executor, task.handle)
    reports = await executor.poll([t.handle for t in quick])
    assert [(r.state, r.exit_code) for r in reports] == [
        (TaskState.EXITED, 3),
        (TaskState.EXITED, 0),
        (TaskState.EXITED, 5),
    ]


async def test_jobs_started_together_each_run_as_their_own(
    executor: Executor, tmp_path: Path
) -> None:
    """What a scheduler pass does: start several jobs at once (on Slurm, one job array)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    jobs = [
        placement(entrypoint='echo "$JOBYARD_JOB_ID $X $PWD"; exit 3', env={"X": "a"}),
        placement(entrypoint='echo "$JOBYARD_JOB_ID $X $PWD"', env={"X": "b b"}),
        placement(entrypoint='echo "$JOBYARD_JOB_ID $X $PWD"; exit 4', working_dir=str(elsewhere)),
    ]
    started = await asyncio.gather(*(executor.start(p) for p in jobs))
    outcomes = []
    for (task,), job in zip(started, jobs, strict=True):
        report = await wait_report(executor, task.handle)
        job_id, *x, cwd = log_of(executor, task).rstrip("\n").split(" ")
        if executor.kind != "ray":  # Ray runs a working_dir's uploaded copy
            assert cwd == (job.spec.working_dir or str(Path(cwd).parent / str(job.job_id)))
        outcomes.append((report.exit_code, int(job_id) - job.job_id, " ".join(x)))
    assert outcomes == [(3, 0, "a"), (0, 0, "b b"), (4, 0, "")]


# ---- logs ------------------------------------------------------------------------------------


async def test_logs_are_read_from_any_offset(executor: Executor) -> None:
    (task,) = await executor.start(placement(entrypoint="printf 'abcdef'; printf 'é' >&2"))
    await wait_report(executor, task.handle)
    assert executor.log_size(task.handle) == 8
    assert executor.read_log(task.handle, 2, 3) == b"cde"
    assert executor.read_log(task.handle, 6, 100) == "é".encode()
    assert executor.read_log(task.handle, 8, 100) == b""


async def test_release_with_files_removes_the_log(executor: Executor) -> None:
    (task,) = await executor.start(placement(entrypoint="echo x"))
    await wait_report(executor, task.handle)
    assert log_of(executor, task) == "x\n"
    executor.release(task.handle, remove_files=True)
    assert not Path(task.handle["log"]).exists()
    assert not Path(task.handle["exit"]).exists()
    assert executor.read_log(task.handle, 0, 100) == b""


# ---- stopping --------------------------------------------------------------------------------


async def test_stop_terminates_then_kills_after_the_grace_period(executor: Executor) -> None:
    (polite,) = await executor.start(placement(entrypoint="echo ready; sleep 300"))
    (stubborn,) = await executor.start(
        placement(entrypoint=["sh", "-c", "trap '' TERM; echo ready; sleep 300"])
    )
    for task in (polite, stubborn):
        await wait_log(executor, task, "ready\n")
    started = time.monotonic()
    await executor.stop(polite.handle, grace=5)
    await executor.stop(stubborn.handle, grace=1)
    await executor.stop(stubborn.handle, grace=1)  # idempotent
    assert (await wait_report(executor, polite.handle)).exit_code == 128 + 15
    report = await wait_report(executor, stubborn.handle)
    assert time.monotonic() - started >= 0.9  # the grace period was given
    assert (report.state, report.exit_code) == (TaskState.EXITED, 128 + 9)
    await executor.stop(stubborn.handle, grace=1)  # stopping an ended task is harmless
    assert (await executor.poll([stubborn.handle]))[0].exit_code == 128 + 9


async def test_stop_leaves_no_process_of_the_task(
    executor: Executor, kind: str, tmp_path: Path
) -> None:
    script = "sleep 300 & a=$!; (sleep 300 & echo $! > inner.pid; wait) & b=$!; "
    script += 'echo "$a $b" > outer.pid; echo ready; wait'
    (task,) = await executor.start(placement(**in_dir(kind, tmp_path, script)))
    await wait_log(executor, task, "ready\n")
    wait_for(lambda: (tmp_path / "inner.pid").exists() and (tmp_path / "inner.pid").read_text())
    procs = processes_in(tmp_path / "outer.pid", task) + processes_in(tmp_path / "inner.pid", task)
    assert not all_gone(procs)()
    await executor.stop(task.handle, grace=5)
    assert (await wait_report(executor, task.handle)).exit_code == 128 + 15
    wait_for(all_gone(procs), timeout=15)


async def test_what_a_finished_task_left_running_is_ended(
    executor: Executor, kind: str, tmp_path: Path
) -> None:
    # The task waits for `go` so that its child can be identified while it surely runs.
    entry = "sleep 300 & echo $! > child.pid; until [ -e go ]; do sleep 0.05; done; exit 0"
    (task,) = await executor.start(placement(**in_dir(kind, tmp_path, entry)))
    wait_for(lambda: (tmp_path / "child.pid").exists() and (tmp_path / "child.pid").read_text())
    procs = processes_in(tmp_path / "child.pid", task)
    assert not all_gone(procs)()
    (tmp_path / "go").touch()
    assert (await wait_report(executor, task.handle)).exit_code == 0
    wait_for(all_gone(procs), timeout=15)


# ---- a shell in the task ---------------------------------------------------------------------


async def output_of(shell: Shell, timeout: float = 30) -> tuple[str, str, int]:
    """(its output, its stderr, its exit code) once a shell has ended."""

    async def everything(read: Callable[[], Any]) -> str:
        chunks = []
        while data := await read():
            chunks.append(data)
        return b"".join(chunks).decode(errors="replace")

    async def gather() -> tuple[str, str, int]:
        out, err = await asyncio.gather(everything(shell.read), everything(shell.read_stderr))
        return out, err, await shell.wait()

    try:
        return await asyncio.wait_for(gather(), timeout)
    finally:
        await shell.end()


async def test_a_shell_runs_in_the_task_and_only_while_it_runs(
    executor: Executor, tmp_path: Path
) -> None:
    if "shell" not in executor.capabilities:
        pytest.skip(f"the {executor.kind} executor opens no shell into a task")
    p = placement(
        entrypoint="echo ready; sleep 300", env={"MINE": "yes"}, working_dir=str(tmp_path)
    )
    (task,) = await executor.start(p)
    await wait_log(executor, task, "ready\n")
    await wait_report(executor, task.handle, until={TaskState.RUNNING})
    line = 'echo "id=$JOBYARD_JOB_ID mine=$MINE cwd=$(pwd) tty=$(tty) size=$(stty size)"; exit 3'
    shell = await executor.open_shell(p, 0, task.handle, command=line, size=TerminalSize(33, 111))
    assert shell.tty
    output, _, code = await output_of(shell)
    assert f"id={p.job_id} mine=yes cwd={tmp_path}" in output
    assert "tty=/dev/pts/" in output  # a terminal, for interactive programs
    assert "size=33 111" in output and code == 3
    # Without a size: plain pipes (ssh host command), stderr apart, input to its end.
    piped = await executor.open_shell(p, 0, task.handle, command="cat; echo err >&2; tty")
    await piped.write(b"typed\n")
    piped.close_input()
    output, errors, code = await output_of(piped)
    assert (output, code) == ("typed\nnot a tty\n", 1)
    # (srun says it disregards --pty without a terminal, and that the task exited with 1:
    # before or after the task's own stderr)
    assert "err\n" in errors
    await executor.stop(task.handle, grace=1)
    await wait_report(executor, task.handle)
    with pytest.raises(Exception, match="not running"):
        await executor.open_shell(p, 0, task.handle, size=TerminalSize(24, 80))


# ---- restarts and unknown tasks --------------------------------------------------------------


async def test_a_new_executor_reattaches_and_reads_the_exit_code(kind: str, home: Path) -> None:
    settings = settings_for(kind, home)
    first = new_executor(kind, settings)
    (task,) = await first.start(placement(entrypoint="echo before; sleep 1; exit 4"))
    await first.close()
    second = new_executor(kind, settings)  # as after a server restart
    try:
        (report,) = await second.poll([task.handle])
        assert report.state in (TaskState.PENDING, TaskState.RUNNING)
        report = await wait_report(second, task.handle)
        assert (report.state, report.exit_code) == (TaskState.EXITED, 4)
        assert second.read_log(task.handle, 0, 100) == b"before\n"
    finally:
        await second.close()


async def test_a_task_that_left_nothing_behind_is_lost_with_a_message(
    executor: Executor, kind: str, tmp_path: Path
) -> None:
    files = {"exit": str(tmp_path / "none.exit"), "log": str(tmp_path / "none.log")}
    handle: Handle = {
        "slurm": {"slurm_job_id": "987654321", "task": 0, **files},
        "ray": {"submission_id": f"jobyard-none-{os.getpid()}", "task": 0, **files},
    }.get(kind.removesuffix("-container"), {"pid": 2**22 - 3, "start_ticks": 1, **files})
    (report,) = await executor.poll([handle])
    assert report.state is TaskState.LOST
    assert report.message
