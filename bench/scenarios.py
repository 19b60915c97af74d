"""One function per scenario; each starts its own server and returns its figures."""

from __future__ import annotations

import concurrent.futures
import time
from datetime import datetime
from typing import Any

import httpx
import psutil

from bench import fill, load
from bench.report import Result, at_least, at_most, info, percentile
from bench.server import Server, running_server

LIVE = "QUEUED,SCHEDULED,STARTING,RUNNING,STOPPING"


def _live_count(http: httpx.Client) -> int:
    return int(http.get("/api/v1/jobs", params={"state": LIVE, "limit": 1}).json()["total"])


def _wait_drained(http: httpx.Client, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while _live_count(http):
        if time.monotonic() > deadline:
            raise RuntimeError("jobs did not finish in time")
        time.sleep(0.05)


def submit_throughput(quick: bool) -> list[Result]:
    seconds = 2 if quick else 5
    with running_server() as server, server.client() as http:
        started, count = time.monotonic(), 0
        while time.monotonic() - started < seconds:
            http.post("/api/v1/jobs", json={"entrypoint": "true"}).raise_for_status()
            count += 1
        one = count / (time.monotonic() - started)
        _wait_drained(http)
        url = f"{server.url}/api/v1/jobs"
        if load.wrk_available():
            eight = load.wrk_post(url, server.token, {"entrypoint": "true"}, 8, seconds)
            how = "wrk, 8 connections"
        else:
            eight = load.httpx_post(url, server.token, {"entrypoint": "true"}, 8, seconds)
            how = "8 httpx client processes (apt-get install wrk for a cheaper client)"
        _wait_drained(http)
    return [
        info(
            "submit throughput, 1 client",
            one,
            "jobs/s",
            "sequential httpx.Client; jobs run meanwhile",
        ),
        at_least(
            "submit throughput, 8 clients", eight, "jobs/s", 1000, f"{how}; jobs run meanwhile"
        ),
    ]


def _stamps(job: dict[str, Any]) -> dict[str, float]:
    return {
        e["state"]: datetime.fromisoformat(e["timestamp"]).timestamp() for e in job["state_log"]
    }


def latency(quick: bool) -> list[Result]:
    runs = 50 if quick else 200
    to_running, to_done, wall = [], [], []
    with running_server() as server, server.client() as http:
        for _ in range(runs):
            sent = time.monotonic()
            job = http.post("/api/v1/jobs", json={"entrypoint": "true"}).json()
            while job["state"] not in ("SUCCEEDED", "FAILED"):
                time.sleep(0.002)
                job = http.get(f"/api/v1/jobs/{job['id']}").json()
            wall.append((time.monotonic() - sent) * 1000)
            stamps = _stamps(job)
            to_running.append((stamps["RUNNING"] - stamps["QUEUED"]) * 1000)
            to_done.append((stamps["SUCCEEDED"] - stamps["QUEUED"]) * 1000)
    note = "from the job's state log (QUEUED = commit of the submit)"
    return [
        at_most("submit->RUNNING p50", percentile(to_running, 0.5), "ms", 20, note),
        info("submit->RUNNING p99", percentile(to_running, 0.99), "ms", note),
        at_most("submit->SUCCEEDED p50", percentile(to_done, 0.5), "ms", 50, note),
        info("submit->SUCCEEDED p99", percentile(to_done, 0.99), "ms", note),
        info(
            "POST to SUCCEEDED seen, p50",
            percentile(wall, 0.5),
            "ms",
            "client wall clock, 2 ms polling",
        ),
    ]


def _submit_many(server: Server, total: int, clients: int = 8) -> None:
    def submit(count: int) -> None:
        with server.client() as http:
            for _ in range(count):
                http.post("/api/v1/jobs", json={"entrypoint": "true"}).raise_for_status()

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(submit, [total // clients] * clients))


def drain(quick: bool) -> list[Result]:
    total = 200 if quick else 1000
    with running_server() as server, server.client() as http:
        started = time.monotonic()
        _submit_many(server, total)
        submitted = time.monotonic() - started
        _wait_drained(http)
        elapsed = time.monotonic() - started
    return [
        at_least(
            f"drain of {total} `true` jobs",
            total / elapsed,
            "jobs/s",
            200,
            f"first submit to all finished; submitting took {submitted:.1f} s",
        ),
    ]


def list_page(quick: bool) -> list[Result]:
    count = 10_000 if quick else 100_000
    requests = 100 if quick else 300
    results = []
    with fill.filled_home(count) as home, running_server(home) as server, server.client() as http:
        middle = str(count // 2)
        for label, params in (
            ("list page of 50", {"limit": 50}),
            ("list page of 50, mid cursor", {"limit": 50, "cursor": middle}),
            ("list page of 50, state filter", {"limit": 50, "state": "SUCCEEDED"}),
        ):
            timings = []
            for _ in range(requests):
                sent = time.perf_counter()
                http.get("/api/v1/jobs", params=params).raise_for_status()
                timings.append((time.perf_counter() - sent) * 1000)
            note = f"{count} stored jobs, client wall clock"
            results += [
                info(f"{label} p50", percentile(timings, 0.5), "ms", note),
                at_most(f"{label} p99", percentile(timings, 0.99), "ms", 20, note),
            ]
    return results


def memory(quick: bool) -> list[Result]:
    jobs = 50 if quick else 200
    with running_server(max_tasks=str(jobs + 10)) as server, server.client() as http:
        time.sleep(1)
        idle = server.rss_mb()
        ids = [
            http.post("/api/v1/jobs", json={"entrypoint": "sleep 300"}).json()["id"]
            for _ in range(jobs)
        ]
        deadline = time.monotonic() + 120
        while (
            http.get("/api/v1/jobs", params={"state": "RUNNING", "limit": 1}).json()["total"] < jobs
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("jobs did not all start")
            time.sleep(0.1)
        time.sleep(1)
        busy = server.rss_mb()
        supervisors = [p for p in psutil.Process(server.process.pid).children() if p.name() == "sh"]
        uss = sum(p.memory_full_info().uss for p in supervisors) / 2**20
        for job_id in ids:
            http.post(f"/api/v1/jobs/{job_id}/stop")
        _wait_drained(http)
    per_job = (busy - idle) / jobs
    return [
        info("server RSS idle", idle, "MB"),
        info(f"server RSS with {jobs} running sleep jobs", busy, "MB"),
        at_most("server memory per running job", per_job, "MB", 2, "RSS growth / jobs"),
        info(
            "supervisor memory per running job",
            uss / max(len(supervisors), 1),
            "MB",
            f"USS of the /bin/sh supervisor ({len(supervisors)} seen)",
        ),
    ]


SCENARIOS = {
    "submit": submit_throughput,
    "latency": latency,
    "drain": drain,
    "list": list_page,
    "memory": memory,
}
