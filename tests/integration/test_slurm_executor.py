"""The Slurm executor against a real Slurm (`.ci/slurm-setup.sh` starts one on this machine).

Skipped, with the reason, where Slurm is not installed or no cluster answers. The tests share
the one cluster, also between xdist workers: they hold a shared lock, and the test that fills
the node holds it exclusively.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import pwd
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from jobyard.config import SlurmSettings
from jobyard.errors import ExecutorRefused, ExecutorUnavailable
from jobyard.executors.base import Handle, StartedTask, TaskReport
from jobyard.executors.slurm.executor import SlurmExecutor
from jobyard.model import JobSpec, Placement, TaskState
from jobyard.model.job import TaskPlacement
from tests.helpers import make_settings, running_server, wait_for


def _find_conf() -> str | None:
    if os.environ.get("SLURM_CONF"):
        return os.environ["SLURM_CONF"]
    for candidate in (
        f"/var/tmp/jobyard-slurm-{pwd.getpwuid(os.getuid()).pw_name}/slurm.conf",
        "/etc/slurm/slurm.conf",
    ):
        if Path(candidate).is_file():
            return candidate
    return None


CONF = _find_conf()
_ENV = {**os.environ, **({"SLURM_CONF": CONF} if CONF else {})}


def _why_skip() -> str | None:
    if shutil.which("sbatch") is None:
        return "Slurm is not installed (no sbatch on PATH); run .ci/slurm-setup.sh"
    ping = subprocess.run(
        ["scontrol", "ping"], capture_output=True, text=True, env=_ENV, timeout=10, check=False
    )
    if ping.returncode != 0:
        said = ping.stdout.strip() or ping.stderr.strip()
        return f"no Slurm cluster answers (scontrol ping: {said})"
    return None


_SKIP = _why_skip()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

_next_id = iter(range(1, 100_000))
_LOCK = "/tmp/jobyard-slurm-tests.lock"


def slurm(*args: str) -> str:
    return subprocess.run(
        args, capture_output=True, text=True, env=_ENV, timeout=30, check=True
    ).stdout.strip()


@pytest.fixture(autouse=True)
def shared_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """Hold the cluster (shared, or alone); afterwards cancel what the test left in Slurm
    (its jobs' working directories are inside its tmp_path), even when it failed."""
    exclusive = request.node.get_closest_marker("exclusive_cluster") is not None
    fd = os.open(_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        mine = [
            line.split("|", 1)[0]
            for line in slurm("squeue", "-h", "-o", "%i|%Z").splitlines()
            if line.split("|", 1)[-1].startswith(str(tmp_path))
        ]
        if mine:
            slurm("scancel", *mine)
        os.close(fd)


def slurm_settings(**overrides: Any) -> SlurmSettings:
    return SlurmSettings(conf=Path(CONF) if CONF else None, **overrides)


@pytest.fixture
async def executor(home: Path) -> AsyncIterator[SlurmExecutor]:
    ex = SlurmExecutor(make_settings(home, executor="slurm", slurm=slurm_settings()))
    yield ex
    for slurm_id in getattr(ex, "test_started", []):
        subprocess.run(["scancel", slurm_id], env=_ENV, check=False, capture_output=True)
    await ex.close()


def placement(**spec: Any) -> Placement:
    job_id = 10_000_000 + os.getpid() * 100 + next(_next_id)
    job_spec = JobSpec(**spec)
    tasks = [
        TaskPlacement(index=i, name=f"job{job_id}-worker-{i}", node="slurm")
        for i in range(job_spec.replicas)
    ]
    return Placement(
        job_id=job_id, display_id=f"job{job_id}", owner="alice", spec=job_spec, tasks=tasks
    )


async def start(executor: SlurmExecutor, p: Placement) -> list[StartedTask]:
    tasks = await executor.start(p)
    started = executor.__dict__.setdefault("test_started", [])
    started.append(tasks[0].handle["slurm_job_id"])
    return tasks


async def wait_report(
    executor: SlurmExecutor,
    handle: Handle,
    *,
    until: set[TaskState] | None = None,
    timeout: float = 30,
) -> TaskReport:
    until = until or {TaskState.EXITED, TaskState.LOST}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (report,) = await executor.poll([handle])
        if report.state in until:
            return report
        await asyncio.sleep(0.05)
    raise AssertionError(f"task did not reach {until} in time (last: {report})")


async def run_to_end(executor: SlurmExecutor, **spec: Any) -> tuple[TaskReport, str]:
    (task,) = await start(executor, placement(**spec))
    report = await wait_report(executor, task.handle)
    return report, executor.read_log(task.handle, 0, 1 << 20).decode()


def env_of(log: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in log.splitlines() if "=" in line)


# ---- the executor contract (as the local executor passes it) ----------------------------------


async def test_exit_code_and_output_are_recorded(executor: SlurmExecutor) -> None:
    report, log = await run_to_end(executor, entrypoint="echo out; echo err >&2; exit 7")
    assert (report.state, report.exit_code) == (TaskState.EXITED, 7)
    assert "out\n" in log and "err\n" in log
    report, _ = await run_to_end(executor, entrypoint="true")
    assert (report.state, report.exit_code) == (TaskState.EXITED, 0)


async def test_argv_entrypoint_is_not_shell_parsed(executor: SlurmExecutor) -> None:
    report, log = await run_to_end(executor, entrypoint=["echo", "$HOME", "a b", "it's"])
    assert report.exit_code == 0
    assert log == "$HOME a b it's\n"


async def test_environment_has_spec_env_and_jobyard_variables(executor: SlurmExecutor) -> None:
    p = placement(entrypoint="env", env={"FOO": "bar baz", "Q": "'\"$x\n"})
    (task,) = await start(executor, p)
    await wait_report(executor, task.handle)
    env = env_of(executor.read_log(task.handle, 0, 1 << 20).decode())
    assert env["FOO"] == "bar baz"
    assert env["JOBYARD_JOB_ID"] == str(p.job_id)
    assert env["JOBYARD_TASK_NAME"] == p.tasks[0].name
    assert env["SLURM_JOB_NAME"] == f"jobyard-{p.job_id}-{p.display_id}"
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # no GPUs asked for: none visible
    assert not any(
        k.startswith("JOBYARD_")
        and k
        not in ("JOBYARD_JOB_ID", "JOBYARD_TASK_NAME", "JOBYARD_TASK_INDEX", "JOBYARD_DISPLAY_ID")
        for k in env
    )


async def test_gpus_are_allocated_by_slurm_gres(executor: SlurmExecutor) -> None:
    gpus = executor.capacity().gpus
    if len(gpus) < 2:
        pytest.skip("the cluster declares fewer than 2 GPUs")
    model = gpus[0].model
    p = placement(
        entrypoint='echo "[$CUDA_VISIBLE_DEVICES]"', resources={"gpus": 2, "gpu_model": model}
    )
    (task,) = await start(executor, p)
    assert (await wait_report(executor, task.handle)).exit_code == 0
    assert executor.read_log(task.handle, 0, 4096).decode().strip() == "[0,1]"


async def test_a_two_task_job_sees_rank_0_and_1(executor: SlurmExecutor) -> None:
    gpus = 1 if len(executor.capacity().gpus) >= 2 else 0
    p = placement(
        entrypoint='echo "$RANK/$WORLD_SIZE $LOCAL_RANK $MASTER_ADDR:$MASTER_PORT '
        '$JOBYARD_TASK_NAME gpu=$CUDA_VISIBLE_DEVICES $JOBYARD_RANK $NNODES/$NPROC_PER_NODE"',
        replicas=2,
        resources={"gpus": gpus},
    )
    tasks = await start(executor, p)
    assert {t.handle["slurm_job_id"] for t in tasks} == {tasks[0].handle["slurm_job_id"]}
    lines = []
    for task in tasks:
        report = await wait_report(executor, task.handle)
        assert report.exit_code == 0
        lines.append(executor.read_log(task.handle, 0, 4096).decode().split())
    assert [line[0] for line in lines] == ["0/2", "1/2"]
    assert lines[0][2] == lines[1][2] and lines[0][2].split(":")[1].isdigit()  # MASTER_*
    assert [line[3] for line in lines] == [t.name for t in p.tasks]
    assert [line[5:] for line in lines] == [["0", "1/2"], ["1", "1/2"]]  # one node, 2 tasks
    if gpus:  # each task its own GPU
        assert sorted(line[4] for line in lines) == ["gpu=0", "gpu=1"]


async def test_cwd_is_working_dir_or_a_per_job_directory(
    executor: SlurmExecutor, tmp_path: Path
) -> None:
    _, log = await run_to_end(executor, entrypoint="pwd", working_dir=str(tmp_path))
    assert log.strip() == str(tmp_path)
    _, log = await run_to_end(executor, entrypoint="pwd")
    assert Path(log.strip()).parent == (tmp_path / "home" / "jobs").resolve()


async def test_a_program_that_cannot_run_fails_with_127(executor: SlurmExecutor) -> None:
    report, log = await run_to_end(executor, entrypoint=["no-such-program-xyz"])
    assert (report.state, report.exit_code) == (TaskState.EXITED, 127)
    assert "no-such-program-xyz" in log


async def test_images_are_refused_naming_the_field(executor: SlurmExecutor) -> None:
    with pytest.raises(ExecutorRefused) as info:
        executor.check_spec_supported(JobSpec(entrypoint="true", image="python:3.11"))
    assert info.value.field == "image"


@pytest.mark.parametrize(
    "resources",
    [{"gpus": 1, "gpu_model": "h100-not-here"}, {"gpus": 64}, {"cpus": 4000}],
)
async def test_what_slurm_cannot_run_is_refused_with_slurms_reason(
    executor: SlurmExecutor, resources: dict[str, Any]
) -> None:
    with pytest.raises(ExecutorRefused, match="Slurm cannot run this job: .*not available"):
        executor.check_spec_supported(JobSpec(entrypoint="true", resources=resources))
    executor.check_spec_supported(JobSpec(entrypoint="true"))  # a fitting one is fine


async def test_stop_terminates_then_kills_after_the_grace_period(executor: SlurmExecutor) -> None:
    (polite,) = await start(executor, placement(entrypoint="echo ready; sleep 300"))
    (stubborn,) = await start(
        executor, placement(entrypoint=["sh", "-c", "trap '' TERM; echo ready; sleep 300"])
    )
    for task in (polite, stubborn):
        wait_for(lambda t=task: executor.read_log(t.handle, 0, 100) == b"ready\n", timeout=30)
    started = time.monotonic()
    await executor.stop(polite.handle, grace=5)
    await executor.stop(stubborn.handle, grace=1)
    await executor.stop(stubborn.handle, grace=1)  # idempotent
    assert (await wait_report(executor, polite.handle)).exit_code == 128 + 15
    report = await wait_report(executor, stubborn.handle)
    assert time.monotonic() - started >= 0.9
    assert report.exit_code == 128 + 9
    for task in (polite, stubborn):
        state = slurm("squeue", "-h", "-t", "all", "-j", task.handle["slurm_job_id"], "-o", "%T")
        assert state in ("CANCELLED", "FAILED", "COMPLETING")


@pytest.mark.exclusive_cluster
async def test_a_job_waiting_for_room_reports_slurms_pending_reason(
    executor: SlurmExecutor,
) -> None:
    cpus = int(executor.capacity().cpus)
    filler = slurm(
        "sbatch", "--parsable", "--exclusive", f"--ntasks={cpus}", "-o", "/dev/null",
        "--wrap=sleep 300",
    )  # fmt: skip
    try:
        wait_for(lambda: slurm("squeue", "-h", "-j", filler, "-o", "%T") == "RUNNING", 30)
        (task,) = await start(executor, placement(entrypoint="echo ran"))
        (dropped,) = await start(executor, placement(entrypoint="echo never"))
        report = await wait_report(executor, task.handle, until={TaskState.PENDING}, timeout=10)
        slurm_id = task.handle["slurm_job_id"]
        assert report.message == f"Slurm job {slurm_id} is pending (Resources)"
        assert executor.pending_reason(task.handle) == "Resources"
        await executor.stop(dropped.handle, grace=5)  # a pending job is simply cancelled
        report = await wait_report(executor, dropped.handle, timeout=10)
        assert (report.state, report.exit_code) == (TaskState.EXITED, 128 + 15)
        assert executor.read_log(dropped.handle, 0, 100) == b""
    finally:
        slurm("scancel", filler)
    report = await wait_report(executor, task.handle)
    assert (report.exit_code, executor.pending_reason(task.handle)) == (0, None)
    assert executor.read_log(task.handle, 0, 100) == b"ran\n"


async def test_a_shell_command_runs_inside_the_allocation(executor: SlurmExecutor) -> None:
    p = placement(entrypoint="echo ready; sleep 300", env={"MINE": "yes"})
    (task,) = await start(executor, p)
    wait_for(lambda: executor.read_log(task.handle, 0, 100) == b"ready\n", timeout=30)
    await executor.poll([task.handle])
    shell = executor.shell_command(
        p, 0, task.handle, 'echo "job=$SLURM_JOB_ID mine=$MINE cwd=$(pwd)"'
    )
    assert shell.argv[:4] == [
        "srun",
        f"--jobid={task.handle['slurm_job_id']}",
        "--overlap",
        "--pty",
    ]
    output = run_in_pty(shell.argv, shell.env, shell.cwd)
    assert f"job={task.handle['slurm_job_id']} mine=yes cwd={task.handle['cwd']}" in output
    await executor.stop(task.handle, grace=1)
    await wait_report(executor, task.handle)
    with pytest.raises(Exception, match="not running"):
        executor.shell_command(p, 0, task.handle)


def run_in_pty(argv: list[str], env: dict[str, str], cwd: str, timeout: float = 30) -> str:
    """Run argv on a pseudo-terminal (as the web terminal does) and return what it printed."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.chdir(cwd)
        os.execvpe(argv[0], argv, env)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(fd)
        os.waitpid(pid, 0)
    return b"".join(chunks).decode(errors="replace")


async def test_unknown_jobs_report_lost_with_a_message(
    executor: SlurmExecutor, tmp_path: Path
) -> None:
    handle = {"slurm_job_id": "987654321", "task": 0, "exit": str(tmp_path / "none"), "log": ""}
    (report,) = await executor.poll([handle])
    assert report.state is TaskState.LOST
    assert "Slurm no longer knows job 987654321" in report.message
    # An id Slurm gave to another job (its state was wiped since) is not taken for ours.
    other = slurm("sbatch", "--parsable", "-o", "/dev/null", "--wrap=sleep 30")
    try:
        (report,) = await executor.poll([{**handle, "slurm_job_id": other, "name": "jobyard-1-x"}])
        assert report.state is TaskState.LOST
    finally:
        slurm("scancel", other)


async def test_a_new_executor_reattaches_and_reads_the_exit_code(home: Path) -> None:
    settings = make_settings(home, executor="slurm", slurm=slurm_settings())
    first = SlurmExecutor(settings)
    (task,) = await first.start(placement(entrypoint="sleep 1; exit 4"))
    await first.close()
    second = SlurmExecutor(settings)  # as after a server restart
    try:
        report = await wait_report(second, task.handle)
        assert (report.state, report.exit_code) == (TaskState.EXITED, 4)
    finally:
        await second.close()


async def test_release_with_files_removes_the_log(executor: SlurmExecutor) -> None:
    (task,) = await start(executor, placement(entrypoint="echo x"))
    await wait_report(executor, task.handle)
    executor.release(task.handle, remove_files=True)
    assert not Path(task.handle["log"]).exists()
    assert not Path(task.handle["exit"]).exists()


# ---- through the whole server ------------------------------------------------------------------


def slurm_server_settings(home: Path) -> Any:
    return make_settings(home, executor="slurm", slurm=slurm_settings())


def test_jobs_run_on_slurm_through_the_api(home: Path) -> None:
    with running_server(slurm_server_settings(home)) as server, server.client() as http:
        ok = http.post("/api/v1/jobs", json={"entrypoint": "echo hello from slurm"}).json()
        bad = http.post("/api/v1/jobs", json={"entrypoint": "exit 3"}).json()
        done = server.wait_state(ok["id"], "SUCCEEDED", "FAILED", timeout=30)
        assert (done["state"], done["exit_code"]) == ("SUCCEEDED", 0)
        assert http.get(f"/api/v1/jobs/{ok['id']}/logs").text == "hello from slurm\n"
        failed = server.wait_state(bad["id"], "SUCCEEDED", "FAILED", timeout=30)
        assert (failed["state"], failed["exit_code"], failed["reason"]) == (
            "FAILED",
            3,
            "EXIT_NONZERO",
        )
        refused = http.post(
            "/api/v1/jobs",
            json={"entrypoint": "true", "resources": {"gpus": 1, "gpu_model": "h100-not-here"}},
        )
        assert refused.status_code == 400, refused.text
        assert "Slurm cannot run this job" in refused.text


def test_stop_and_follow_through_the_api(home: Path) -> None:
    with running_server(slurm_server_settings(home)) as server, server.client() as http:
        job = http.post(
            "/api/v1/jobs", json={"entrypoint": "for i in 1 2 3; do echo line $i; sleep 0.3; done"}
        ).json()
        with http.stream("GET", f"/api/v1/jobs/{job['id']}/logs", params={"follow": True}) as r:
            followed = b"".join(r.iter_bytes()).decode()
        assert followed == "line 1\nline 2\nline 3\n"
        long = http.post("/api/v1/jobs", json={"entrypoint": "echo up; sleep 300"}).json()
        wait_for(lambda: http.get(f"/api/v1/jobs/{long['id']}/logs").text == "up\n", 30)
        assert http.post(f"/api/v1/jobs/{long['id']}/stop").status_code == 202
        done = server.wait_state(long["id"], "STOPPED", "FAILED", timeout=30)
        assert (done["state"], done["reason"], done["exit_code"]) == (
            "STOPPED",
            "STOPPED_BY_USER",
            128 + 15,
        )


@pytest.mark.exclusive_cluster
def test_a_job_slurm_keeps_waiting_is_starting_with_slurms_pending_reason(home: Path) -> None:
    with running_server(slurm_server_settings(home)) as server, server.client() as http:
        cpus = int(server.runtime.executor.capacity().cpus)
        filler = slurm(
            "sbatch", "--parsable", "--exclusive", f"--ntasks={cpus}", "-o", "/dev/null",
            "--wrap=sleep 300",
        )  # fmt: skip
        try:
            wait_for(lambda: slurm("squeue", "-h", "-j", filler, "-o", "%T") == "RUNNING", 30)
            job = http.post("/api/v1/jobs", json={"entrypoint": "echo ran"}).json()

            def waiting() -> dict[str, Any] | None:
                found: dict[str, Any] = http.get(f"/api/v1/jobs/{job['id']}").json()
                return found if "(Resources)" in (found["pending_message"] or "") else None

            seen = wait_for(waiting, timeout=30)
            assert (seen["state"], seen["pending_reason"]) == ("STARTING", "EXECUTOR")
            assert seen["started_at"] is None  # time in Slurm's queue is not run time
            events = http.get(f"/api/v1/jobs/{job['id']}/events").json()["items"]
            assert any(
                e["reason"] == "Pending" and "(Resources)" in e["message"] for e in events
            ), events
        finally:
            slurm("scancel", filler)
        done = server.wait_state(job["id"], "SUCCEEDED", "FAILED", timeout=60)
        assert (done["state"], done["pending_reason"], done["pending_message"]) == (
            "SUCCEEDED",
            None,
            "",
        )
        assert [e["state"] for e in done["state_log"]][-3:] == ["STARTING", "RUNNING", "SUCCEEDED"]
        assert http.get(f"/api/v1/jobs/{job['id']}/logs").text == "ran\n"


def test_jobs_survive_a_jobyard_restart(home: Path) -> None:
    settings = slurm_server_settings(home)
    with running_server(settings) as first, first.client() as http:
        job = http.post("/api/v1/jobs", json={"entrypoint": "sleep 2; echo done; exit 5"}).json()
        first.wait_state(job["id"], "RUNNING", timeout=30)
    with running_server(settings) as second, second.client() as http:
        done = second.wait_state(job["id"], "FAILED", "SUCCEEDED", timeout=30)
        assert (done["state"], done["exit_code"], done["reason"]) == ("FAILED", 5, "EXIT_NONZERO")
        assert http.get(f"/api/v1/jobs/{job['id']}/logs").text == "done\n"


def test_the_slurm_executor_is_chosen_by_name_and_needs_its_tools(home: Path) -> None:
    with running_server(slurm_server_settings(home)) as server:
        assert server.runtime.executor.kind == "slurm"
    broken = make_settings(home, executor="slurm", slurm=slurm_settings(bin_dir=Path("/nope")))
    with pytest.raises(ExecutorUnavailable, match="cannot run sinfo"):
        SlurmExecutor(broken)


def test_the_web_terminal_opens_a_shell_inside_the_allocation(home: Path) -> None:
    with running_server(slurm_server_settings(home)) as server, server.client() as http:
        job = http.post("/api/v1/jobs", json={"entrypoint": "echo ready; sleep 300"}).json()
        wait_for(lambda: http.get(f"/api/v1/jobs/{job['id']}/logs").text == "ready\n", 30)
        server.wait_state(job["id"], "RUNNING")  # once squeue has shown it running
        pod = http.get(f"/api/v1/jobs/{job['id']}").json()["tasks"][0]["name"]
        answer = http.get(f"/api/jobs/{job['id']}/pods/{pod}/webterminal")
        assert answer.status_code == 200, answer.text
        with connect(answer.json()["data"]["webTerminalUrl"]) as ws:
            ws.send(b"\x00" + b"echo in=$SLURM_JOB_ID id=$JOBYARD_JOB_ID step=$SLURM_STEP_ID\r")
            seen, deadline = "", time.monotonic() + 30
            while not (found := re.search(r"in=(\d+) id=(\d+) step=(\d+)", seen)):
                assert time.monotonic() < deadline, f"no answer from the shell: {seen!r}"
                with contextlib.suppress(TimeoutError):
                    frame = ws.recv(timeout=deadline - time.monotonic())
                    seen += frame if isinstance(frame, str) else frame.decode(errors="replace")
            assert found.group(2) == str(job["id"])  # the job's environment
            squeue = slurm(
                "squeue", "-h", "-n", f"jobyard-{job['id']}-{job['display_id']}", "-o", "%i"
            )
            assert found.group(1) == squeue  # inside the job's own allocation, as a step
            ws.send(b"\x00exit\r")
        assert http.post(f"/api/v1/jobs/{job['id']}/stop").status_code == 202
        server.wait_state(job["id"], "STOPPED", timeout=30)
