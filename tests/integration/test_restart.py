"""A running task outlives a server restart, and its exit code is still recorded."""

from __future__ import annotations

from pathlib import Path

import psutil

from tests.helpers import make_settings, running_server


def test_a_job_keeps_running_across_a_restart_and_its_exit_code_is_kept(home: Path) -> None:
    settings = make_settings(home)
    with running_server(settings) as first, first.client() as http:
        job = http.post("/api/v1/jobs", json={"entrypoint": "sleep 1.5; echo done; exit 5"}).json()
        running = first.wait_state(job["id"], "RUNNING")
    pid = running["tasks"][0]["pid"]
    assert psutil.pid_exists(pid), "stopping the server must not stop its jobs"
    with running_server(settings) as second, second.client() as http:
        assert http.get(f"/api/v1/jobs/{job['id']}").json()["state"] == "RUNNING"
        done = second.wait_state(job["id"], "FAILED", "SUCCEEDED")
        assert (done["state"], done["exit_code"], done["reason"]) == ("FAILED", 5, "EXIT_NONZERO")
        assert http.get(f"/api/v1/jobs/{job['id']}/logs").text == "done\n"


def test_a_job_stopped_after_a_restart_leaves_no_process(home: Path) -> None:
    settings = make_settings(home)
    with running_server(settings) as first, first.client() as http:
        job = http.post("/api/v1/jobs", json={"entrypoint": "sleep 60"}).json()
        pid = first.wait_state(job["id"], "RUNNING")["tasks"][0]["pid"]
    with running_server(settings) as second, second.client() as http:
        assert http.post(f"/api/v1/jobs/{job['id']}/stop").status_code == 202
        done = second.wait_state(job["id"], "STOPPED")
        assert done["reason"] == "STOPPED_BY_USER"
    proc = psutil.Process(pid) if psutil.pid_exists(pid) else None
    assert proc is None or proc.status() == psutil.STATUS_ZOMBIE


def test_the_admin_token_survives_a_restart(home: Path) -> None:
    settings = make_settings(home)
    with running_server(settings) as first:
        token = first.token
    with running_server(settings) as second:
        assert second.token == token
        with second.client() as http:
            assert http.get("/api/v1/whoami").json() == {"name": "admin", "admin": True}
