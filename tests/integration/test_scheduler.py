"""The scheduler against a real server and real processes, on a declared inventory."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobyard.config import GpuSpec, QueueSpec
from tests.helpers import LiveServer, make_settings, running_server, wait_for

INVENTORY = [
    *(GpuSpec(index=i, model="NVIDIA A16") for i in range(4)),
    *(GpuSpec(index=4 + i, model="NVIDIA H100 80GB HBM3") for i in range(2)),
]


@pytest.fixture
def server(home: Path) -> Iterator[LiveServer]:
    settings = make_settings(
        home,
        cpus=8,
        gpus=INVENTORY,
        retry_backoff_seconds=0.05,
        queues=[
            QueueSpec(name="default"),
            QueueSpec(name="capped", max_running_jobs_per_user=1),
        ],
    )
    with running_server(settings) as live:
        yield live


def submit(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/api/v1/jobs", json={"entrypoint": "true", **body})
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def get(http: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = http.get(f"/api/v1/jobs/{job['id']}").json()
    return found


def test_gpus_are_never_shared_and_each_task_sees_its_own(server: LiveServer) -> None:
    with server.client() as http:
        jobs = [
            submit(http, entrypoint="echo $CUDA_VISIBLE_DEVICES", resources={"gpus": 1})
            for _ in range(3)
        ]
        jobs.append(
            submit(
                http,
                entrypoint="echo $CUDA_VISIBLE_DEVICES; sleep 0.5",
                replicas=2,
                resources={"gpus": 1, "gpu_model": "H100"},
            )
        )
        seen: list[str] = []
        for job in jobs:
            server.wait_state(job["id"], "SUCCEEDED")
            for task in get(http, job)["tasks"]:
                log = http.get(f"/api/v1/jobs/{job['id']}/logs", params={"task": task["name"]})
                seen.append(log.text.strip())
                assert log.text.strip() == ",".join(str(g) for g in task["gpus"])
        h100 = seen[-2:]
        assert sorted(h100) == ["4", "5"]


def test_a_waiting_job_says_why_and_where_it_stands(server: LiveServer) -> None:
    with server.client() as http:
        hog = submit(http, entrypoint="sleep 30", resources={"cpus": 8})
        server.wait_state(hog["id"], "RUNNING")
        first = submit(http, resources={"cpus": 2})
        second = submit(http, resources={"cpus": 2})

        def waiting(job: dict[str, Any]) -> dict[str, Any] | None:
            found = get(http, job)
            return found if found["pending_reason"] and found["queue_position"] else None

        a, b = wait_for(lambda: waiting(first)), wait_for(lambda: waiting(second))
        assert a["pending_reason"] == "WAITING_FOR_CAPACITY"
        assert "2 CPUs (0 free)" in a["pending_message"]
        assert (a["queue_position"], b["queue_position"]) == (1, 2)
        listed = {j["id"]: j for j in http.get("/api/v1/jobs?state=QUEUED").json()["items"]}
        assert listed[first["id"]]["queue_position"] == 1
        events = http.get(f"/api/v1/jobs/{first['id']}/events").json()["items"]
        assert any(
            e["reason"] == "Pending" and "WAITING_FOR_CAPACITY" in e["message"] for e in events
        )

        http.post(f"/api/v1/jobs/{hog['id']}/stop")
        server.wait_state(first["id"], "SUCCEEDED")
        done = get(http, first)
        assert done["queue_position"] is None


def test_a_per_user_quota_holds_jobs_back(server: LiveServer) -> None:
    with server.client() as http:
        running = submit(http, entrypoint="sleep 30", queue="capped")
        server.wait_state(running["id"], "RUNNING")
        held = submit(http, queue="capped")
        other = submit(http, queue="default")
        server.wait_state(other["id"], "SUCCEEDED")
        found = wait_for(lambda: get(http, held)["pending_reason"] and get(http, held))
        assert found["pending_reason"] == "QUOTA_EXCEEDED"
        assert found["state"] == "QUEUED"
        http.post(f"/api/v1/jobs/{running['id']}/stop")
        server.wait_state(held["id"], "SUCCEEDED")


def test_impossible_jobs_are_refused_at_submit(server: LiveServer) -> None:
    with server.client() as http:
        for resources, field in (
            ({"gpus": 7}, "resources.gpus"),
            ({"gpus": 3, "gpu_model": "H100"}, "resources.gpus"),
            ({"gpus": 1, "gpu_model": "MI300X"}, "resources.gpus"),
            ({"cpus": 9}, "resources.cpus"),
        ):
            response = http.post(
                "/api/v1/jobs", json={"entrypoint": "true", "resources": resources}
            )
            assert response.status_code == 422, response.text
            assert response.json()["error"]["field"] == field
        assert http.get("/api/v1/jobs").json()["total"] == 0


def test_a_failed_job_is_retried_with_each_attempt_kept(server: LiveServer) -> None:
    with server.client() as http:
        flaky = submit(
            http,
            # Fails on its first two attempts, succeeds on the third.
            entrypoint="n=$(cat count 2>/dev/null || echo 0); echo $((n+1)) > count; "
            "echo attempt $n; [ $n -ge 2 ]",
            max_retries=3,
        )
        hopeless = submit(http, entrypoint="exit 3", max_retries=1)
        server.wait_state(flaky["id"], "SUCCEEDED")
        server.wait_state(hopeless["id"], "FAILED")
        ok, bad = get(http, flaky), get(http, hopeless)
        assert ok["attempt"] == 2
        assert [(a["attempt"], a["exit_code"], a["reason"]) for a in ok["attempts"]] == [
            (0, 1, "EXIT_NONZERO"),
            (1, 1, "EXIT_NONZERO"),
        ]
        assert http.get(f"/api/v1/jobs/{flaky['id']}/logs").text.split("\n")[:3] == [
            "attempt 0",
            "attempt 1",
            "attempt 2",
        ]
        assert (bad["attempt"], bad["exit_code"], bad["reason"]) == (1, 3, "EXIT_NONZERO")
        assert [a["exit_code"] for a in bad["attempts"]] == [3]
        states = [e["state"] for e in bad["state_log"]]
        assert states.count("QUEUED") == 2 and states[-1] == "FAILED"
        reasons = [
            e["reason"] for e in http.get(f"/api/v1/jobs/{hopeless['id']}/events").json()["items"]
        ]
        assert "Retrying" in reasons


def test_a_stopped_job_is_not_retried(server: LiveServer) -> None:
    with server.client() as http:
        job = submit(http, entrypoint="sleep 30", max_retries=3)
        server.wait_state(job["id"], "RUNNING")
        http.post(f"/api/v1/jobs/{job['id']}/stop")
        server.wait_state(job["id"], "STOPPED")
        assert get(http, job)["attempts"] == []


def test_workers_of_a_gang_get_the_distributed_environment(server: LiveServer) -> None:
    with server.client() as http:
        job = submit(
            http,
            entrypoint="echo $RANK/$WORLD_SIZE/$NNODES/$NPROC_PER_NODE/$JOBYARD_RANK "
            "$MASTER_ADDR:$MASTER_PORT",
            replicas=3,
        )
        server.wait_state(job["id"], "SUCCEEDED")
        lines = [
            http.get(f"/api/v1/jobs/{job['id']}/logs", params={"task": t["name"]}).text.strip()
            for t in get(http, job)["tasks"]
        ]
        ranks = [line.split()[0] for line in lines]
        assert ranks == ["0/3/3/1/0", "1/3/3/1/1", "2/3/3/1/2"]
        masters = {line.split()[1] for line in lines}
        assert len(masters) == 1 and masters.pop().startswith("127.0.0.1:")


def test_pools_and_queues_views(server: LiveServer) -> None:
    with server.client() as http:
        hog = submit(http, entrypoint="sleep 30", resources={"cpus": 6, "gpus": 2})
        server.wait_state(hog["id"], "RUNNING")
        submit(http, resources={"cpus": 4})
        wait_for(lambda: get(http, {"id": hog["id"] + 1})["pending_reason"])
        (pool,) = http.get("/api/v1/pools").json()
        assert pool["capacity"] == {"cpus": 8, "memory_mib": 16384, "gpus": 6, "tasks": 512}
        assert pool["in_use"]["cpus"] == 6 and pool["in_use"]["gpus"] == 2
        assert [g["in_use"] for g in pool["gpus"]].count(True) == 2
        assert (pool["running_jobs"], pool["queued_jobs"]) == (1, 1)
        queues = {q["name"]: q for q in http.get("/api/v1/queues").json()}
        assert (queues["default"]["running_jobs"], queues["default"]["queued_jobs"]) == (1, 1)
        assert queues["capped"]["limits"]["max_running_jobs_per_user"] == 1
        assert (
            http.get("/api/v1/queues", headers={"Authorization": "Bearer nope"}).status_code == 401
        )


TORCH = importlib.util.find_spec("torch") is not None
ALLREDUCE = """
import os, torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print("sum", int(t.item()), "rank", dist.get_rank(), "of", dist.get_world_size())
dist.destroy_process_group()
"""


@pytest.mark.skipif(not TORCH, reason="torch is not installed (it is in the test extra)")
def test_two_workers_all_reduce_with_torch_distributed(server: LiveServer, tmp_path: Path) -> None:
    import sys

    script = tmp_path / "allreduce.py"
    script.write_text(ALLREDUCE)
    with server.client() as http:
        job = submit(http, entrypoint=[sys.executable, str(script)], replicas=2)
        server.wait_state(job["id"], "SUCCEEDED", timeout=120)
        outputs = sorted(  # the last line: torch may warn first (e.g. about numpy)
            http.get(f"/api/v1/jobs/{job['id']}/logs", params={"task": t["name"]})
            .text.strip()
            .splitlines()[-1]
            for t in get(http, job)["tasks"]
        )
        assert outputs == ["sum 3 rank 0 of 2", "sum 3 rank 1 of 2"]
