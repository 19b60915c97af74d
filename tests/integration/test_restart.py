"""A running task outlives a server restart, and its exit code is still recorded."""

from __future__ import annotations

from pathlib import Path

import psutil

from tests.factories import new_job
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
        events = http.get(f"/api/v1/jobs/{job['id']}/events").json()["items"]
    reasons = [e["reason"] for e in events]
    assert reasons.count("Reattached") == 1, reasons  # one restart, one event
    assert reasons.index("Started") < reasons.index("Reattached") < reasons.index("Failed")
    assert running["tasks"][0]["name"] in events[reasons.index("Reattached")]["message"]


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


def test_jobs_a_crash_caught_queued_run_and_claimed_ones_it_left_nothing_of_fail(
    home: Path,
) -> None:
    """A queued job is simply still queued. A claimed one (STARTING: no job is ever stored
    SCHEDULED) whose start left nothing behind is LOST."""
    import time

    from jobyard.model import JobSpec, JobState
    from jobyard.server import prepare_home
    from jobyard.store import jobs as q
    from jobyard.store.db import Database, migrate

    settings = make_settings(home)
    prepare_home(settings)
    migrate(settings.effective_database_url)
    db = Database(settings.effective_database_url)

    def crashed_mid_start(conn):  # type: ignore[no-untyped-def]
        ids = []
        for target in (JobState.QUEUED, JobState.STARTING):
            new = new_job(
                owner="admin",
                submission_id=f"crash-{target}",
                name="crash",
                pool="local",
                spec=JobSpec(entrypoint="true"),
            )
            job_id = q.insert_job(conn, new, time.time())
            if target is JobState.STARTING:
                q.transition(conn, job_id, q.Transition(JobState.STARTING), time.time())
            ids.append(job_id)
        return ids

    queued, starting = db.write_sync(crashed_mid_start)
    db.close()
    with running_server(settings) as server:
        assert server.wait_state(queued, "SUCCEEDED")["exit_code"] == 0
        lost = server.wait_state(starting, "FAILED")
        assert lost["reason"] == "LOST" and "the process was not found" in lost["message"]
        with server.client() as http:
            ran = http.get(f"/api/v1/jobs/{queued}").json()
        assert [e["state"] for e in ran["state_log"]] == [
            "QUEUED",
            "STARTING",
            "RUNNING",
            "SUCCEEDED",
        ]


def test_a_task_that_cannot_get_a_log_fails_to_start_instead_of_sticking(home: Path) -> None:
    with running_server(make_settings(home)) as server, server.client() as http:
        (server.settings.logs_dir / "1").write_text("a file where the job's log directory goes")
        job = http.post("/api/v1/jobs", json={"entrypoint": "true"}).json()
        done = server.wait_state(job["id"], "FAILED")
        assert done["reason"] == "START_FAILED" and "cannot prepare" in done["message"]
