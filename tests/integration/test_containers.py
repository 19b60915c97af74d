"""Jobs with an image run in a container (podman), pulled from a real registry on loopback.

What every executor promises runs for containers too in test_executor_contract.py (the
`local-container` kind). Here: pulls (PULLING, then RUNNING; IMAGE_PULL_FAILED with the
registry's words; a pull that hangs), a Python program in a Debian image made by mmdebstrap
(on the training face), the stop with nothing left (`podman ps -a`, conmon and
the supervisor by psutil), a server restart, a container whose supervisor died found by its
labels, workers reaching each other, what a mount lets a job write, a shell inside, GPUs,
the 4xx answers to bad input, and a pull on a Slurm node.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from jobyard.config import GpuSpec
from jobyard.errors import ExecutorRefused
from jobyard.executors import containers
from jobyard.executors.base import (
    InterruptedStart,
    StartedTask,
    StartFailed,
)
from jobyard.executors.local.executor import LocalExecutor
from jobyard.executors.slurm.executor import SlurmExecutor
from jobyard.model import JobSpec, PendingReason, Placement, TaskState, TerminationReason
from jobyard.model.job import TaskPlacement
from tests.helpers import LiveServer, make_settings, running_server, wait_for, wait_report
from tests.integration.container_support import (
    Images,
    container_settings,
    gone_in_time,
    images_fixture,  # noqa: F401 - the images fixture
    leftover_containers,
    needs_podman,
    podman,
    python_image,
    slow_proxy,
)
from tests.integration.slurm_support import (
    SKIP_REASON as NO_SLURM,
    holding_the_cluster,
    slurm_settings,
)

pytestmark = needs_podman
_jobs = iter(range(20_000_000 + os.getpid() * 100, 20_000_000 + os.getpid() * 100 + 100))


@pytest.fixture
async def executor(images: Images, home: Path) -> AsyncIterator[LocalExecutor]:
    ex = LocalExecutor.from_settings(container_settings(home, default_image=images.local))
    yield ex
    await ex.close()
    assert gone_in_time(home) == []  # the test left no container behind


@pytest.fixture
def server(images: Images, home: Path) -> Iterator[LiveServer]:
    with running_server(container_settings(home)) as live:
        yield live
    assert gone_in_time(home) == []


def placement(**spec: Any) -> Placement:
    gpus = spec.pop("gpus", None)
    job_id, job_spec = next(_jobs), JobSpec(**spec)
    tasks = [
        TaskPlacement(index=i, name=f"job{job_id}-worker-{i}", node="n", gpus=gpus or [])
        for i in range(job_spec.replicas)
    ]
    return Placement(
        job_id=job_id, display_id=f"job{job_id}", owner="alice", spec=job_spec, tasks=tasks
    )


async def wait_log(executor: LocalExecutor, task: StartedTask, text: str) -> None:
    deadline = time.monotonic() + 30
    while text not in executor.read_log(task.handle, 0, 1 << 20).decode():
        assert time.monotonic() < deadline, f"{text!r} not in the log"
        await asyncio.sleep(0.05)


def events_of(http: Any, job_id: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = http.get(f"/api/v1/jobs/{job_id}/events").json()["items"]
    return items


# ---- through a server: pulls, their failures, bad input, a restart ---------------------------


def test_a_job_pulls_its_image_shows_pulling_then_runs_inside_it(
    server: LiveServer, images: Images, tmp_path: Path
) -> None:
    """Through a proxy that holds each connection to the registry a while, so the pull lasts
    long enough for the server to see it (it says what it sees once each pass)."""
    with slow_proxy(images.registry, 0.3) as registry, server.client() as http:
        image = images.remote.replace(images.registry, registry)
        body = {
            "entrypoint": '[ -e /run/.containerenv ] && echo inside; echo "$FOO"; pwd; exit 3',
            "image": image,
            "env": {"FOO": "bar baz"},
            "working_dir": str(tmp_path),
        }
        job = http.post("/api/v1/jobs", json=body).json()
        pulling = wait_for(lambda: _pulling(http.get(f"/api/v1/jobs/{job['id']}").json()))
        assert (pulling["state"], pulling["pending_message"]) == (
            "STARTING",
            f"pulling image {image}",
        )
        done = server.wait_state(job["id"], "FAILED", "SUCCEEDED", timeout=30)
        assert (done["exit_code"], done["reason"]) == (3, "EXIT_NONZERO")
        log = http.get(f"/api/v1/jobs/{job['id']}/logs").text
        assert log == f"inside\nbar baz\n{tmp_path}\n"
        said = [e["message"] for e in events_of(http, job["id"]) if e["reason"] == "Pending"]
        assert said == [f"{PendingReason.PULLING.value}: pulling image {image}"]
    assert podman("image", "exists", image, check=False) == ""  # pulled, and kept
    images.forget(image)


PROGRAM = """\
import hashlib, json, os, pathlib, sys
out = {
    "python": sys.executable,
    "version": list(sys.version_info[:2]),
    "in_container": os.path.exists("/run/.containerenv"),
    "task": os.environ["JOBYARD_TASK_NAME"],
    "digest": hashlib.sha256(os.environ["WORDS"].encode()).hexdigest(),
}
pathlib.Path("result.json").write_text(json.dumps(out))
print("wrote", sorted(out), flush=True)
sys.exit(int(os.environ["CODE"]))
"""


def test_a_python_program_runs_in_a_debian_image_it_pulls(
    server: LiveServer, images: Images, tmp_path: Path
) -> None:
    """An image made by mmdebstrap with Debian's python3, pulled from the registry, submitted
    on the training face as its users do (`image`, `command`, `envs`, `workingDir`): the
    program runs in the image's interpreter, writes to its mounted directory, and its exit
    code and output are the job's."""
    with python_image(images) as image, server.client() as http:
        (tmp_path / "main.py").write_text(PROGRAM)
        body = {
            "jobName": "py-in-image",
            "command": ["python3", "main.py"],
            "image": image,
            "envs": {"WORDS": "hello image", "CODE": "4"},
            "workingDir": str(tmp_path),
        }
        created = http.post("/api/jobs/create", json=body)
        assert created.status_code == 200, created.text
        job_id = created.json()["data"]["id"]
        done = server.wait_state(job_id, "FAILED", "SUCCEEDED", timeout=120)
        log = http.get(f"/api/v1/jobs/{job_id}/logs").text
        assert (done["exit_code"], done["reason"]) == (4, "EXIT_NONZERO"), log
        assert log == "wrote ['digest', 'in_container', 'python', 'task', 'version']\n"
        said = [e["message"] for e in events_of(http, job_id) if e["reason"] == "Pending"]
        assert said == [f"{PendingReason.PULLING.value}: pulling image {image}"]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result == {
        "python": "/usr/bin/python3",
        "version": [3, 11],  # Debian bookworm's, the image's (not this venv's interpreter)
        "in_container": True,
        "task": done["tasks"][0]["name"],
        "digest": hashlib.sha256(b"hello image").hexdigest(),
    }
    images.forget(image)


def _pulling(job: dict[str, Any]) -> dict[str, Any] | None:
    return job if job["pending_reason"] == PendingReason.PULLING.value else None


def test_a_tag_the_registry_lacks_fails_the_job_with_its_words(
    server: LiveServer, images: Images
) -> None:
    with server.client() as http:
        job = http.post("/api/v1/jobs", json={"entrypoint": "true", "image": images.missing()})
        done = server.wait_state(job.json()["id"], "FAILED", "SUCCEEDED", timeout=30)
        assert done["reason"] == TerminationReason.IMAGE_PULL_FAILED.value
        assert "manifest unknown" in done["message"] and images.missing() in done["message"]
        failed = [e for e in events_of(http, done["id"]) if e["type"] == "Warning"]
        assert any("manifest unknown" in e["message"] for e in failed + [done])
        assert http.get(f"/api/v1/jobs/{done['id']}/logs").text == ""  # the log is the job's


def test_bad_images_are_refused_naming_the_field(server: LiveServer, home: Path) -> None:
    with server.client() as http:
        for image in ("Busybox:1", "x/y:tag with space", "a//b:1", "x/y@sha256:short"):
            response = http.post("/api/v1/jobs", json={"entrypoint": "true", "image": image})
            assert response.status_code in (400, 422), response.text
            assert response.json()["error"]["field"] == "image"
        for word in ("busybox", "Pytorch"):  # a plain word is a catalog name, and none is it
            response = http.post("/api/v1/jobs", json={"entrypoint": "true", "image": word})
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["field"] == "image", error
            said = error["message"]
            assert f"{word!r} is not an environment of the catalog" in said, said
            assert (
                "1 (host)" in said and "registry" in said and "runs jobs as processes" not in said
            )
        env = {"entrypoint": "true", "image": "x/y:1", "env": {"A": "1\n2"}}
        response = http.post("/api/v1/jobs", json=env)
        assert response.status_code == 400 and response.json()["error"]["field"] == "env"
        assert http.get("/api/v1/jobs").json()["items"] == []
    off = make_settings(home.parent / "off", container_runtime="none")
    with running_server(off) as live, live.client() as http:
        response = http.post("/api/v1/jobs", json={"entrypoint": "true", "image": "x/y:1"})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["field"] == "image" and "container_runtime = 'none'" in error["message"]


def test_a_container_job_outlives_a_server_restart(images: Images, home: Path) -> None:
    settings = container_settings(home, default_image=images.local)
    with running_server(settings) as first, first.client() as http:
        job = http.post("/api/v1/jobs", json={"entrypoint": "echo one; sleep 2; echo two"}).json()
        first.wait_state(job["id"], "RUNNING")
        wait_for(lambda: http.get(f"/api/v1/jobs/{job['id']}/logs").text == "one\n")
    assert len(leftover_containers(home)) == 1  # still running, under conmon
    with running_server(settings) as second, second.client() as http:
        done = second.wait_state(job["id"], "SUCCEEDED", "FAILED", timeout=20)
        assert done["state"] == "SUCCEEDED"
        assert http.get(f"/api/v1/jobs/{job['id']}/logs").text == "one\ntwo\n"
        reasons = [e["reason"] for e in events_of(http, job["id"])]
        assert "Reattached" in reasons
    assert gone_in_time(home) == []


# ---- one executor: stops, pulls that hang, lost supervisors, networks, mounts, shells -----------


async def test_a_stop_leaves_no_container_no_conmon_no_supervisor(
    executor: LocalExecutor, home: Path
) -> None:
    (task,) = await executor.start(placement(entrypoint="trap '' TERM; echo ready; sleep 300"))
    await wait_log(executor, task, "ready\n")
    name = task.handle["container"]
    conmon = psutil.Process(int(podman("inspect", "--format", "{{.State.ConmonPid}}", name)))
    supervisor = psutil.Process(task.handle["pid"])
    started = time.monotonic()
    await executor.stop(task.handle, grace=1)
    report = await wait_report(executor, task.handle)
    assert (report.state, report.exit_code) == (TaskState.EXITED, 128 + 9)
    assert time.monotonic() - started >= 0.9  # stop -t 1: the grace period, then SIGKILL
    wait_for(lambda: not conmon.is_running() and not supervisor.is_running(), timeout=10)
    assert leftover_containers(home) == []


@contextlib.contextmanager
def silent_registry() -> Iterator[str]:
    """A registry that takes connections and never answers: a pull from it hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(sock.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in [*held, sock]:
            conn.close()


async def test_a_hanging_pull_is_stopped_or_times_out(images: Images, home: Path) -> None:
    settings = container_settings(home, container_pull_timeout_seconds=2)
    ex = LocalExecutor.from_settings(settings)
    try:
        with silent_registry() as registry:
            (stopped,) = await ex.start(placement(entrypoint="true", image=f"{registry}/x/y:1"))
            (timed_out,) = await ex.start(placement(entrypoint="true", image=f"{registry}/x/z:1"))
            assert stopped.waiting and timed_out.waiting  # STARTING until the image is here
            (report,) = await ex.poll([stopped.handle])
            assert (report.state, report.pending_reason) == (
                TaskState.PENDING,
                PendingReason.PULLING,
            )
            await ex.stop(stopped.handle, grace=1)
            report = await wait_report(ex, stopped.handle)
            assert (report.exit_code, report.reason) == (128 + 15, None)
            report = await wait_report(ex, timed_out.handle)
            assert report.reason is TerminationReason.IMAGE_PULL_FAILED
            assert "longer than 2 s" in report.message
    finally:
        await ex.close()
    assert gone_in_time(home) == []


async def test_a_container_whose_supervisor_died_is_found_by_its_labels(
    images: Images, home: Path
) -> None:
    settings = container_settings(home, default_image=images.local)
    first = LocalExecutor.from_settings(settings)
    p = placement(entrypoint="echo ready; sleep 300")
    (task,) = await first.start(p)
    await wait_log(first, task, "ready\n")
    await first.close()
    os.killpg(task.handle["pid"], signal.SIGKILL)  # the supervisor and its `podman run`
    wait_for(lambda: not psutil.pid_exists(task.handle["pid"]) or _zombie(task.handle["pid"]))
    assert leftover_containers(home) == [task.handle["container"]]  # it runs on, under conmon
    second = LocalExecutor.from_settings(settings)  # as after a crash that lost the task's handle
    try:
        (found,) = await second.find_started([InterruptedStart(p, since=time.time() - 60)])
        assert found[0] is not None and found[0].handle["container"] == task.handle["container"]
        report = await wait_report(second, found[0].handle)
        assert report.state is TaskState.LOST
        assert leftover_containers(home) == []  # removed by its labels before it is LOST
    finally:
        await second.close()


def _zombie(pid: int) -> bool:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    return True


async def test_workers_reach_each_other_on_the_host_network(executor: LocalExecutor) -> None:
    """Rank 0 serves a page on MASTER_PORT (busybox httpd) until rank 1 has fetched it from
    MASTER_ADDR; they share the job's directory, where rank 1 says it is done."""
    script = (
        'if [ "$RANK" = 0 ]; then echo "hello from $RANK of $WORLD_SIZE" > index.html; '
        'httpd -f -p "$MASTER_PORT" -h . & until [ -e done ]; do sleep 0.1; done; kill $!; '
        'else until wget -q -O - "http://$MASTER_ADDR:$MASTER_PORT/index.html" 2>/dev/null; '
        "do sleep 0.1; done; touch done; fi"
    )
    tasks = await executor.start(placement(entrypoint=script, replicas=2))
    for task in tasks:
        assert (await wait_report(executor, task.handle)).exit_code == 0
    assert executor.read_log(tasks[1].handle, 0, 1000) == b"hello from 0 of 2\n"


async def test_a_mount_lets_a_job_write_its_own_directory_only(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    escape = f"jobyard-escape-{os.getpid()}"
    script = f"echo in > inside && echo x > /tmp/{escape} && echo y > ../{escape} && echo done"
    (task,) = await executor.start(placement(entrypoint=script, working_dir=str(work)))
    assert (await wait_report(executor, task.handle)).exit_code == 0
    assert executor.read_log(task.handle, 0, 100) == b"done\n"
    assert (work / "inside").read_text() == "in\n"
    assert not (tmp_path / escape).exists() and not Path(f"/tmp/{escape}").exists()


async def test_a_shell_opens_inside_the_container(executor: LocalExecutor) -> None:
    p = placement(entrypoint="echo ready; sleep 300", env={"MINE": "yes"})
    (task,) = await executor.start(p)
    await wait_log(executor, task, "ready\n")
    line = '[ -e /run/.containerenv ] && echo "inside mine=$MINE"'
    shell = executor.shell_command(p, 0, task.handle, line)
    done = subprocess.run(
        shell.argv, env=shell.env, cwd=shell.cwd, capture_output=True, text=True, timeout=30
    )
    assert (done.stdout, done.returncode) == ("inside mine=yes\n", 0)
    await executor.stop(task.handle, grace=1)
    await wait_report(executor, task.handle)
    with pytest.raises(ExecutorRefused, match="not running"):
        executor.shell_command(p, 0, task.handle)


async def test_gpus_without_cdi_specs_are_refused_at_start(images: Images, home: Path) -> None:
    """This machine has no NVIDIA CDI specs: podman cannot pass the GPUs, so the start fails
    saying how to make them (with them: `--device nvidia.com/gpu=<index>`, test_containers
    in tests/unit)."""
    if containers.cdi_specs_exist():
        pytest.skip("this machine has CDI specs: GPUs would be passed")
    gpus = [GpuSpec(index=i, model="test") for i in range(2)]
    ex = LocalExecutor.from_settings(
        container_settings(home, default_image=images.local, gpus=gpus)
    )
    try:
        with pytest.raises(StartFailed, match="nvidia-ctk cdi generate"):
            await ex.start(placement(entrypoint="true", resources={"gpus": 1}, gpus=[1]))
    finally:
        await ex.close()


def test_a_container_job_s_usage_is_its_container_s_processes(images: Images, home: Path) -> None:
    """The sampler measures the container's processes (under conmon, outside the supervisor's
    session), and only them: a job holding 64 MiB on a busy core shows both; one that only
    sleeps shows little memory, not the `podman run` client's (tens of MiB) beside it."""
    settings = container_settings(home, usage_interval_seconds=0.1)
    hold = "x=$(head -c 67108864 /dev/zero | tr '\\0' a); while :; do :; done"
    with running_server(settings) as live, live.client() as http:
        busy = http.post("/api/v1/jobs", json={"entrypoint": hold, "image": images.local}).json()
        idle = http.post(
            "/api/v1/jobs", json={"entrypoint": "sleep 60", "image": images.local}
        ).json()

        def samples(job: dict[str, Any]) -> list[dict[str, Any]]:
            found = http.get(f"/api/v1/jobs/{job['id']}/metrics").json()["tasks"][0]
            return list(found["samples"])

        def holding() -> list[dict[str, Any]]:
            return [
                s
                for s in samples(busy)
                if s["memory_rss_bytes"] >= 64 * 2**20 and (s["cpu_cores"] or 0) > 0.2
            ]

        assert wait_for(holding, timeout=30)
        quiet = wait_for(lambda: samples(idle)[-3:] if len(samples(idle)) >= 3 else None)
        client = _podman_client_rss(home)
        assert client > 8 * 2**20  # what counting the supervisor's tree would have added
        assert all(0 < s["memory_rss_bytes"] < client for s in quiet), (quiet, client)
        for job in (busy, idle):
            assert http.post(f"/api/v1/jobs/{job['id']}/stop").status_code == 202
            live.wait_state(job["id"], "STOPPED", timeout=30)
    assert gone_in_time(home) == []


def _podman_client_rss(home: Path) -> int:
    """The RSS of the `podman run` clients of this server's tasks (the smallest of them)."""
    sizes = [
        p.info["memory_info"].rss
        for p in psutil.process_iter(["cmdline", "memory_info"])
        if (p.info["cmdline"] or [])[:1]
        and "podman" in p.info["cmdline"][0]
        and "run" in p.info["cmdline"]
        and f"{containers.LABEL_HOME}={home.resolve()}" in " ".join(p.info["cmdline"])
    ]
    assert sizes, "no podman run client found"
    return int(min(sizes))


# ---- on Slurm: the batch script pulls and runs the container on the node ------------------------


@pytest.mark.slurm
@pytest.mark.skipif(NO_SLURM is not None, reason=str(NO_SLURM))
async def test_on_slurm_the_node_pulls_the_image_or_says_why_not(
    images: Images, home: Path, tmp_path: Path
) -> None:
    """What the contract's slurm-container kind does not: a pull on the node (PULLING while
    it lasts, through a slow proxy), and a tag the registry lacks (IMAGE_PULL_FAILED)."""
    settings = container_settings(home, executor="slurm", slurm=slurm_settings())
    with holding_the_cluster(tmp_path), slow_proxy(images.registry, 0.3) as registry:
        ex = SlurmExecutor.from_settings(settings)
        try:
            image = images.remote.replace(images.registry, registry)
            (pulled,) = await ex.start(placement(entrypoint="echo pulled", image=image))
            (missing,) = await ex.start(placement(entrypoint="true", image=images.missing()))
            deadline = time.monotonic() + 30
            while (await ex.poll([pulled.handle]))[0].pending_reason is not PendingReason.PULLING:
                assert time.monotonic() < deadline, "never seen pulling"
                await asyncio.sleep(0.05)
            report = await wait_report(ex, pulled.handle)
            assert (report.exit_code, ex.read_log(pulled.handle, 0, 100)) == (0, b"pulled\n")
            report = await wait_report(ex, missing.handle)
            assert (report.exit_code, report.reason) == (125, TerminationReason.IMAGE_PULL_FAILED)
            assert "manifest unknown" in report.message
        finally:
            await ex.close()
            images.forget(image)
    assert gone_in_time(home) == []
