"""One function per scenario: each starts its own server in a fresh home and returns figures.

Load comes from bench.client (raw keep-alive HTTP/1.1 on asyncio), so the client costs the
2-core machine little; every reply's status is checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from bench import fill, load
from bench.client import Connection, Target
from bench.containers import containers
from bench.dashboard import dashboard
from bench.gateway import gateway
from bench.metrics import metrics
from bench.ray import ray
from bench.ray_executor import ray_executor
from bench.report import Result, at_least, at_most, info, percentile
from bench.scaleout import scaleout
from bench.scheduler import scheduler
from bench.server import Server, running_server
from bench.slurm import slurm
from bench.usage import usage

LIVE = "QUEUED,SCHEDULED,STARTING,RUNNING,STOPPING"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
SLEEP_JOB = json.dumps({"entrypoint": "sleep 300"}).encode()
TARGET_CLIENTS = 8


@dataclass(frozen=True)
class Options:
    quick: bool = False
    profiles: Path | None = None  # a directory for py-spy profiles of the server, or None
    gil_only: bool = False  # profile only the thread holding the GIL
    wrk: bool = True  # cross-check submit throughput with wrk, where installed
    repeat: int = 1  # runs of each scenario; the report gives each figure's median

    def profile(self, scenario: str) -> Path | None:
        return None if self.profiles is None else self.profiles / f"{scenario}.txt"

    def server(
        self, scenario: str, home: Path | None = None, **settings: str
    ) -> contextlib.AbstractContextManager[Server]:
        """running_server for `scenario`, profiled if asked."""
        return running_server(
            home, self.profile(scenario), gil_only=self.gil_only, settings=settings
        )


def ms(seconds: float) -> float:
    return seconds * 1000


async def count_jobs(conn: Connection, states: str) -> int:
    reply = (await conn.get(f"/api/v1/jobs?state={states}&limit=1")).check()
    return int(reply.json()["total"])


async def wait_for_count(
    conn: Connection, states: str, wanted: int, timeout: float = 300, interval: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while await count_jobs(conn, states) != wanted:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not {wanted} jobs in {states} within {timeout:g} s")
        await asyncio.sleep(interval)


async def wait_drained(target: Target, timeout: float = 300) -> None:
    async with await Connection.open(target) as conn:
        await wait_for_count(conn, LIVE, 0, timeout)


# ---- 1. submit throughput -------------------------------------------------------------------


def _throughput_note(how: str, run: load.Load, cpu: str, unfinished: int | None = None) -> str:
    finished = "" if unfinished is None else f" ({run.requests - unfinished} finished by then)"
    return (
        f"{how}; {run.requests} jobs in {run.seconds:.1f} s{finished}; {cpu}; client "
        f"{run.client_cpu_ms_per_request:.2f} ms CPU/request"
    )


async def _python_load(server: Server, clients: int, seconds: float) -> tuple[load.Load, str, int]:
    before = server.cpu()
    run = await load.run_load(server.target, clients, seconds=seconds)
    after = server.cpu()
    async with await Connection.open(server.target) as conn:
        unfinished = await count_jobs(conn, LIVE)
    cpu = after.describe_since(before, submitted=run.requests, finished=run.requests - unfinished)
    return run, cpu, unfinished


def _throughput(server: Server, clients: int, seconds: float) -> tuple[float, str]:
    """(jobs/s, note) of `clients` submitting `true` jobs for `seconds`; then let them finish."""
    run, cpu, unfinished = asyncio.run(_python_load(server, clients, seconds))
    asyncio.run(wait_drained(server.target))
    how = "sequential" if clients == 1 else f"{clients} concurrent keep-alive connections"
    return run.rate, _throughput_note(how, run, cpu, unfinished)


def _wrk(server: Server, seconds: float) -> Result:
    before = server.cpu()
    run = load.wrk_post(server.target, load.TRUE_JOB, TARGET_CLIENTS, seconds)
    cpu = server.cpu().describe_since(before)
    asyncio.run(wait_drained(server.target))
    note = _throughput_note("wrk, 8 connections, 2 threads (cross-check)", run, cpu)
    return info("submit", "submit throughput, 8 clients (wrk)", run.rate, "jobs/s", note)


async def _queued_only(server: Server, seconds: float) -> Result:
    """The sleep job is left running: stopping the server kills it (stopping it through the
    API would start the queued jobs, one at a time)."""
    async with await Connection.open(server.target) as conn:
        (await conn.post("/api/v1/jobs", SLEEP_JOB)).check()
        await wait_for_count(conn, "RUNNING", 1, timeout=30)
    run, cpu, _ = await _python_load(server, TARGET_CLIENTS, seconds)
    note = _throughput_note(
        "diagnostic: max_tasks=1, held by a sleep job, so none of them starts", run, cpu
    )
    return info(
        "submit", "submit throughput, 8 clients, jobs kept QUEUED", run.rate, "jobs/s", note
    )


def submit(options: Options) -> list[Result]:
    """Jobs/s accepted by POST /api/v1/jobs while the submitted `true` jobs run; and, apart,
    with scheduling held back (what the API and its insert cost alone)."""
    seconds = 2.0 if options.quick else 5.0
    with options.server("submit") as server:
        one_rate, one_note = _throughput(server, 1, seconds)
        rate, note = _throughput(server, TARGET_CLIENTS, seconds)
        results = [
            info("submit", "submit throughput, 1 client", one_rate, "jobs/s", one_note),
            at_least("submit", "submit throughput, 8 clients", rate, "jobs/s", 1000, note),
        ]
        if options.wrk and load.wrk_available():
            results.append(_wrk(server, seconds))
    with running_server(expect_leftovers=True, settings={"max_tasks": "1"}) as server:
        results.append(asyncio.run(_queued_only(server, seconds)))
    return results


# ---- 2. submit -> RUNNING / SUCCEEDED latency ----------------------------------------------


@dataclass(frozen=True)
class Trip:
    """One job's way, in seconds: from the client's clock and from the job's own state log."""

    post: float  # POST sent -> reply read
    seen: float  # POST sent -> a GET saw it finished
    to_running: float  # state log: QUEUED -> RUNNING
    to_succeeded: float  # state log: QUEUED -> SUCCEEDED


def _state_times(job: dict[str, Any]) -> dict[str, float]:
    return {
        e["state"]: datetime.fromisoformat(e["timestamp"]).timestamp() for e in job["state_log"]
    }


async def _one_trip(conn: Connection, poll: float) -> Trip:
    sent = time.perf_counter()
    job = (await conn.post("/api/v1/jobs", load.TRUE_JOB)).check().json()
    posted = time.perf_counter()
    while job["state"] not in TERMINAL:
        await asyncio.sleep(poll)
        job = (await conn.get(f"/api/v1/jobs/{job['id']}")).check().json()
    seen = time.perf_counter()
    if job["state"] != "SUCCEEDED":
        raise RuntimeError(f"job {job['id']} ended {job['state']}: {job.get('message')}")
    at = _state_times(job)
    return Trip(
        posted - sent, seen - sent, at["RUNNING"] - at["QUEUED"], at["SUCCEEDED"] - at["QUEUED"]
    )


async def _trips(target: Target, runs: int, poll: float) -> list[Trip]:
    async with await Connection.open(target) as conn:
        return [await _one_trip(conn, poll) for _ in range(runs)]


def _p50_p99(
    metric: str, samples: list[float], note: str, p50_goal: float | None = None
) -> list[Result]:
    p50, p99 = ms(percentile(samples, 0.5)), ms(percentile(samples, 0.99))
    first = (
        info("latency", f"{metric} p50", p50, "ms", note)
        if p50_goal is None
        else at_most("latency", f"{metric} p50", p50, "ms", p50_goal, note)
    )
    return [first, info("latency", f"{metric} p99", p99, "ms", note)]


def latency(options: Options) -> list[Result]:
    """`true` jobs submitted one at a time, each after the last finished. The state-log pass
    polls every 20 ms (light on the server); a second pass polls every 2 ms for the client's
    view, which then includes the polling's granularity and its load on the server."""
    runs = 50 if options.quick else 200
    with options.server("latency") as server:
        logged = asyncio.run(_trips(server.target, runs, poll=0.02))
        polled = asyncio.run(_trips(server.target, runs // 2, poll=0.002))
    log_note = f"server clock, the job's state_log (QUEUED: the submit's insert); {runs} jobs"
    wall_note = f"client wall clock, GET every 2 ms; {len(polled)} jobs"
    return [
        *_p50_p99("submit->RUNNING", [t.to_running for t in logged], log_note, 20),
        *_p50_p99("submit->SUCCEEDED", [t.to_succeeded for t in logged], log_note, 50),
        *_p50_p99("POST round trip", [t.post for t in logged], f"client wall clock; {runs} jobs"),
        *_p50_p99("POST sent->SUCCEEDED seen", [t.seen for t in polled], wall_note),
    ]


# ---- 3. drain --------------------------------------------------------------------------------


async def last_finished(conn: Connection) -> float:
    """The latest `finished_at` (epoch seconds) of every stored job, as the server recorded it."""
    latest, cursor = 0.0, ""
    while True:
        page = (await conn.get(f"/api/v1/jobs?limit=500{cursor}")).check().json()
        for job in page["items"]:
            if job["finished_at"]:
                latest = max(latest, datetime.fromisoformat(job["finished_at"]).timestamp())
        if not page["next_cursor"]:
            return latest
        cursor = f"&cursor={page['next_cursor']}"


async def _drain(server: Server, total: int) -> list[Result]:
    # The end is the last job's finished_at as the server recorded it: polling for it every few
    # milliseconds would take the server's CPU from the jobs it is draining.
    before, started = server.cpu(), time.time()
    run = await load.run_load(server.target, TARGET_CLIENTS, count=total)
    async with await Connection.open(server.target) as conn:
        await wait_for_count(conn, LIVE, 0, interval=0.25)
        after = server.cpu()
        elapsed = await last_finished(conn) - started
        succeeded = await count_jobs(conn, "SUCCEEDED")
    if succeeded != total:
        raise RuntimeError(f"only {succeeded} of {total} jobs succeeded")
    note = (
        f"first submit -> last finished_at (polled every 250 ms); submitting took "
        f"{run.seconds:.1f} s "
        f"({run.rate:.0f}/s, {TARGET_CLIENTS} connections), the rest "
        f"{elapsed - run.seconds:.1f} s; "
        f"{after.describe_since(before, submitted=total, finished=total)}"
    )
    return [
        at_least("drain", f"drain of {total} `true` jobs", total / elapsed, "jobs/s", 200, note)
    ]


def drain(options: Options) -> list[Result]:
    """Jobs/s from the first of N concurrent submissions until every job has finished."""
    total = 200 if options.quick else 1000
    with options.server("drain") as server:
        return asyncio.run(_drain(server, total))


# ---- 4. list latency -------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    label: str
    path: str
    total: int  # what the reply's "total" must say


def _pages(count: int) -> list[Page]:
    return [
        Page("list newest 50", "/api/v1/jobs?limit=50", count),
        Page("list 50 at mid cursor", f"/api/v1/jobs?limit=50&cursor={count // 2}", count),
        Page("list 50, state=SUCCEEDED", "/api/v1/jobs?limit=50&state=SUCCEEDED", count * 9 // 10),
    ]


async def _time_page(server: Server, page: Page, requests: int) -> list[Result]:
    async with await Connection.open(server.target) as conn:
        body = (await conn.get(page.path)).check().json()
        if len(body["items"]) != 50 or body["total"] != page.total:
            raise RuntimeError(f"{page.path}: {len(body['items'])} items, total {body['total']}")
        for _ in range(10):  # warm up
            (await conn.get(page.path)).check()
        timings, cpu = [], server.cpu_seconds()
        for _ in range(requests):
            sent = time.perf_counter()
            (await conn.get(page.path)).check()
            timings.append(time.perf_counter() - sent)
        server_ms = ms(server.cpu_seconds() - cpu) / requests
    note = f"{requests} sequential GETs, client wall clock; server CPU {server_ms:.1f} ms/request"
    return [
        info("list", f"{page.label} p50", ms(percentile(timings, 0.5)), "ms", note),
        at_most("list", f"{page.label} p99", ms(percentile(timings, 0.99)), "ms", 20, note),
    ]


def list_page(options: Options) -> list[Result]:
    """GET /api/v1/jobs pages from a store of 100,000 finished jobs (10,000 with --quick)."""
    count, requests = (10_000, 100) if options.quick else (100_000, 300)
    with fill.filled_home(count) as (home, took):
        results = [info("list", f"fill the store with {count} jobs", took, "s", "setup only")]
        with options.server("list", home) as server:
            for page in _pages(count):
                results += asyncio.run(_time_page(server, page, requests))
    return results


# ---- 5. memory -------------------------------------------------------------------------------


async def _start_sleepers(target: Target, jobs: int) -> list[int]:
    async with await Connection.open(target) as conn:
        ids = [
            int((await conn.post("/api/v1/jobs", SLEEP_JOB)).check().json()["id"])
            for _ in range(jobs)
        ]
        await wait_for_count(conn, "RUNNING", jobs, timeout=120, interval=0.1)
    return ids


async def _stop_all(target: Target, ids: list[int]) -> None:
    async with await Connection.open(target) as conn:
        for job_id in ids:
            (await conn.post(f"/api/v1/jobs/{job_id}/stop")).check()
        await wait_for_count(conn, LIVE, 0, timeout=120, interval=0.1)


def _supervisor_uss_mb(server: Server) -> float:
    supervisors = psutil.Process(server.pid).children()
    return sum(p.memory_full_info().uss for p in supervisors) / 1e6 / max(len(supervisors), 1)


def _leftovers(server: Server, timeout: float = 15) -> int:
    deadline = time.monotonic() + timeout
    while (left := len(server.job_processes())) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def memory(options: Options) -> list[Result]:
    """Server RSS idle (after a warm-up of 20 `true` jobs) and with N `sleep 300` jobs running."""
    jobs = 50 if options.quick else 200
    with options.server("memory", max_tasks=str(jobs + 56)) as server:
        asyncio.run(load.run_load(server.target, 1, count=20))
        asyncio.run(wait_drained(server.target))
        time.sleep(1)
        idle = server.rss_mb()
        ids = asyncio.run(_start_sleepers(server.target, jobs))
        time.sleep(1)
        busy, supervisor = server.rss_mb(), _supervisor_uss_mb(server)
        asyncio.run(_stop_all(server.target, ids))
        left, after = _leftovers(server), server.rss_mb()
    per_job = (busy - idle) / jobs
    return [
        info("memory", "server RSS idle", idle, "MB", "after 20 `true` jobs ran (warm)"),
        info("memory", f"server RSS, {jobs} sleep jobs running", busy, "MB"),
        at_most("memory", "server memory per running job", per_job, "MB", 2, "RSS growth / jobs"),
        info("memory", "supervisor USS per running job", supervisor, "MB", "its /bin/sh, apart"),
        info("memory", "server RSS after stopping them", after, "MB"),
        at_most("memory", "job processes left after stop", left, "processes", 0, "psutil"),
    ]


SCENARIOS: dict[str, Callable[[Options], list[Result]]] = {
    "submit": submit,
    "latency": latency,
    "drain": drain,
    "list": list_page,
    "memory": memory,
    "gateway": gateway,
    "ray": ray,
    "ray-executor": ray_executor,
    "slurm": slurm,
    "containers": containers,
    "scheduler": scheduler,
    "dashboard": dashboard,
    "usage": usage,
    "metrics": metrics,
    "scaleout": scaleout,
}
