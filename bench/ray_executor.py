"""jobyard onto a real Ray cluster (the `ray` executor) beside Ray's own client, in one run.

A head is started here (`ray start --head --num-cpus 2` on free loopback ports, as the tests
do: tests/integration/ray_support.py) and a jobyard server with JOBYARD_EXECUTOR=ray on it.

Latency: submit -> SUCCEEDED of `<python> -c pass`, alternating between a POST to jobyard
(then GET the job every 20 ms) and Ray's JobSubmissionClient straight to the head (then
get_job_status every 20 ms), 20 of each (p50, p90). Ray's own time for a job (its
end_time - start_time: starting a supervisor worker, then the driver) varies by hundreds of
ms from job to job, so what jobyard adds is taken outside it: each trip minus Ray's own time,
p50 of each way, their difference (the whole trips' difference is a row too).

Throughput: 200 such jobs both ways, submitted at once (jobyard: 8 HTTP clients; Ray: 8
threads with a client each), from the first submit until the last job ended as the server
that ran it recorded it (Ray's end_time; jobyard's finished_at), so that polling for the end
costs neither side CPU it measures. Ray runs every job's driver under its own supervisor
worker, so both ways are bound by how fast Ray starts those on 2 CPUs.
Skipped, with a row saying why, where `ray` is not installed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bench import load
from bench.client import Connection, Target
from bench.report import Result, at_least, at_most, info, percentile

if TYPE_CHECKING:
    from bench.scenarios import Options

SCENARIO = "ray-executor"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
ENTRYPOINT = f"{sys.executable} -c pass"
POLL = 0.02


def _ray_client(url: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(url)


# ---- latency -----------------------------------------------------------------------------------


def _ray_time(client: Any, sid: str) -> float:
    """How long Ray itself had the job: from taking the submission to its end (Ray's clock)."""
    job = client.get_job_info(sid)
    return float(job.end_time - job.start_time) / 1000


def _direct_trip(client: Any) -> tuple[float, float]:
    """(submit -> SUCCEEDED seen, of which Ray's own time) straight to Ray."""
    t0 = time.perf_counter()
    sid = client.submit_job(entrypoint=ENTRYPOINT)
    while (status := str(client.get_job_status(sid).value)) not in TERMINAL:
        time.sleep(POLL)
    trip = time.perf_counter() - t0
    if status != "SUCCEEDED":
        raise RuntimeError(f"Ray ran {ENTRYPOINT!r} to {status}")
    return trip, _ray_time(client, sid)


async def _jobyard_trip(target: Target, client: Any) -> tuple[float, float]:
    """(POST -> SUCCEEDED seen, of which Ray's own time) through jobyard."""
    body = json.dumps({"entrypoint": ENTRYPOINT}).encode()
    async with await Connection.open(target) as conn:
        t0 = time.perf_counter()
        job = (await conn.post("/api/v1/jobs", body)).check().json()
        path = f"/api/v1/jobs/{job['id']}"
        while (state := (await conn.get(path)).check().json()["state"]) not in TERMINAL:
            await asyncio.sleep(POLL)
        trip = time.perf_counter() - t0
        if state != "SUCCEEDED":
            raise RuntimeError(f"jobyard ran {ENTRYPOINT!r} to {state}")
    sid = f"jobyard-{job['id']}-{job['display_id']}-worker-0"  # the executor's id for it
    return trip, _ray_time(client, sid)


def _latency(target: Target, client: Any, runs: int) -> list[Result]:
    _direct_trip(client)  # warm both paths (Ray's first submit of a client is slower)
    asyncio.run(_jobyard_trip(target, client))
    direct, through = [], []
    for _ in range(runs):
        direct.append(_direct_trip(client))
        through.append(asyncio.run(_jobyard_trip(target, client)))

    def p(trips: list[tuple[float, float]], q: float, *, outside: bool = False) -> float:
        return percentile([t - (r if outside else 0) for t, r in trips], q) * 1000

    note = f"`python -c pass`, {runs} each, alternating, state polled every {POLL * 1000:g} ms"
    outside = "the trip minus Ray's own end_time - start_time for the job"
    added = p(through, 0.5, outside=True) - p(direct, 0.5, outside=True)
    return [
        info(SCENARIO, "Ray client -> SUCCEEDED p50", p(direct, 0.5), "ms", note),
        info(SCENARIO, "Ray client -> SUCCEEDED p90", p(direct, 0.9), "ms"),
        info(SCENARIO, "jobyard -> SUCCEEDED on Ray p50", p(through, 0.5), "ms", note),
        info(SCENARIO, "jobyard -> SUCCEEDED on Ray p90", p(through, 0.9), "ms"),
        info(
            SCENARIO,
            "p50 difference of the whole trips",
            p(through, 0.5) - p(direct, 0.5),
            "ms",
            "includes Ray's own run time, which varies by hundreds of ms from job to job",
        ),
        info(
            SCENARIO,
            "Ray client: outside Ray's own time p50",
            p(direct, 0.5, outside=True),
            "ms",
            outside,
        ),  # fmt: skip
        info(
            SCENARIO,
            "jobyard: outside Ray's own time p50",
            p(through, 0.5, outside=True),
            "ms",
            outside,
        ),  # fmt: skip
        at_most(
            SCENARIO,
            "latency jobyard adds (p50 outside Ray's own time)",
            added,
            "ms",
            50,
            "POST, reconciler pass and start, the watcher seeing the end (every 20 ms), the "
            "log's last copy, the reconciler recording it",
        ),
    ]


# ---- throughput --------------------------------------------------------------------------------


def _direct_rate(url: str, total: int, threads: int = 8) -> tuple[float, float]:
    """(jobs/s run to the end, submits/s accepted) straight to Ray."""
    clients = [_ray_client(url) for _ in range(threads)]
    shares = [total // threads + (1 if i < total % threads else 0) for i in range(threads)]

    def submit(pair: tuple[Any, int]) -> list[str]:
        client, count = pair
        return [client.submit_job(entrypoint=ENTRYPOINT) for _ in range(count)]

    wall0, t0 = time.time(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        ids = {
            sid for batch in pool.map(submit, zip(clients, shares, strict=True)) for sid in batch
        }
    accepted = total / (time.perf_counter() - t0)
    while True:
        jobs = [j for j in clients[0].list_jobs() if j.submission_id in ids]
        if len(jobs) == total and all(str(j.status.value) in TERMINAL for j in jobs):
            break
        time.sleep(0.5)
    failed = [j.submission_id for j in jobs if str(j.status.value) != "SUCCEEDED"]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs straight to Ray did not succeed")
    last = max(j.end_time or 0 for j in jobs) / 1000
    return total / (last - wall0), accepted


async def _jobyard_rate(target: Target, total: int) -> tuple[float, float]:
    """(jobs/s run to the end, submits/s accepted) through jobyard onto Ray."""
    body = json.dumps({"entrypoint": ENTRYPOINT}).encode()
    wall0 = time.time()
    run = await load.run_load(target, 8, count=total, body=body)
    async with await Connection.open(target) as conn:
        while True:
            page = (await conn.get(f"/api/v1/jobs?limit={total}&order=desc")).check().json()
            jobs = page["items"][:total]
            if all(job["state"] in TERMINAL for job in jobs):
                break
            await asyncio.sleep(0.5)
    failed = [job["id"] for job in jobs if job["state"] != "SUCCEEDED"]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs through jobyard did not succeed: {failed[:5]}")
    last = max(datetime.fromisoformat(job["finished_at"]).timestamp() for job in jobs)
    return total / (last - wall0), run.rate


def _throughput(target: Target, url: str, total: int, cpu: Any) -> list[Result]:
    direct, direct_accepted = _direct_rate(url, total)
    before = cpu()
    through, accepted = asyncio.run(_jobyard_rate(target, total))
    server_ms = (cpu() - before) / total * 1000
    note = f"{total} `python -c pass` jobs submitted at once (8 clients), to the last one's end"
    ratio = through / direct
    return [
        info(SCENARIO, "Ray client: jobs/s run", direct, "jobs/s", note),
        info(SCENARIO, "Ray client: submits/s accepted", direct_accepted, "jobs/s"),
        info(SCENARIO, "jobyard onto Ray: jobs/s run", through, "jobs/s", note),
        info(SCENARIO, "jobyard onto Ray: submits/s accepted", accepted, "jobs/s"),
        info(SCENARIO, "jobyard server CPU per job", server_ms, "ms", "submit to recorded end"),
        Result(
            SCENARIO,
            "jobyard throughput vs Ray client",
            round(ratio * 100, 1),
            "%",
            ">= 80",
            ratio >= 0.8,
            "Ray ran the direct batch first; jobyard's ran on a head holding those jobs too",
        ),
    ]


# ---- the scenario ------------------------------------------------------------------------------


def ray_executor(options: Options) -> list[Result]:
    try:
        import ray.job_submission  # noqa: F401
        from tests.integration.ray_support import start_head, stop_head
    except ImportError as exc:
        return [info(SCENARIO, "skipped", 0, "", f"ray is not installed ({exc})")]
    runs, total = (6, 20) if options.quick else (20, 200)
    head = start_head(cpus=2)
    try:
        settings = {"executor": "ray", "ray__address": head.dashboard, "ray_port": "0"}
        with options.server(SCENARIO, **settings) as server:
            client = _ray_client(head.dashboard)
            results = _latency(server.target, client, runs)
            results += _throughput(server.target, head.dashboard, total, server.cpu_seconds)
    finally:
        stop_head(head)
    return [*results, at_least(SCENARIO, "Ray head CPUs", head.cpus, "CPUs", 1, "--num-cpus")]
