"""Crash-safe submission: 8 clients submit 1,000 jobs each, every one with its own
submission_id, while the server is killed with kill -9 at random moments and restarted.
Afterwards every job that got a 2xx exists exactly once, a retry with the same submission_id
gets the same job, every job that ran ends with its real outcome (SUCCEEDED: also those a kill
caught mid-start), and SQLite's integrity check passes.

The jobs are `true`: cheap to run, and a queue of 8,000 held jobs would cost the scheduler more
than running them."""

from __future__ import annotations

import collections
import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.helpers import wait_for
from tests.integration.server_process import ServerProcess

CLIENTS = 8
JOBS_PER_CLIENT = 1000
pytestmark = pytest.mark.slow
KILLS = 3
DEADLINE = 300.0  # seconds for the whole submission phase (about 90 s on an idle 2-core box)


@dataclass
class Submitter:
    index: int
    server: ServerProcess
    acknowledged: dict[str, int] = field(default_factory=dict)  # submission_id -> job id
    retried: set[str] = field(default_factory=set)  # ids whose first try got no answer
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)

    def run(self, token: str, stop_at: float) -> None:
        with httpx.Client(
            base_url=self.server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        ) as http:
            for i in range(JOBS_PER_CLIENT):
                self._submit(http, f"crash-{self.index}-{i}", stop_at)

    def _submit(self, http: httpx.Client, submission_id: str, stop_at: float) -> None:
        body = {"entrypoint": "true", "submission_id": submission_id}
        while time.monotonic() < stop_at:
            try:
                response = http.post("/api/v1/jobs", json=body)
            except httpx.TransportError:  # the server died mid-request: try again, same id
                self.retried.add(submission_id)
                time.sleep(0.05)
                continue
            self.statuses[response.status_code] += 1
            assert response.status_code in (200, 201), response.text
            self.acknowledged[submission_id] = response.json()["id"]
            return
        raise AssertionError(f"{submission_id}: no answer before the deadline")


def _all_jobs(server: ServerProcess) -> list[dict[str, object]]:
    jobs: list[dict[str, object]] = []
    cursor: str | None = None
    with server.client() as http:
        while True:
            params: dict[str, str | int] = {"limit": 500}
            if cursor:
                params["cursor"] = cursor
            page = http.get("/api/v1/jobs", params=params).json()
            jobs += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return jobs


def _all_ended(server: ServerProcess) -> list[dict[str, object]] | None:
    jobs = _all_jobs(server)
    return jobs if all(j["state"] in ("SUCCEEDED", "FAILED", "STOPPED") for j in jobs) else None


def _exit_file(home: Path, job: dict[str, object]) -> Path:
    return home / "logs" / str(job["id"]) / f"{job['display_id']}-worker-0.exit"


@pytest.mark.timeout(DEADLINE + 240)
def test_kill_9_during_8000_submissions_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "home", tmp_path / "server.log", JOBYARD_LOG_LEVEL="warning")
    server.start()
    token = server.token
    stop_at = time.monotonic() + DEADLINE
    clients = [Submitter(i, server) for i in range(CLIENTS)]
    threads = [threading.Thread(target=c.run, args=(token, stop_at)) for c in clients]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    kills, rng = 0, random.Random(8)
    try:
        while any(t.is_alive() for t in threads) and kills < KILLS:
            time.sleep(rng.uniform(0.5, 2.5))
            if not any(t.is_alive() for t in threads):
                break
            server.kill9()
            kills += 1
            server.start()
        for thread in threads:
            thread.join(timeout=DEADLINE)
        submitting = time.monotonic() - began
        acknowledged = {sid: job for c in clients for sid, job in c.acknowledged.items()}
        assert len(acknowledged) == CLIENTS * JOBS_PER_CLIENT, "a client gave up"
        assert kills == KILLS, f"only {kills} kills happened during {submitting:.0f} s"

        # every acknowledged job exists exactly once, under its own submission_id
        jobs = _all_jobs(server)
        by_submission = collections.Counter(str(job["submission_id"]) for job in jobs)
        assert [sid for sid, n in by_submission.items() if n > 1] == []
        assert {str(job["submission_id"]): job["id"] for job in jobs} == acknowledged

        # a retry (the ones that lost their answer, and a sample) gets the same job
        retried = {sid for c in clients for sid in c.retried}
        sample = set(rng.sample(sorted(acknowledged), 200)) | retried
        with server.client() as http:
            for sid in sorted(sample):
                body = {"entrypoint": "true", "submission_id": sid}
                again = http.post("/api/v1/jobs", json=body)
                assert (again.status_code, again.json()["id"]) == (200, acknowledged[sid]), sid
        assert len(_all_jobs(server)) == len(jobs)

        # every job that ran (its supervisor wrote its exit file) ends with its real outcome,
        # also those a kill caught mid-start; LOST is for jobs that never ran
        ended = wait_for(lambda: _all_ended(server), timeout=120, interval=1)
        ran = {int(str(j["id"])) for j in ended if _exit_file(server.home, j).exists()}
        wrong = [j for j in ended if int(str(j["id"])) in ran and j["state"] != "SUCCEEDED"]
        lost = [j for j in ended if j["reason"] == "LOST"]
        assert wrong == [], wrong[:5]
        assert all("not found" in str(j["message"]) for j in lost), lost[:5]
        print(
            f"\n{CLIENTS * JOBS_PER_CLIENT} jobs in {submitting:.1f} s with {kills} kill -9, "
            f"{len(retried)} submissions retried after a lost answer; {len(ran)} ran, all "
            f"SUCCEEDED; {len(lost)} LOST (never started)"
        )
    finally:
        for thread in threads:
            thread.join(timeout=1)
        server.stop()
    wait_for(lambda: server.proc is not None and server.proc.poll() is not None, timeout=15)
    db = sqlite3.connect(server.home / "jobyard.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        db.close()
