"""The Ray executor against a real Ray head (`ray_support.py`), beyond the executor contract:
a driver that joins the cluster, Ray's states, logs kept after Ray forgets a job, a lost start
taken over, a head that does not answer, capacity from the cluster, and every face.

The mapping functions (placement to submission, Ray's word to a report) are checked first,
without a head.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.ray_support import SKIP_REASON

if SKIP_REASON is not None:
    pytest.skip(SKIP_REASON, allow_module_level=True)

from ray.job_submission import JobSubmissionClient

from jobyard.config import RaySettings, Settings
from jobyard.errors import ExecutorRefused
from jobyard.executors.base import Handle, InterruptedStart
from jobyard.executors.ray.client import RayJob
from jobyard.executors.ray.executor import RayExecutor
from jobyard.executors.ray.status import (
    capacity_of,
    driver_output,
    job_processes,
    report_of,
    usage_of,
)
from jobyard.executors.ray.submission import build_submission, check_spec
from jobyard.model import JobSpec, Placement, TaskState, TerminationReason
from jobyard.model.job import TaskPlacement
from tests.helpers import LiveServer, make_settings, running_server, wait_for, wait_report
from tests.integration.ray_support import (
    Gate,
    RayHead,
    ray_head_fixture,  # noqa: F401 - the ray_head fixture
    stop_jobs_of,
)

pytestmark = [
    # Ray's client passes ssl=None to aiohttp, which newer aiohttp releases deprecate.
    pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning"),
]
_numbers = itertools.count(1)


def placement(**spec: Any) -> Placement:
    job_id = 20_000_000 + os.getpid() * 1000 + next(_numbers) % 1000
    return Placement(
        job_id=job_id,
        display_id=f"r{job_id}",
        owner="alice",
        spec=JobSpec(**spec),
        tasks=[TaskPlacement(index=0, name=f"r{job_id}-worker-0", node="n")],
    )


def settings_at(home: Path, address: str, **overrides: Any) -> Settings:
    ray = RaySettings(address=address)
    return make_settings(home, executor="ray", ray=ray, stop_grace_seconds=4, **overrides)


def ray_job(status: str, **fields: Any) -> RayJob:
    return RayJob(submission_id="s", status=status, entrypoint="e", **fields)


# ---- the mapping, without a head -------------------------------------------------------------


def test_a_submission_carries_env_working_dir_pip_resources_and_metadata(tmp_path: Path) -> None:
    p = placement(
        entrypoint=["python", "train.py", "--lr", "0.1 0.2"],
        env={"FOO": "bar", "PYTHONPATH": f"{tmp_path}:/opt/lib"},
        working_dir=str(tmp_path),
        runtime_env={"pip": ["requests==2.31"], "working_dir": "gcs://x.zip"},
        setup="make a venv on the server",  # the Ray face's own pip step: Ray installs instead
        resources={"cpus": 1.5, "gpus": 1, "gpu_model": "A100", "memory": 512},
    )
    sub = build_submission(p, None, stop_wait=2.5, gpu_type="A100", instance="me")
    kwargs = sub.kwargs()
    assert kwargs["submission_id"] == f"jobyard-{p.job_id}-{p.tasks[0].name}"
    assert kwargs["entrypoint"].startswith("python train.py --lr '0.1 0.2'; _jobyard_rc=$?")
    env = kwargs["runtime_env"]["env_vars"]
    assert (env["FOO"], env["PYTHONPATH"], env["JOBYARD_JOB_ID"]) == (
        "bar",
        "/opt/lib",
        str(p.job_id),
    )
    assert env["RAY_JOB_STOP_WAIT_TIME_S"] == "3"  # whole seconds, as Ray reads it
    assert "CUDA_VISIBLE_DEVICES" not in env  # GPUs asked for: Ray assigns them
    assert kwargs["runtime_env"]["working_dir"] == str(tmp_path)  # Ray's client uploads it
    assert kwargs["runtime_env"]["pip"] == ["requests==2.31"]
    assert (kwargs["entrypoint_num_cpus"], kwargs["entrypoint_num_gpus"]) == (1.5, 1)
    assert kwargs["entrypoint_memory"] == 512 * 2**20
    assert kwargs["entrypoint_resources"] == {"accelerator_type:A100": 0.001}
    assert kwargs["metadata"]["jobyard_instance"] == "me"
    assert type(sub).from_json(json.loads(json.dumps(sub.to_json()))) == sub  # a handle keeps it
    plain = build_submission(
        placement(entrypoint="true"), None, stop_wait=0, gpu_type=None, instance="me"
    )
    assert not {k for k in plain.kwargs() if k.startswith("entrypoint_")}  # nothing reserved
    assert plain.kwargs()["runtime_env"]["env_vars"]["CUDA_VISIBLE_DEVICES"] == ""


def test_py_modules_conda_and_uris_only_ray_can_fetch_go_to_ray(tmp_path: Path) -> None:
    """As the Ray face leaves a job: each py_modules package unpacked on the server (under
    <home>/runtime_env/working_dirs, on its PYTHONPATH), conda, a remote working_dir, and its
    own set-up step (which would fail on conda and the URI: Ray makes them instead)."""
    unpacked = tmp_path / "runtime_env" / "working_dirs"
    pkg = unpacked / "a1"
    (pkg / "mymod").mkdir(parents=True)
    (pkg / "single.py").write_text("X = 1\n")
    (pkg / "notes.txt").write_text("not a module\n")
    local = tmp_path / "local_mod"
    local.mkdir()
    p = placement(
        entrypoint="python -c 'import mymod'",
        env={"PYTHONPATH": f"{pkg}:/opt/lib"},
        runtime_env={
            "py_modules": ["gcs://_ray_pkg_a1.zip", str(local), "s3://bucket/m.zip"],
            "working_dir": "https://example.com/code.zip",
            "conda": {"dependencies": ["numpy"]},
            "config": {"setup_timeout_seconds": 30},
            "excludes": ["*.log"],
        },
        setup="printf 'runtime_env.conda: jobyard does not build conda environments'; exit 78",
    )
    sub = build_submission(
        p, None, stop_wait=1, gpu_type=None, instance="me", unpacked=unpacked
    )  # fmt: skip
    env = sub.runtime_env
    assert env["py_modules"] == [str(pkg / "mymod"), str(pkg / "single.py"), str(local),
                                 "s3://bucket/m.zip"]  # fmt: skip
    assert env["working_dir"] == "https://example.com/code.zip"
    assert env["conda"] == {"dependencies": ["numpy"]}
    assert (env["config"], env["excludes"]) == ({"setup_timeout_seconds": 30}, ["*.log"])
    assert env["env_vars"]["PYTHONPATH"] == "/opt/lib"  # the server's copy means nothing there
    assert "exit 78" not in sub.entrypoint  # Ray sets the environment up, or fails as Ray does
    kept = build_submission(
        placement(entrypoint="true", setup="echo mine", env={"PYTHONPATH": str(pkg)}),
        None, stop_wait=1, gpu_type=None, instance="me", unpacked=unpacked,
    )  # fmt: skip
    assert "echo mine" in kept.entrypoint  # nothing for Ray to set up: the step runs
    assert kept.runtime_env["py_modules"] == [str(pkg / "mymod"), str(pkg / "single.py")]
    assert "PYTHONPATH" not in kept.runtime_env["env_vars"]


def test_multi_worker_jobs_and_pip_command_lines_are_refused_naming_the_field() -> None:
    with pytest.raises(ExecutorRefused, match="one-worker jobs") as info:
        check_spec(JobSpec(entrypoint="true", replicas=2))
    assert info.value.field == "replicas"
    with pytest.raises(ExecutorRefused) as info:
        check_spec(JobSpec(entrypoint="true", runtime_env={"pip": "pip install x"}))
    assert info.value.field == "runtime_env.pip"


@pytest.mark.parametrize(
    ("job", "killed", "expected"),
    [
        (ray_job("PENDING", message="waiting"), False, (TaskState.PENDING, None)),
        (ray_job("RUNNING"), False, (TaskState.RUNNING, None)),
        (ray_job("SUCCEEDED", exit_code=0), False, (TaskState.EXITED, 0)),
        (ray_job("FAILED", exit_code=7), False, (TaskState.EXITED, 7)),
        (ray_job("STOPPED"), False, (TaskState.EXITED, 128 + 15)),
        (ray_job("STOPPED"), True, (TaskState.EXITED, 128 + 9)),
        (ray_job("FAILED", error_type="RUNTIME_ENV_SETUP_FAILURE"), False, (TaskState.LOST, None)),
    ],
)
def test_rays_states_become_task_reports_with_rays_message(
    job: RayJob, killed: bool, expected: tuple[TaskState, int | None]
) -> None:
    report = report_of(job, killed=killed)
    assert (report.state, report.exit_code) == expected
    if job.status in ("PENDING", "FAILED") and report.exit_code is None:
        assert (job.message or job.error_type or "") in report.message


def test_the_driver_output_leaves_out_rays_own_lines() -> None:
    job = ray_job("RUNNING")
    setup = "2026-01-02 03:04:05,678\tINFO job_manager.py:581 -- Runtime env is setting up.\n"
    header = "Running entrypoint for job s: e\n"
    # Ray flushes its entrypoint line after starting the driver: early output comes first.
    text = f"{setup}ab{header}c\ndé"
    assert driver_output(text, job, final=False) == b"abc\n"  # whole lines while it runs
    assert driver_output(text, job, final=True) == "abc\ndé".encode()
    assert driver_output(setup, job, final=False) == b""  # the driver has not started
    assert driver_output(setup, job, final=True) == setup.encode()  # never did: Ray says why


def test_capacity_is_the_live_nodes_total() -> None:
    gib = float(2**30)
    nodes = [
        {"state": "ALIVE", "resources_total": {"CPU": 8.0, "memory": 4 * gib}},
        {
            "state": "ALIVE",
            "resources_total": {"CPU": 4.0, "GPU": 2.0, "accelerator_type:A100": 1.0},
        },
        {"state": "DEAD", "resources_total": {"CPU": 64.0, "GPU": 8.0}},
    ]
    capacity = capacity_of(nodes, node="ray:x", max_tasks=9)
    assert (capacity.cpus, capacity.memory_mib, capacity.max_tasks) == (12.0, 4096, 9)
    assert (
        not capacity.can_grow and capacity_of(nodes, node="x", max_tasks=9, can_grow=True).can_grow
    )
    assert [(g.index, g.model) for g in capacity.gpus] == [(0, "A100"), (1, "A100")]


def test_a_jobs_usage_is_its_driver_tasks_and_actors_in_the_dashboards_node_figures() -> None:
    job = ray_job("RUNNING", ray_job_id="03000000")
    workers = [
        {"worker_type": "DRIVER", "worker_id": "03000000ffff", "pid": 10, "node_id": "a"},
        {"worker_type": "DRIVER", "worker_id": "01000000ffff", "pid": 11, "node_id": "a"},
    ]
    tasks = [
        {"job_id": "03000000", "state": "RUNNING", "worker_pid": 20, "node_id": "b"},
        {"job_id": "03000000", "state": "FINISHED", "worker_pid": 21, "node_id": "b"},
        {"job_id": "01000000", "state": "RUNNING", "worker_pid": 22, "node_id": "b"},
    ]
    actors = [{"job_id": "03000000", "state": "ALIVE", "pid": 30, "node_id": "a"}]
    processes = job_processes(job, workers, tasks, actors)
    assert processes == {"a": {10, 30}, "b": {20}}
    assert job_processes(ray_job("RUNNING"), workers, tasks, actors) == {}  # no ray.init()

    def proc(pid: int, cpu: float, mib: int) -> dict[str, Any]:
        return {"pid": pid, "cpuPercent": cpu, "memoryInfo": {"rss": mib * 2**20}}

    gpu = {"index": 1, "utilizationGpu": 70, "memoryUsed": 1024, "memoryTotal": 4096,
           "processesPids": [{"pid": 20, "gpuMemoryUsage": 1000}]}  # fmt: skip
    idle_gpu = {**gpu, "index": 0, "processesPids": []}
    nodes = {
        "a": {"workers": [proc(10, 150.0, 100), proc(11, 99.0, 999), proc(30, 50.0, 28)]},
        "b": {"workers": [proc(20, 100.0, 1000)], "gpus": [idle_gpu, gpu]},
    }
    usage = usage_of(processes, nodes)
    assert usage is not None
    assert (usage.cpu_cores, usage.rss_bytes) == (3.0, 1128 * 2**20)  # cpuPercent: of one core
    assert usage.gpus is not None and [(g.index, g.utilization_percent) for g in usage.gpus] == [
        (1, 70.0)
    ]
    assert usage.gpus[0].memory_used_bytes == 1024 * 2**20
    no_gpus = usage_of({"a": {10}}, {"a": nodes["a"]})
    assert no_gpus is not None and no_gpus.gpus is None  # no GPU figures there: absent
    assert usage_of({"a": {99}}, nodes) is None  # Ray has figures of none of its processes


# ---- the executor on a real head -------------------------------------------------------------


@pytest.fixture
async def executor(ray_head: RayHead, home: Path) -> AsyncIterator[RayExecutor]:
    ex = RayExecutor.from_settings(settings_at(home, ray_head.dashboard))
    yield ex
    await ex.close()
    stop_jobs_of(ray_head, home)


async def wait_log(executor: RayExecutor, handle: Handle, text: bytes) -> None:
    """Until the task's log is `text` (the watcher copies it from Ray on the event loop)."""
    deadline = time.monotonic() + 30
    while executor.read_log(handle, 0, 1 << 20) != text:
        assert time.monotonic() < deadline, executor.read_log(handle, 0, 1 << 20)
        await executor.poll([handle])
        await asyncio.sleep(0.05)


async def test_capacity_is_the_clusters_and_outlives_a_head_that_is_down(
    executor: RayExecutor, ray_head: RayHead, home: Path
) -> None:
    capacity = executor.capacity()
    assert (capacity.cpus, capacity.gpus, capacity.can_grow) == (float(ray_head.cpus), [], True)
    assert capacity.memory_mib > 0
    down = RayExecutor.from_settings(
        settings_at(home, "http://127.0.0.1:9")
    )  # nothing listens there
    fixed = RaySettings(address="http://127.0.0.1:9", pool_can_grow=False)
    fixed_down = RayExecutor.from_settings(make_settings(home, executor="ray", ray=fixed))
    try:
        assert down.capacity() == capacity  # the last one read, saved in the data directory
        assert fixed_down.capacity() == capacity.model_copy(update={"can_grow": False})
    finally:
        await down.close()
        await fixed_down.close()


async def test_logs_are_followed_and_kept_after_ray_forgets_the_job(
    executor: RayExecutor, ray_head: RayHead, home: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    p = placement(entrypoint='echo one; until [ -e "$GO" ]; do sleep 0.05; done; echo two; exit 3',
                  env={"GO": str(go)})  # fmt: skip
    (task,) = await executor.start(p)
    await wait_log(executor, task.handle, b"one\n")
    assert (await executor.poll([task.handle]))[0].state is TaskState.RUNNING
    go.touch()
    report = await wait_report(executor, task.handle)
    assert (report.state, report.exit_code) == (TaskState.EXITED, 3)
    assert executor.read_log(task.handle, 0, 100) == b"one\ntwo\n"
    ray = JobSubmissionClient(ray_head.dashboard)
    assert ray.delete_job(task.handle["submission_id"])  # Ray has forgotten it (as a restart does)
    again = RayExecutor.from_settings(
        settings_at(home, ray_head.dashboard)
    )  # and jobyard restarted
    try:
        (report,) = await again.poll([task.handle])
        assert (report.state, report.exit_code) == (TaskState.EXITED, 3)
        assert again.read_log(task.handle, 0, 100) == b"one\ntwo\n"
    finally:
        await again.close()


async def test_a_running_job_ray_no_longer_knows_is_lost_saying_so(
    executor: RayExecutor, ray_head: RayHead, home: Path
) -> None:
    p = placement(entrypoint="echo ready; sleep 300")
    (task,) = await executor.start(p)
    await wait_log(executor, task.handle, b"ready\n")
    handle = {**task.handle, "submission_id": f"{task.handle['submission_id']}-gone"}
    (report,) = await executor.poll([handle])  # as after a head restart: Ray has no such job
    assert (report.state, report.reason) == (TaskState.LOST, TerminationReason.LOST)
    assert "no longer knows" in report.message


async def test_a_start_that_was_never_recorded_is_found_and_a_retry_is_new(
    executor: RayExecutor, ray_head: RayHead, home: Path
) -> None:
    p = placement(entrypoint="echo ran; sleep 2")
    since = time.time()
    (first,) = await executor.start(p)
    (again,) = await executor.start(p)  # started again while Ray runs it: taken over
    assert again.handle["submission_id"] == first.handle["submission_id"]
    executor.release(first.handle, remove_files=False)  # as if this server had crashed
    restarted = RayExecutor.from_settings(
        settings_at(home, ray_head.dashboard)
    )  # its handle never stored
    try:
        [[found]] = await restarted.find_started([InterruptedStart(p, since)])
        assert found is not None and found.handle == {**first.handle, "deferred": None}
        assert (await wait_report(restarted, found.handle)).exit_code == 0
        assert restarted.read_log(found.handle, 0, 100) == b"ran\n"  # it ran once
        later = InterruptedStart(p, time.time())  # a later attempt's: this one is not it
        never = InterruptedStart(placement(entrypoint="true"), since)  # nothing in Ray
        assert await restarted.find_started([later, never]) == [[None], [None]]
    finally:
        await restarted.close()
    (retry,) = await executor.start(p)  # a retry of the same task: Ray never reuses an id
    assert retry.handle["submission_id"] == f"{first.handle['submission_id']}-2"
    assert (await wait_report(executor, retry.handle)).exit_code == 0
    assert executor.read_log(retry.handle, 0, 100) == b"ran\nran\n"  # appended, as locally


async def test_a_job_ray_cannot_set_up_is_lost_with_rays_reason(executor: RayExecutor) -> None:
    p = placement(entrypoint="true", working_dir="gcs://_ray_pkg_0000000000000000.zip")
    (task,) = await executor.start(p)
    report = await wait_report(executor, task.handle)
    assert (report.state, report.reason) == (TaskState.LOST, TerminationReason.START_FAILED)
    assert "RUNTIME_ENV_SETUP_FAILURE" in report.message
    assert (
        "jobyard: the Ray job failed (RUNTIME_ENV_SETUP_FAILURE)"
        in executor.read_log(task.handle, 0, 1 << 20).decode()
    )


@pytest.mark.slow
async def test_a_job_ray_holds_for_resources_is_pending_with_rays_message(
    executor: RayExecutor, ray_head: RayHead
) -> None:
    """Ray's own queue (another user of the cluster holds its CPUs): PENDING, Ray's why."""
    (hold,) = await executor.start(placement(entrypoint="sleep 300", resources={"cpus": 2}))
    await wait_report(executor, hold.handle, until={TaskState.RUNNING})
    (wait,) = await executor.start(placement(entrypoint="echo mine", resources={"cpus": 2}))
    (report,) = await executor.poll([wait.handle])
    assert report.state is TaskState.PENDING
    assert "waiting for resources" in report.message
    await executor.stop(hold.handle, grace=4)
    assert (await wait_report(executor, wait.handle)).exit_code == 0


async def test_multi_worker_jobs_are_refused(executor: RayExecutor) -> None:
    with pytest.raises(ExecutorRefused) as info:
        executor.check_spec_supported(JobSpec(entrypoint="true", replicas=2))
    assert info.value.field == "replicas"


# ---- a server on the Ray pool ----------------------------------------------------------------

DRIVER = """
import json, os, ray
ray.init()
@ray.remote
def square(i):
    return i * i, ray.get_runtime_context().get_node_id()
done = ray.get([square.remote(i) for i in range(10)])
print("RESULT " + json.dumps({
    "squares": [s for s, _ in done],
    "task_nodes": sorted({n for _, n in done}),
    "driver_node": ray.get_runtime_context().get_node_id(),
    "address": os.environ.get("RAY_ADDRESS"),
    "cpus": ray.cluster_resources().get("CPU"),
}))
"""


@pytest.fixture(scope="module")
def server(ray_head: RayHead, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("raypool") / "home"
    with running_server(settings_at(home, ray_head.dashboard), ray=True) as live:
        yield live
    stop_jobs_of(ray_head, home)


def head_node_id(head: RayHead) -> str:
    nodes = httpx.get(f"{head.dashboard}/api/v0/nodes", timeout=10).json()
    (node,) = nodes["data"]["result"]["result"]
    return str(node["node_id"])


def submit(api: httpx.Client, **body: Any) -> dict[str, Any]:
    answer = api.post("/api/v1/jobs", json=body)
    assert answer.status_code == 201, answer.text
    job: dict[str, Any] = answer.json()
    return job


@pytest.mark.slow
def test_a_drivers_ray_init_joins_the_cluster_and_its_tasks_run_there(
    server: LiveServer, ray_head: RayHead
) -> None:
    with server.client() as api:
        job = submit(api, entrypoint=[sys.executable, "-c", DRIVER])
        done = server.wait_state(job["id"], "SUCCEEDED", "FAILED", timeout=60)
        log = api.get(f"/api/v1/jobs/{job['id']}/logs").text
    assert done["state"] == "SUCCEEDED", log
    (line,) = [x for x in log.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    assert result["squares"] == [i * i for i in range(10)]
    node = head_node_id(ray_head)
    assert (result["driver_node"], result["task_nodes"]) == (node, [node])  # on the cluster
    assert result["address"] == ray_head.gcs  # RAY_ADDRESS: the cluster's, no private Ray
    assert result["cpus"] == ray_head.cpus


def test_the_queue_waits_for_the_clusters_cpus(server: LiveServer) -> None:
    """The pool's capacity is the cluster's 2 CPUs: the scheduler holds the second job. A
    cluster can grow (an autoscaler), so asks beyond its CPUs or GPUs wait too, on every face
    in Ray's words, without holding back the jobs that fit."""
    ray_face = JobSubmissionClient(
        server.ray_url, headers={"Authorization": f"Bearer {server.token}"}
    )
    with server.client() as api:
        first = submit(api, entrypoint="sleep 2", resources={"cpus": 2})
        beyond = submit(api, entrypoint="echo three", resources={"cpus": 3})
        on_ray = ray_face.submit_job(entrypoint="echo gpus", entrypoint_num_gpus=2)
        second = submit(api, entrypoint="echo second", resources={"cpus": 2})

        def waiting(ref: str) -> dict[str, Any] | None:
            seen: dict[str, Any] = api.get(f"/api/v1/jobs/{ref}").json()
            return seen if seen["pending_reason"] else None

        queued = wait_for(lambda: waiting(second["id"]), 10)
        assert (queued["state"], queued["pending_reason"]) == ("QUEUED", "WAITING_FOR_CAPACITY")
        assert queued["pending_message"] == "needs 2 CPUs (0 free)"
        for ref, need in ((beyond["id"], "needs 3 CPUs"), (on_ray, "needs 2 GPUs (0 free)")):
            big = wait_for(lambda ref=ref: waiting(ref), 10)
            assert (big["state"], big["pending_reason"]) == ("QUEUED", "WAITING_FOR_CAPACITY")
            assert big["pending_message"].startswith(need), big
            assert "may be waiting for resources (CPUs, GPUs, memory" in big["pending_message"]
        info = ray_face.get_job_info(on_ray)
        assert info.status == "PENDING"
        assert "It may be waiting for resources (CPUs, GPUs, memory, custom resources)" in (
            info.message or ""
        )
        assert server.wait_state(first["id"], "SUCCEEDED", timeout=60)
        assert server.wait_state(second["id"], "SUCCEEDED", timeout=60)
        assert api.get(f"/api/v1/jobs/{second['id']}/logs").text == "second\n"
        assert api.get(f"/api/v1/jobs/{beyond['id']}").json()["state"] == "QUEUED"
        assert ray_face.stop_job(on_ray) is True
        assert api.post(f"/api/v1/jobs/{beyond['id']}/stop").status_code == 202
        assert server.wait_state(beyond["id"], "STOPPED", timeout=30)
        assert server.wait_state(on_ray, "STOPPED", timeout=30)


def test_a_job_submitted_on_any_face_runs_on_the_ray_pool(
    server: LiveServer, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "hello.txt").write_text("uploaded twice\n")  # to jobyard, then by it to Ray
    ray_face = JobSubmissionClient(
        server.ray_url, headers={"Authorization": f"Bearer {server.token}"}
    )
    with server.client() as api:
        ids = {"native": submit(api, entrypoint="echo native")["id"]}
        paas = api.post(
            "/v1/job", files={k: (None, v) for k, v in {"cmd": "echo paas", "agent_domain": "0",
                                                         "spec": '{"gpuName": ""}'}.items()}
        )  # fmt: skip
        assert paas.status_code == 200 and paas.json()["code"] == 0, paas.text
        ids["paas"] = paas.json()["job"]["id"]
        training = api.post(
            "/api/jobs/create", json={"jobName": "t", "command": ["echo", "training"]}
        )
        assert training.status_code == 200, training.text
        ids["training"] = training.json()["data"]["jobId"]
        ids["ray"] = ray_face.submit_job(
            entrypoint="cat hello.txt", runtime_env={"working_dir": str(code)}
        )
        for face, ref in ids.items():
            done = server.wait_state(ref, "SUCCEEDED", "FAILED", timeout=60)
            log = api.get(f"/api/v1/jobs/{done['id']}/logs").text
            assert done["state"] == "SUCCEEDED", (face, log)
            if face == "ray":  # the Ray face writes Ray's own lines first, on every executor
                assert log.endswith("\nuploaded twice\n"), log
            else:
                assert log == f"{face}\n", (face, log)


MODULE_USER = (
    "import mymod, single; print('MODULE', mymod.WHO, single.X, mymod.__file__.startswith(%r))"
)


def test_the_ray_faces_py_modules_are_uploaded_to_ray_and_conda_is_rays_to_set_up(
    server: LiveServer, tmp_path: Path
) -> None:
    """py_modules through the Ray face onto the Ray pool: Ray's client uploads them to jobyard,
    jobyard's to the cluster, where Ray unpacks them for the driver (not the server's copy).
    conda goes to Ray too, which fails the job as Ray does where it has no conda."""
    mods = tmp_path / "mods"
    (mods / "mymod").mkdir(parents=True)
    (mods / "mymod" / "__init__.py").write_text("WHO = 'from py_modules'\n")
    (mods / "single").mkdir()
    (mods / "single" / "__init__.py").write_text("X = 42\n")
    ray_face = JobSubmissionClient(
        server.ray_url, headers={"Authorization": f"Bearer {server.token}"}
    )
    home = str(server.settings.home.resolve())
    sid = ray_face.submit_job(
        entrypoint=f'{sys.executable} -c "{MODULE_USER % home}"',
        runtime_env={"py_modules": [str(mods / "mymod"), str(mods / "single")]},
    )
    conda = ray_face.submit_job(
        entrypoint="echo never", runtime_env={"conda": {"dependencies": ["no-such-package"]}}
    )
    with server.client() as api:
        done = server.wait_state(sid, "SUCCEEDED", "FAILED", timeout=60)
        log = api.get(f"/api/v1/jobs/{done['id']}/logs").text
        assert done["state"] == "SUCCEEDED", log
        assert "MODULE from py_modules 42 False" in log  # Ray's copy, on the cluster
        failed = server.wait_state(conda, "SUCCEEDED", "FAILED", timeout=120)
        assert failed["state"] == "FAILED", failed
        assert "RUNTIME_ENV_SETUP_FAILURE" in failed["message"], failed
        conda_log = api.get(f"/api/v1/jobs/{failed['id']}/logs").text
    assert "never" not in conda_log
    assert "jobyard does not build conda" not in conda_log  # Ray's word, not jobyard's
    assert ray_face.get_job_status(conda).value == "FAILED"


BUSY_DRIVER = """
import ray, time
ray.init()
held = bytearray(300 * 2**20)  # resident: written below
for i in range(0, len(held), 4096):
    held[i] = 1
@ray.remote
def spin(seconds):
    end = time.time() + seconds
    while time.time() < end:
        pass
task = spin.remote(120)
end = time.time() + 120
while time.time() < end:
    pass
"""


@pytest.mark.slow
def test_a_ray_jobs_usage_is_sampled_from_rays_own_figures(server: LiveServer) -> None:
    """A driver on the cluster that holds 300 MiB and keeps a core busy, with a task that keeps
    another busy: its samples (GET /api/v1/jobs/{ref}/metrics, what `jobyard metrics` shows)
    come from Ray's dashboard, with no GPU figures (the head has none): absent, not zero."""
    with server.client() as api:
        job = submit(api, entrypoint=[sys.executable, "-c", BUSY_DRIVER])
        try:

            def busy() -> dict[str, Any] | None:
                reply = api.get(f"/api/v1/jobs/{job['id']}/metrics").json()
                samples = reply["tasks"][0]["samples"]
                big = [s for s in samples if (s["memory_rss_bytes"] or 0) > 300 * 2**20]
                return big[-1] if big and (big[-1]["cpu_cores"] or 0) > 0.05 else None

            sample = wait_for(busy, 90)
            assert sample["gpus"] is None  # Ray reports no GPU on this head
            assert sample["cpu_cores"] <= 2.5  # the driver and its task: at most the 2 cores here
        finally:
            api.post(f"/api/v1/jobs/{job['id']}/stop")
        assert server.wait_state(job["id"], "STOPPED", "FAILED", "SUCCEEDED", timeout=60)


def test_a_head_that_is_down_makes_new_jobs_wait_then_they_run(
    ray_head: RayHead, tmp_path: Path
) -> None:
    gate = Gate(ray_head.dashboard)
    gate.open()
    try:
        with running_server(settings_at(tmp_path / "home", gate.url)) as live:
            gate.shut()
            with live.client() as api:
                job = submit(api, entrypoint="echo after")

                def waiting() -> dict[str, Any] | None:
                    seen: dict[str, Any] = api.get(f"/api/v1/jobs/{job['id']}").json()
                    return seen if seen["pending_reason"] == "EXECUTOR_UNAVAILABLE" else None

                seen = wait_for(waiting, 15)
                assert seen["state"] == "STARTING"
                assert "Ray does not answer" in seen["pending_message"]
                time.sleep(1)
                assert api.get(f"/api/v1/jobs/{job['id']}").json()["state"] == "STARTING"
                gate.open()
                assert live.wait_state(job["id"], "SUCCEEDED", timeout=60)
                assert api.get(f"/api/v1/jobs/{job['id']}/logs").text == "after\n"
    finally:
        gate.close()
        stop_jobs_of(ray_head, tmp_path / "home")
