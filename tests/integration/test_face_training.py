"""The training-job API on the main port: every route against a real server."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

import httpx

from jobyard.api.training.mapping import CORE_STATES, STATUS, Status
from jobyard.model import JobState
from tests.helpers import LiveServer, wait_for

SLEEPER = ["sleep", "60"]


def _create(http: httpx.Client, **body: Any) -> dict[str, Any]:
    answer = http.post("/api/jobs/create", json={"jobName": "train", "command": SLEEPER, **body})
    assert answer.status_code == 200, answer.text
    out: dict[str, Any] = answer.json()
    assert out["success"] is True
    return out


def _detail(http: httpx.Client, ref: str | int) -> dict[str, Any]:
    answer = http.get(f"/api/jobs/{ref}")
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()["data"]
    return data


def _wait_status(http: httpx.Client, ref: str, *statuses: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        job = _detail(http, ref)
        return job if job["status"] in statuses else None

    found = wait_for(reached, 20)
    assert found is not None
    return found


def _error(answer: httpx.Response, status: int) -> str:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["success"] is False
    assert "data" not in body
    message: str = body["message"]
    return message


def test_create_detail_events_stop_delete(api: httpx.Client) -> None:
    created = _create(
        api,
        jobName="resnet",
        envs=[{"name": "FLAVOUR", "value": "mint"}],
        replicas=2,
        resources={"cpus": 0.5, "memory": 1, "gpus": 0},
        priority="high",
        maxRetries=2,
        timeout=600,
        resourcePoolId="local",
        queue="batch",
    )
    assert created["message"] == "训练任务创建成功"
    job_id = created["data"]["jobId"]
    assert created["data"]["jobName"] == "resnet"
    job = _wait_status(api, job_id, "Running")
    assert (job["jobId"], job["jobName"], job["queue"], job["resourcePoolId"]) == (
        job_id,
        "resnet",
        "batch",
        "local",
    )
    assert job["createdAt"].endswith("Z")
    assert job["config"] == {
        "jobName": "resnet",
        "image": None,
        "command": SLEEPER,
        "envs": [{"name": "FLAVOUR", "value": "mint"}],
        "workingDir": None,
        "replicas": 2,
        "resources": {"cpus": 0.5, "memory": 1.0, "gpus": 0, "gpuType": None},
        "priority": 100,
        "maxRetries": 2,
        "timeout": 600.0,
        "queue": "batch",
        "resourcePoolId": "local",
    }
    pods = job["pods"]
    assert [p["podName"] for p in pods] == [f"{job_id}-worker-0", f"{job_id}-worker-1"]
    assert all(p["status"] == "Running" and p["node"] and p["startedAt"] for p in pods)
    # The numeric id and the submission id name the same job.
    assert _detail(api, job["id"])["jobId"] == job_id
    assert _detail(api, job["submissionId"])["jobId"] == job_id

    stopped = api.post(f"/api/jobs/{job_id}/stop")
    assert stopped.status_code == 200
    assert stopped.json()["success"] is True
    assert stopped.json()["message"] == "任务已停止"
    assert stopped.json()["data"]["status"] in ("Stopping", "Stopped")
    job = _wait_status(api, job_id, "Stopped")
    assert {p["status"] for p in job["pods"]} == {"Failed"}
    assert all(p["exitCode"] is not None and p["finishedAt"] for p in job["pods"])
    assert "already finished" in _error(api.post(f"/api/jobs/{job_id}/stop"), 409)

    events = api.get(f"/api/jobs/{job_id}/events").json()
    assert events["success"] is True
    items = events["data"]["events"]
    reasons = [e["reason"] for e in items]
    for reason in ("Queued", "Scheduled", "Started", "Killing", "Stopped"):
        assert reason in reasons, reasons
    assert reasons.index("Queued") < reasons.index("Started") < reasons.index("Stopped")
    assert all(set(e) == {"type", "reason", "message", "timestamp"} for e in items)
    assert {e["type"] for e in items} <= {"Normal", "Warning"}

    deleted = api.delete(f"/api/jobs/{job_id}")
    assert deleted.json() == {"success": True, "message": "任务已删除"}
    assert job_id in _error(api.get(f"/api/jobs/{job_id}"), 404)
    _error(api.delete(f"/api/jobs/{job_id}"), 404)


def test_deleting_a_running_job_kills_it(api: httpx.Client) -> None:
    job_id = _create(api)["data"]["jobId"]
    _wait_status(api, job_id, "Running")
    assert api.delete(f"/api/jobs/{job_id}").json()["success"] is True
    _error(api.get(f"/api/jobs/{job_id}"), 404)


def test_list_pages_and_filters(api: httpx.Client) -> None:
    ids = [_create(api, jobName=f"alpha-{i}", command=["true"])["data"]["jobId"] for i in range(5)]
    beta = _create(api, jobName="beta")["data"]["jobId"]
    for job_id in ids:
        _wait_status(api, job_id, "Succeeded")
    _wait_status(api, beta, "Running")

    def page(**body: Any) -> dict[str, Any]:
        answer = api.post("/api/jobs", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["success"] is True
        data: dict[str, Any] = answer.json()["data"]
        return data

    everything = page()
    assert everything["totalCount"] == 6
    assert [j["jobId"] for j in everything["jobs"]] == [beta, *reversed(ids)]  # newest first
    first = everything["jobs"][0]
    assert {"jobId", "jobName", "status", "createdAt"} <= set(first)
    seen = []
    for number in (1, 2, 3):
        data = page(pageNumber=number, pageSize=2)
        assert data["totalCount"] == 6
        assert len(data["jobs"]) == 2
        seen += [j["jobId"] for j in data["jobs"]]
    assert seen == [j["jobId"] for j in everything["jobs"]]
    assert page(pageNumber=4, pageSize=2)["jobs"] == []

    alphas = page(keyword="ALPHA")
    assert alphas["totalCount"] == 5
    assert {j["jobName"] for j in alphas["jobs"]} == {f"alpha-{i}" for i in range(5)}
    assert [j["jobId"] for j in page(keyword=ids[2])["jobs"]] == [ids[2]]
    numeric = _detail(api, ids[3])["id"]
    assert ids[3] in [j["jobId"] for j in page(keyword=str(numeric))["jobs"]]
    assert page(keyword="no-such-thing")["totalCount"] == 0

    assert [j["jobId"] for j in page(status="running")["jobs"]] == [beta]
    assert page(status="Succeeded")["totalCount"] == 5
    assert page(status="Succeeded,RUNNING")["totalCount"] == 6
    assert page(status="Pending")["totalCount"] == 0
    assert page(keyword="alpha", status="Running")["totalCount"] == 0

    # The same filters as query parameters (the body wins where both are given).
    by_query = api.post("/api/jobs", params={"status": "Running", "pageSize": "1"}).json()["data"]
    assert [j["jobId"] for j in by_query["jobs"]] == [beta]
    mixed = api.post("/api/jobs", params={"status": "Running"}, json={"status": "Succeeded"})
    assert mixed.json()["data"]["totalCount"] == 5

    message = _error(api.post("/api/jobs", json={"status": "Exploded"}), 400)
    assert "status" in message and "Pending" in message and "Stopped" in message
    assert "pageSize" in _error(api.post("/api/jobs", json={"pageSize": 0}), 400)
    assert "pageNumber" in _error(api.post("/api/jobs", params={"pageNumber": "x"}), 400)
    assert "owner_id" in _error(api.post("/api/jobs", json={"owner_id": 1}), 400)
    assert "JSON" in _error(api.post("/api/jobs", content=b"{nope"), 400)
    api.post(f"/api/jobs/{beta}/stop")


def test_bad_creates_are_400_naming_the_field_and_store_nothing(api: httpx.Client) -> None:
    def refused(**body: Any) -> str:
        return _error(api.post("/api/jobs/create", json=body), 400)

    assert "jobName" in refused(command=["true"])
    assert "command" in refused(jobName="x")
    assert "command" in refused(jobName="x", command=[""])
    message = refused(jobName="x", command=["true"], resourcePoolId="mars")
    assert "resourcePoolId" in message and "mars" in message and "local" in message
    message = refused(jobName="x", command=["true"], queue="nope")
    assert all(name in message for name in ("queue", "default", "gpu", "batch"))
    message = refused(jobName="x", command=["true"], image="registry/image:tag")
    assert "image" in message and "container image" in message
    assert "resources.gpus" in refused(jobName="x", command=["true"], resources={"gpus": 64})
    assert "resources.memory" in refused(jobName="x", command=["true"], resources={"memory": -1})
    assert "priority" in refused(jobName="x", command=["true"], priority="urgent")
    assert "colour" in refused(jobName="x", command=["true"], colour="red")
    assert "timeout" in refused(jobName="x", command=["true"], timeout=0)
    bad_json = api.post(
        "/api/jobs/create", content=b"{", headers={"Content-Type": "application/json"}
    )
    _error(bad_json, 400)
    assert api.post("/api/jobs", json={}).json()["data"]["totalCount"] == 0


def test_the_host_environment_and_defaults(api: httpx.Client) -> None:
    created = _create(
        api,
        command="echo $FLAVOUR",
        args=["it's"],
        image="host",
        envs={"FLAVOUR": "mint"},
        resources={"memory": "512Mi"},
    )
    job = _wait_status(api, created["data"]["jobId"], "Succeeded")
    assert (job["queue"], job["resourcePoolId"], job["image"]) == ("default", "local", "host")
    assert job["config"]["resources"]["memory"] == 0.5
    pod = job["pods"][0]["podName"]
    logs = api.get(f"/api/jobs/{job['jobId']}/pods/{pod}/logs").json()
    assert logs == {"success": True, "message": "ok", "data": {"logs": "mint it's\n"}}


def test_log_tail_lines(api: httpx.Client) -> None:
    job_id = _create(api, command=["printf", "l1\\nl2\\nl3\\n"])["data"]["jobId"]
    job = _wait_status(api, job_id, "Succeeded")
    pod = job["pods"][0]["podName"]

    def logs(**params: Any) -> str:
        answer = api.get(f"/api/jobs/{job_id}/pods/{pod}/logs", params=params)
        assert answer.status_code == 200, answer.text
        text: str = answer.json()["data"]["logs"]
        return text

    assert logs() == "l1\nl2\nl3\n"
    assert logs(tailLines=0) == ""
    assert logs(tailLines=1) == "l3\n"
    assert logs(tailLines=2) == "l2\nl3\n"
    assert logs(tailLines=1000) == "l1\nl2\nl3\n"
    assert logs(tailLines=1, follow="false") == "l3\n"
    # follow on a finished pod: what is there, then the stream ends.
    assert api.get(f"/api/jobs/{job_id}/pods/{pod}/logs?tailLines=2&follow=true").text == "l2\nl3\n"
    assert "tailLines" in _error(api.get(f"/api/jobs/{job_id}/pods/{pod}/logs?tailLines=-1"), 400)
    message = _error(api.get(f"/api/jobs/{job_id}/pods/{job_id}-worker-9/logs"), 404)
    assert f"{job_id}-worker-0" in message  # the pods it has


_TICKER = (
    "import sys, time\n"
    "for i in range(15):\n"
    "    print(f'{i} {time.time():.6f}', flush=True)\n"
    "    time.sleep(0.1)\n"
)


def test_follow_streams_lines_as_they_are_written(api: httpx.Client) -> None:
    job_id = _create(api, command=[sys.executable, "-c", _TICKER])["data"]["jobId"]
    pod = f"{job_id}-worker-0"
    delays, numbers = [], []
    with api.stream("GET", f"/api/jobs/{job_id}/pods/{pod}/logs?follow=true") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/plain")
        for line in stream.iter_lines():
            arrived = time.time()
            number, written = line.split()
            numbers.append(int(number))
            delays.append(arrived - float(written))
    # The stream ended by itself when the pod ended, with every line once and in order.
    assert numbers == list(range(15))
    # Lines written before the client connected are not a measure of streaming.
    live = delays[3:]
    print(f"follow delays (s): median {statistics.median(live):.3f}, max {max(live):.3f}")
    assert statistics.median(live) < 0.2
    assert sorted(live)[int(len(live) * 0.8)] < 0.2, live  # on a loaded 2-core machine
    assert _detail(api, job_id)["status"] == "Succeeded"


def test_a_followed_log_ends_when_its_job_is_deleted(api: httpx.Client) -> None:
    job_id = _create(api, command="echo first; sleep 60")["data"]["jobId"]
    with api.stream("GET", f"/api/jobs/{job_id}/pods/{job_id}-worker-0/logs?follow=true") as s:
        lines = s.iter_lines()
        assert next(lines) == "first"
        assert api.delete(f"/api/jobs/{job_id}").json()["success"] is True
        assert list(lines) == []  # the stream ends cleanly (a broken one would raise)


def test_tokens_and_other_users(live_server: LiveServer, api: httpx.Client) -> None:
    job_id = _create(api)["data"]["jobId"]
    _wait_status(api, job_id, "Running")
    pod = f"{job_id}-worker-0"
    with httpx.Client(base_url=live_server.url) as anonymous:
        message = _error(anonymous.post("/api/jobs", json={}), 401)
        assert message
        _error(anonymous.get(f"/api/jobs/{job_id}"), 401)
    with live_server.client("jy_not-a-token") as forged:
        _error(forged.post("/api/jobs/create", json={"jobName": "x", "command": ["true"]}), 401)

    bob_token = asyncio.run(live_server.runtime.auth.create_user_token("bob"))
    with live_server.client(bob_token) as bob:
        assert bob.post("/api/jobs", json={}).json()["data"] == {
            "jobs": [],
            "totalCount": 0,
            "pageNumber": 1,
            "pageSize": 10,
        }
        assert bob.post("/api/jobs", json={"keyword": job_id}).json()["data"]["totalCount"] == 0
        for method, path in [
            ("GET", f"/api/jobs/{job_id}"),
            ("POST", f"/api/jobs/{job_id}/stop"),
            ("DELETE", f"/api/jobs/{job_id}"),
            ("GET", f"/api/jobs/{job_id}/events"),
            ("GET", f"/api/jobs/{job_id}/pods/{pod}/logs"),
            ("GET", f"/api/jobs/{job_id}/pods/{pod}/logs?follow=true"),
            ("GET", f"/api/jobs/{job_id}/pods/{pod}/webterminal"),
        ]:
            assert job_id in _error(bob.request(method, path), 404), path
        # bob's own job is his to see; the admin sees every job.
        mine = bob.post("/api/jobs/create", json={"jobName": "bobs", "command": ["true"]})
        bobs_id = mine.json()["data"]["jobId"]
        assert [j["jobId"] for j in bob.post("/api/jobs").json()["data"]["jobs"]] == [bobs_id]
    assert _detail(api, job_id)["status"] == "Running"  # untouched by bob
    assert _detail(api, bobs_id)["owner"] == "bob"
    api.post(f"/api/jobs/{job_id}/stop")


def test_unknown_routes_and_methods_keep_the_envelope(api: httpx.Client) -> None:
    _error(api.get("/api/jobs/x/nothing-here"), 404)
    _error(api.put("/api/jobs/create"), 405)
    for status in ("pending", "SCHEDULED", "Stopping", "failed", "stopped"):
        assert api.post("/api/jobs", json={"status": status}).json()["success"] is True


def test_every_core_state_has_one_status_name() -> None:
    assert set(STATUS) == set(JobState)
    assert [s.value for s in Status] == [
        "Pending",
        "Scheduled",
        "Running",
        "Stopping",
        "Succeeded",
        "Failed",
        "Stopped",
    ]
    assert CORE_STATES[Status.SCHEDULED] == [JobState.SCHEDULED, JobState.STARTING]
    assert sorted(s for states in CORE_STATES.values() for s in states) == sorted(JobState)
