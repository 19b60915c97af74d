"""What the usage sampler costs with 200 running tasks (goal: at most 1% of one core).

A real server (a subprocess, the local executor) runs 200 `sleep` jobs and samples them every
5 s (the default `usage_interval_seconds`). Over a window of steady state:

- the sampler's own CPU time, as it counts it (`jobyard_usage_sampler_cpu_seconds_total` on
  /metrics: the thread CPU of each of its steps, in whichever thread ran it: the store read,
  the /proc scan and GPU read, building the samples, the store write, the idle check), per
  second of wall time: the figure with the goal;
- the same per pass, and how many samples each pass stored (200 expected);
- cross-check: the whole server process's CPU over the same window, beside that of a second
  server running the same 200 jobs with sampling off (`usage_interval_seconds=0`); their
  difference includes what the sampler's own count leaves out (the event loop's scheduling of
  its awaits, the writer's commit), and the noise of a shared machine.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

from bench.client import Connection, Target
from bench.report import Result, at_most, info

if TYPE_CHECKING:
    from bench.scenarios import Options

JOBS = 200
INTERVAL = 5.0
SLEEPER = json.dumps({"entrypoint": "sleep 900"}).encode()
_FIGURES = (
    "jobyard_usage_sampler_cpu_seconds_total",
    "jobyard_usage_sampler_passes_total",
    "jobyard_usage_samples_total",
)


async def _figures(target: Target) -> dict[str, float]:
    async with await Connection.open(target) as conn:
        text = (await conn.get("/metrics")).check().body.decode()
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in _FIGURES:
            found[name] = float(value)
    return found


async def _running(target: Target) -> int:
    async with await Connection.open(target) as conn:
        reply = (await conn.get("/api/v1/jobs?state=RUNNING&limit=1")).check()
        return int(reply.json()["total"])


async def _start(target: Target, jobs: int) -> None:
    async with await Connection.open(target) as conn:
        for _ in range(jobs):
            (await conn.post("/api/v1/jobs", SLEEPER)).check()
    deadline = time.monotonic() + 300
    while await _running(target) < jobs:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not {jobs} jobs RUNNING within 300 s")
        await asyncio.sleep(0.5)


async def _after_passes(target: Target, passes: int) -> dict[str, float]:
    """The figures once `passes` more sampling passes have stored a sample of every job."""
    start = await _figures(target)
    deadline = time.monotonic() + passes * INTERVAL * 4 + 30
    while True:
        now = await _figures(target)
        done = (
            now["jobyard_usage_sampler_passes_total"] - start["jobyard_usage_sampler_passes_total"]
        )
        if done >= passes:
            return now
        if time.monotonic() > deadline:
            raise RuntimeError(f"{passes} sampling passes did not happen in time")
        await asyncio.sleep(0.2)


def _sampled(options: Options, window: float) -> tuple[list[Result], float]:
    """(figures, the server's share of a core) with sampling on."""
    settings = {"max_tasks": str(JOBS + 56), "usage_interval_seconds": str(INTERVAL)}
    with options.server("usage", **settings) as server:
        asyncio.run(_start(server.target, JOBS))
        first = asyncio.run(_after_passes(server.target, 2))  # every job sampled twice
        cpu_before, wall_before = server.cpu_seconds(), time.monotonic()
        time.sleep(window)
        last = asyncio.run(_after_passes(server.target, 1))
        wall = time.monotonic() - wall_before
        server_share = (server.cpu_seconds() - cpu_before) / wall
    cpu = last[_FIGURES[0]] - first[_FIGURES[0]]
    passes = last[_FIGURES[1]] - first[_FIGURES[1]]
    samples = last[_FIGURES[2]] - first[_FIGURES[2]]
    share = cpu / wall
    note = (
        f"{JOBS} `sleep` jobs running, sampled every {INTERVAL:g} s; {passes:.0f} passes in "
        f"{wall:.0f} s; the sampler's own count (thread CPU of each step)"
    )
    return [
        at_most("usage", f"sampler CPU, {JOBS} running tasks", share * 100, "% of a core", 1, note),
        info("usage", "sampler CPU per pass", cpu / max(passes, 1) * 1000, "ms", note),
        info("usage", "samples stored per pass", samples / max(passes, 1), "samples"),
    ], server_share


def _unsampled(options: Options, window: float) -> float:
    """The server's share of a core with the same jobs and sampling off."""
    settings = {"max_tasks": str(JOBS + 56), "usage_interval_seconds": "0"}
    with options.server("usage-off", **settings) as server:
        asyncio.run(_start(server.target, JOBS))
        time.sleep(2 * INTERVAL)  # as long as the sampled run's warm-up, about
        before, began = server.cpu_seconds(), time.monotonic()
        time.sleep(window)
        return (server.cpu_seconds() - before) / (time.monotonic() - began)


def usage(options: Options) -> list[Result]:
    """The sampler's CPU with 200 running tasks; and the whole server's, with and without it."""
    window = 30.0 if options.quick else 120.0
    results, with_sampler = _sampled(options, window)
    without = _unsampled(options, window)
    note = f"whole server process, {window:.0f} s windows, {JOBS} jobs running; shared machine"
    return [
        *results,
        info("usage", "server CPU, sampling every 5 s", with_sampler * 100, "% of a core", note),
        info("usage", "server CPU, sampling off", without * 100, "% of a core", note),
        info(
            "usage",
            "server CPU difference (cross-check)",
            (with_sampler - without) * 100,
            "% of a core",
            "includes what the sampler's own count leaves out, and the machine's noise",
        ),
    ]
