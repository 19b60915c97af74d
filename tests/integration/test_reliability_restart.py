"""Restart survival with a real server process: SIGTERM and kill -9 never kill running tasks;
on start the server reattaches what still runs, records the real exit code of what ended while
it was down, fails what it cannot account for as LOST, all within 30 s; SIGTERM ends the
server within 10 s, finishing the requests in flight."""

from __future__ import annotations

import concurrent.futures
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import wait_for
from tests.integration.server_process import ServerProcess, kill_group, pid_alive

pytestmark = pytest.mark.slow
RECONCILE_WITHIN = 30.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "home", tmp_path / "server.log")
    proc.start()
    yield proc
    proc.stop()
    for pid in proc.task_pids:  # leave no task behind, whatever the test's outcome
        kill_group(pid)


def _submit(server: ServerProcess, entrypoint: str) -> int:
    with server.client() as http:
        response = http.post("/api/v1/jobs", json={"entrypoint": entrypoint})
        assert response.status_code == 201, response.text
        job_id: int = response.json()["id"]
        return job_id


def _running_pid(server: ServerProcess, job_id: int) -> int:
    pid: int = server.wait_state(job_id, "RUNNING")["tasks"][0]["pid"]
    server.task_pids.append(pid)
    return pid


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_tasks_survive_the_server_and_are_accounted_for_after_a_restart(
    server: ServerProcess, tmp_path: Path, how: signal.Signals
) -> None:
    gate = tmp_path / "gate"  # the long task ends only once the new server runs
    still = _submit(server, f"echo before; while [ ! -e {gate} ]; do sleep 0.05; done; exit 7")
    ended = _submit(server, f"while [ ! -e {gate}.early ]; do sleep 0.05; done; exit 3")
    clean = _submit(server, f"while [ ! -e {gate}.early ]; do sleep 0.05; done; exit 0")
    lost = _submit(server, "sleep 300")
    pids = {job: _running_pid(server, job) for job in (still, ended, clean, lost)}

    took = server.signal(how)
    if how is signal.SIGTERM:
        assert took < 10, f"SIGTERM took {took:.1f} s"
    assert all(pid_alive(pid) for pid in pids.values()), "the server's end killed a task"
    (tmp_path / "gate.early").touch()  # two tasks end while the server is down...
    wait_for(lambda: not pid_alive(pids[ended]) and not pid_alive(pids[clean]), timeout=10)
    kill_group(pids[lost])  # ...and one vanishes without a trace
    wait_for(lambda: not pid_alive(pids[lost]), timeout=10)

    began = time.monotonic()
    server.start()
    assert server.wait_state(ended, "FAILED", timeout=RECONCILE_WITHIN)["exit_code"] == 3
    assert server.wait_state(clean, "SUCCEEDED", timeout=RECONCILE_WITHIN)["exit_code"] == 0
    gone = server.wait_state(lost, "FAILED", timeout=RECONCILE_WITHIN)
    assert gone["reason"] == "LOST" and gone["message"], gone
    reattached = server.job(still)
    assert reattached["state"] == "RUNNING" and reattached["tasks"][0]["pid"] == pids[still]
    assert time.monotonic() - began < RECONCILE_WITHIN

    gate.touch()
    done = server.wait_state(still, "FAILED")
    assert (done["exit_code"], done["reason"]) == (7, "EXIT_NONZERO")
    with server.client() as http:
        assert http.get(f"/api/v1/jobs/{still}/logs").text == "before\n"
        for job_id in (still, ended, clean):  # started exactly once: one Started event each
            reasons = [
                e["reason"] for e in http.get(f"/api/v1/jobs/{job_id}/events").json()["items"]
            ]
            assert reasons.count("Started") == 1, (job_id, reasons)


def test_sigterm_finishes_requests_in_flight_and_exits_within_10_s(
    server: ServerProcess, tmp_path: Path
) -> None:
    follower = _submit(server, "echo tick; sleep 300")
    pid = _running_pid(server, follower)
    token = server.token
    stream = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"})
    # a log stream that would never end by itself must not hold the shutdown
    response = stream.send(
        stream.build_request("GET", f"/api/v1/jobs/{follower}/logs", params={"follow": "true"}),
        stream=True,
    )
    assert response.status_code == 200

    def submit(i: int) -> tuple[int, int | None]:
        try:
            with server.client(token) as http:
                answer = http.post(
                    "/api/v1/jobs", json={"entrypoint": "true", "submission_id": f"s{i}"}
                )
                return i, answer.status_code if answer.status_code else None
        except httpx.TransportError:
            return i, None  # refused: never accepted, so never answered half

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(submit, i) for i in range(200)]
        wait_for(lambda: sum(f.done() for f in futures) >= 20, timeout=30)
        took = server.signal(signal.SIGTERM)
        answers = dict(f.result() for f in futures)
    response.close()
    stream.close()
    assert took < 10, f"SIGTERM took {took:.1f} s"
    assert pid_alive(pid), "the shutdown killed a running task"
    assert set(answers.values()) <= {201, None}, answers
    acknowledged = {i for i, status in answers.items() if status == 201}
    assert acknowledged, "no request was answered before the shutdown"

    server.start()
    with server.client() as http:
        for i in acknowledged:  # every acknowledged submission is there
            assert http.get(f"/api/v1/jobs/s{i}").status_code == 200, i
        assert server.job(follower)["state"] == "RUNNING"
        http.post(f"/api/v1/jobs/{follower}/stop")
    server.wait_state(follower, "STOPPED")
