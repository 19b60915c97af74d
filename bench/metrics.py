"""GET /metrics over a store of 100,000 jobs (goal: at most 50 ms).

The store is filled straight through SQLite (bench.fill) with finished jobs spread over four
queues of two pools (SUCCEEDED, FAILED, STOPPED); the real server then gets live ones through
its API: `sleep` jobs RUNNING in one queue, and jobs QUEUED in a queue that may run none
(`max_running_jobs = 0`), so the scheduler passes over them all the while. Each scrape is
parsed with prometheus-client's parser once, to check that it counts every job; then scrapes
are timed one after another on one keep-alive connection, as Prometheus sends them.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

from bench import fill
from bench.client import Connection, Target
from bench.report import Result, at_most, info, percentile
from jobyard.model import JobState

if TYPE_CHECKING:
    from bench.scenarios import Options

POOLS = [{"name": "local"}, {"name": "big"}]
QUEUES = [
    {"name": "default"},
    {"name": "batch"},
    {"name": "gpu", "pool": "big"},
    {"name": "held", "pool": "big", "max_running_jobs": 0},
]
_FINISHED = ("default", "batch", "gpu")
RUNNING, HELD = 20, 500


def mixed(job_id: int) -> tuple[JobState, str, str]:
    """Finished jobs over three queues of both pools: 80% SUCCEEDED, 15% FAILED, 5% STOPPED."""
    queue = _FINISHED[job_id % 3]
    pool = "big" if queue == "gpu" else "local"
    share = job_id % 20
    state = JobState.STOPPED if share == 0 else JobState.FAILED if share < 4 else JobState.SUCCEEDED
    return state, queue, pool


async def _submit(conn: Connection, queue: str, entrypoint: str, jobs: int) -> None:
    body = json.dumps({"entrypoint": entrypoint, "queue": queue}).encode()
    for _ in range(jobs):
        (await conn.post("/api/v1/jobs", body)).check()


async def _count(conn: Connection, state: str) -> int:
    reply = (await conn.get(f"/api/v1/jobs?state={state}&limit=1")).check()
    return int(reply.json()["total"])


async def _live(target: Target) -> None:
    """RUNNING sleepers and HELD queued jobs, through the API."""
    async with await Connection.open(target) as conn:
        await _submit(conn, "batch", "sleep 600", RUNNING)
        await _submit(conn, "held", "true", HELD)
        deadline = time.monotonic() + 120
        while await _count(conn, "RUNNING") < RUNNING:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not {RUNNING} jobs RUNNING within 120 s")
            await asyncio.sleep(0.2)


def _jobs_counted(text: str) -> dict[str, float]:
    """jobyard_jobs summed per state, as Prometheus would parse the scrape."""
    by_state: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "jobyard_jobs":
            for sample in family.samples:
                state = sample.labels["state"]
                by_state[state] = by_state.get(state, 0) + sample.value
    return by_state


def _check(text: str, stored: int) -> None:
    counted = _jobs_counted(text)
    total = sum(counted.values())
    if total != stored + RUNNING + HELD or counted.get("QUEUED") != HELD:
        raise RuntimeError(f"/metrics counts {counted}, expected {stored + RUNNING + HELD} jobs")


async def _scrapes(target: Target, stored: int, scrapes: int) -> tuple[list[float], int]:
    """Seconds per scrape (client wall clock) and the size of the last one."""
    async with await Connection.open(target) as conn:
        body = (await conn.get("/metrics")).check().body
        _check(body.decode(), stored)
        for _ in range(5):  # warm up
            (await conn.get("/metrics")).check()
        timings = []
        for _ in range(scrapes):
            sent = time.perf_counter()
            body = (await conn.get("/metrics")).check().body
            timings.append(time.perf_counter() - sent)
    return timings, len(body)


def metrics(options: Options) -> list[Result]:
    """GET /metrics latency with 100,000 stored jobs (10,000 with --quick)."""
    count, scrapes = (10_000, 20) if options.quick else (100_000, 50)
    settings = {"pools": json.dumps(POOLS), "queues": json.dumps(QUEUES)}
    with fill.filled_home(count, mixed) as (home, took):
        results = [info("metrics", f"fill the store with {count} jobs", took, "s", "setup only")]
        with options.server("metrics", home, **settings) as server:
            asyncio.run(_live(server.target))
            cpu = server.cpu_seconds()
            timings, size = asyncio.run(_scrapes(server.target, count, scrapes))
            server_ms = (server.cpu_seconds() - cpu) * 1000 / (scrapes + 6)
    stored = count + RUNNING + HELD
    note = (
        f"{scrapes} sequential scrapes of {size / 1000:.0f} kB over {stored} jobs ({RUNNING} "
        f"running, {HELD} queued); client wall clock; server CPU {server_ms:.1f} ms/scrape"
    )
    return [
        *results,
        info("metrics", "GET /metrics p50", percentile(timings, 0.5) * 1000, "ms", note),
        at_most("metrics", "GET /metrics p95", percentile(timings, 0.95) * 1000, "ms", 50, note),
    ]
