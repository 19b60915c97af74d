"""What only the Slurm executor does, against a real Slurm (`.ci/slurm-setup.sh` starts one on
this machine): gres GPUs, Slurm's refusals and pending reasons, srun shells, reattaching by Slurm
id, and the whole server on Slurm. The executor contract it shares with the local executor is in
`test_executor_contract.py`. Skipped, with the reason, where no Slurm cluster answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from jobyard.errors import ExecutorRefused, ExecutorUnavailable
from jobyard.executors.base import InterruptedStart, TerminalSize
from jobyard.executors.slurm.commands import Result
from jobyard.executors.slurm.executor import SlurmExecutor
from jobyard.model import JobSpec, TaskState
from tests.helpers import make_settings, running_server, wait_for
from tests.integration.server_process import ServerProcess
from tests.integration.slurm_support import (
    CONF,
    SKIP_REASON,
    holding_the_cluster,
    node_filled,
    slurm,
    slurm_settings,
)
from tests.integration.test_executor_contract import output_of, placement, wait_report
from tests.integration.test_reliability_restart import KillWhileStarting, log_on_disk, submit_all

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON)),
]


@pytest.fixture(autouse=True)
def shared_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    exclusive = request.node.get_closest_marker("exclusive_cluster") is not None
    with holding_the_cluster(tmp_path, exclusive=exclusive):
        yield


@pytest.fixture
async def executor(home: Path) -> AsyncIterator[SlurmExecutor]:
    ex = SlurmExecutor.from_settings(make_settings(home, executor="slurm", slurm=slurm_settings()))
    yield ex  # what it left in Slurm, shared_cluster cancels
    await ex.close()


# ---- the executor ------------------------------------------------------------------------------


async def test_the_slurm_job_is_named_after_the_jobyard_job(executor: SlurmExecutor) -> None:
    p = placement(entrypoint='echo "$SLURM_JOB_NAME"')
    (task,) = await executor.start(p)
    assert (await wait_report(executor, task.handle)).exit_code == 0
    name = f"jobyard-{p.job_id}-{p.display_id}"
    assert executor.read_log(task.handle, 0, 4096).decode() == name + "\n"
    assert slurm("squeue", "-h", "-t", "all", "-n", name, "-o", "%i") == task.handle["slurm_job_id"]


async def test_gpus_are_allocated_by_slurm_gres(executor: SlurmExecutor) -> None:
    gpus = executor.capacity().gpus
    if len(gpus) < 2:
        pytest.skip("the cluster declares fewer than 2 GPUs")
    model = gpus[0].model
    p = placement(
        entrypoint='echo "[$CUDA_VISIBLE_DEVICES]"', resources={"gpus": 2, "gpu_model": model}
    )
    (task,) = await executor.start(p)
    assert (await wait_report(executor, task.handle)).exit_code == 0
    assert executor.read_log(task.handle, 0, 4096).decode().strip() == "[0,1]"


async def test_a_two_task_job_is_one_slurm_job_with_a_gpu_per_task(
    executor: SlurmExecutor,
) -> None:
    gpus = 1 if len(executor.capacity().gpus) >= 2 else 0
    p = placement(
        entrypoint='echo "$LOCAL_RANK $JOBYARD_RANK $NNODES/$NPROC_PER_NODE '
        'gpu=$CUDA_VISIBLE_DEVICES"',
        replicas=2,
        resources={"gpus": gpus},
    )
    tasks = await executor.start(p)
    assert {t.handle["slurm_job_id"] for t in tasks} == {tasks[0].handle["slurm_job_id"]}
    lines = []
    for task in tasks:
        assert (await wait_report(executor, task.handle)).exit_code == 0
        lines.append(executor.read_log(task.handle, 0, 4096).decode().split())
    assert [line[:3] for line in lines] == [["0", "0", "1/2"], ["1", "1", "1/2"]]  # one node
    if gpus:  # each task its own GPU
        assert sorted(line[3] for line in lines) == ["gpu=0", "gpu=1"]


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


@pytest.mark.exclusive_cluster
async def test_a_job_waiting_for_room_reports_slurms_pending_reason(
    executor: SlurmExecutor,
) -> None:
    cpus = int(executor.capacity().cpus)
    with node_filled(cpus):
        (task,) = await executor.start(placement(entrypoint="echo ran"))
        (dropped,) = await executor.start(placement(entrypoint="echo never"))
        report = await wait_report(executor, task.handle, until={TaskState.PENDING}, timeout=10)
        slurm_id = task.handle["slurm_job_id"]
        assert report.message == f"Slurm job {slurm_id} is pending (Resources)"
        assert executor.pending_reason(task.handle) == "Resources"
        await executor.stop(dropped.handle, grace=5)  # a pending job is simply cancelled
        report = await wait_report(executor, dropped.handle, timeout=10)
        assert (report.state, report.exit_code) == (TaskState.EXITED, 128 + 15)
        assert executor.read_log(dropped.handle, 0, 100) == b""
    report = await wait_report(executor, task.handle)
    assert (report.exit_code, executor.pending_reason(task.handle)) == (0, None)
    assert executor.read_log(task.handle, 0, 100) == b"ran\n"


async def test_a_cancel_slurm_refuses_is_asked_again(executor: SlurmExecutor) -> None:
    (task,) = await executor.start(placement(entrypoint="echo ready; sleep 300"))
    wait_for(lambda: executor.read_log(task.handle, 0, 100) == b"ready\n", timeout=30)
    run, refused = executor._tools.run, []

    async def busy_slurmctld(tool: str, args: Sequence[str], **kw: Any) -> Result:
        if tool == "scancel" and len(refused) < 2:
            refused.append(list(args))
            return Result(1, "", "scancel: error: Socket timed out on send/recv operation")
        return await run(tool, args, **kw)

    executor._tools.run = busy_slurmctld  # type: ignore[method-assign]
    await executor.stop(task.handle, grace=0)
    report = await wait_report(executor, task.handle)
    assert (report.state, report.exit_code) == (TaskState.EXITED, 128 + 15)
    assert refused == [[task.handle["slurm_job_id"]]] * 2


async def test_a_shell_command_is_an_srun_step_of_the_job(executor: SlurmExecutor) -> None:
    p = placement(entrypoint="echo ready; sleep 300")
    (task,) = await executor.start(p)
    wait_for(lambda: executor.read_log(task.handle, 0, 100) == b"ready\n", timeout=30)
    await executor.poll([task.handle])
    line = 'echo "job=$SLURM_JOB_ID/$SLURM_STEP_ID"'
    shell = executor.shell_command(p, 0, task.handle, line)
    slurm_id = task.handle["slurm_job_id"]
    assert shell.argv[:4] == ["srun", f"--jobid={slurm_id}", "--overlap", "--pty"]
    opened = await executor.open_shell(p, 0, task.handle, command=line, size=TerminalSize(24, 80))
    output, _, _ = await output_of(opened)
    assert re.search(rf"job={slurm_id}/\d+", output), output  # a step inside the allocation
    await executor.stop(task.handle, grace=1)


async def test_one_task_jobs_started_together_are_one_job_array(executor: SlurmExecutor) -> None:
    jobs = [placement(entrypoint="echo ready; sleep 300") for _ in range(3)]
    started = [task for (task,) in await asyncio.gather(*(executor.start(p) for p in jobs))]
    ids = [task.handle["slurm_job_id"] for task in started]
    array = ids[0].split("_")[0]
    assert ids == [f"{array}_{i}" for i in range(3)]
    for task in started:
        wait_for(lambda t=task: executor.read_log(t.handle, 0, 100) == b"ready\n", timeout=30)
    await executor.stop(started[1].handle, grace=1)  # one element: the others go on
    assert (await wait_report(executor, started[1].handle)).exit_code == 128 + 15
    reports = await executor.poll([started[0].handle, started[2].handle])
    assert [r.state for r in reports] == [TaskState.RUNNING] * 2
    # A shell is a step of the element's own allocation: srun knows it by its own job id.
    own = slurm("squeue", "-h", "-r", "-j", ids[2], "-o", "%A")
    shell = executor.shell_command(jobs[2], 0, started[2].handle, 'echo "job=$SLURM_JOB_ID"')
    assert shell.argv[1] == f"--jobid={own}"
    opened = await executor.open_shell(
        jobs[2], 0, started[2].handle, command='echo "job=$SLURM_JOB_ID"', size=TerminalSize(24, 80)
    )
    assert f"job={own}" in (await output_of(opened))[0]
    for task in started:
        await executor.stop(task.handle, grace=0)


@pytest.mark.exclusive_cluster
async def test_array_elements_waiting_for_room_each_report_slurms_reason(
    executor: SlurmExecutor,
) -> None:
    """Each element of a pending array has its own state and reason, then runs in turn."""
    with node_filled(int(executor.capacity().cpus)):
        jobs = [placement(entrypoint=f"exit {i}") for i in range(2)]
        started = [task for (task,) in await asyncio.gather(*(executor.start(p) for p in jobs))]
        for task in started:
            report = await wait_report(executor, task.handle, until={TaskState.PENDING})
            assert report.message.endswith("is pending (Resources)"), report.message
    codes = [(await wait_report(executor, task.handle)).exit_code for task in started]
    assert codes == [0, 1]


async def test_max_array_size_splits_the_jobs_started_together(home: Path) -> None:
    settings = make_settings(home, executor="slurm", slurm=slurm_settings(max_array_size=2))
    executor = SlurmExecutor.from_settings(settings)
    try:
        jobs = [placement(entrypoint=f"exit {i}") for i in range(3)]
        started = [task for (task,) in await asyncio.gather(*(executor.start(p) for p in jobs))]
        ids = [task.handle["slurm_job_id"] for task in started]
        assert ids[:2] == [f"{ids[0].split('_')[0]}_{i}" for i in range(2)]
        assert ids[2].isdigit()  # the one left over goes alone, named after its job
        assert started[2].handle["name"] == f"jobyard-{jobs[2].job_id}-{jobs[2].display_id}"
        codes = [(await wait_report(executor, task.handle)).exit_code for task in started]
        assert codes == [0, 1, 2]
    finally:
        await executor.close()


async def test_an_array_slurm_refuses_goes_job_by_job(executor: SlurmExecutor) -> None:
    """A cluster whose MaxArraySize is below the group: each job still gets its own sbatch."""
    run, refused = executor._tools.run, []

    async def small_max_array_size(tool: str, args: Sequence[str], **kw: Any) -> Result:
        if tool == "sbatch" and any(a.startswith("--array=") for a in args):
            refused.append(tool)
            error = "sbatch: error: Batch job submission failed: Invalid job array specification"
            return Result(1, "", error)
        return await run(tool, args, **kw)

    executor._tools.run = small_max_array_size  # type: ignore[method-assign]
    jobs = [placement(entrypoint=f"exit {i}") for i in range(2)]
    started = [task for (task,) in await asyncio.gather(*(executor.start(p) for p in jobs))]
    assert refused == ["sbatch"]
    assert all(task.handle["slurm_job_id"].isdigit() for task in started)
    assert [(await wait_report(executor, t.handle)).exit_code for t in started] == [0, 1]


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
        with node_filled(cpus):
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
        SlurmExecutor.from_settings(broken)


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


# ---- a start a crash interrupted: sbatch took the job, its id was never stored ---------------


async def test_jobs_whose_slurm_ids_were_never_stored_are_found_and_adopted(home: Path) -> None:
    """A new executor (as after a kill -9 between sbatch and the write of the ids) finds each
    job by its name, or an array element by the arm of the array's script that writes its
    log; a start that never reached sbatch is not found."""
    settings = make_settings(home, executor="slurm", slurm=slurm_settings())
    first = SlurmExecutor.from_settings(settings)
    since = time.time()
    together = [placement(entrypoint=f"echo up; sleep 1; exit {i}") for i in range(3)]
    pair = placement(entrypoint="echo up; exit 7", replicas=2)  # one Slurm job of its own
    never = placement(entrypoint="true")
    starts = [*together, pair]
    started = await asyncio.gather(*(first.start(p) for p in starts))
    await first.close()
    second = SlurmExecutor.from_settings(settings)
    try:
        found = await second.find_started([InterruptedStart(p, since) for p in [*starts, never]])
        ids = [[t.handle["slurm_job_id"] if t else None for t in tasks] for tasks in found]
        assert ids == [[t.handle["slurm_job_id"] for t in tasks] for tasks in started] + [[None]]
        assert len({i[0].split("_")[0] for i in ids[:3] if i[0]}) == 1, ids  # one array
        tasks = [t for tasks in found[:4] for t in tasks if t is not None]
        codes = [(await wait_report(second, t.handle)).exit_code for t in tasks]
        assert codes == [0, 1, 2, 7, 7]
        assert [second.read_log(t.handle, 0, 100) for t in tasks] == [b"up\n"] * 5
    finally:
        await second.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kill_9_while_jobs_start_on_slurm_loses_no_job_that_slurm_took(tmp_path: Path) -> None:
    """A real server on Slurm, killed while jobs are between sbatch and the write of their
    ids, three times: after the restart every job Slurm ran has its real exit code and log, and no
    Slurm job is left running for a job jobyard has finished."""
    home = tmp_path / "home"
    env = {"JOBYARD_EXECUTOR": "slurm", "JOBYARD_RECONCILE_MIN_GAP_SECONDS": "0.3"}
    if CONF:
        env["JOBYARD_SLURM__CONF"] = CONF
    server = ServerProcess(home, tmp_path / "server.log", JOBYARD_LOG_LEVEL="warning", **env)
    server.start()
    rng, ids, expected, caught = random.Random(24), {}, {}, 0
    try:
        for round_ in range(3):
            bodies: list[dict[str, object]] = []
            for i in range(12):
                sid, code = f"r{round_}-{i}", rng.choice((0, 3))
                expected[sid] = code
                bodies.append({"entrypoint": f"echo up; exit {code}", "submission_id": sid})
            killer = KillWhileStarting(server, rng, most_sightings=20)  # sbatch takes longer
            ids |= submit_all(server, bodies)
            killer.join()
            caught += killer.caught
            server.start()
            ids |= submit_all(server, [b for b in bodies if b["submission_id"] not in ids])
        finished = ("SUCCEEDED", "FAILED", "STOPPED")
        wait_for(lambda: all(server.job(j)["state"] in finished for j in ids.values()), 60, 0.3)
        jobs = {sid: server.job(job) for sid, job in ids.items()}
    finally:
        server.stop()
    live = [
        line
        for line in slurm("squeue", "-h", "-o", "%i|%T|%Z").splitlines()
        if line.split("|")[-1].startswith(str(tmp_path))
    ]
    ran = {sid for sid, job in ids.items() if log_on_disk(home, job).startswith("up")}
    wrong = {sid: jobs[sid] for sid in ran if jobs[sid]["exit_code"] != expected[sid]}
    lost = {sid for sid, job in jobs.items() if job["reason"] == "LOST"}
    print(f"\n{len(jobs)} jobs, {caught} mid-start at the kills, {len(lost)} LOST, {len(ran)} ran")
    assert len(jobs) == 36 and live == []
    assert wrong == {} and lost.isdisjoint(ran), (wrong, sorted(lost & ran))
