"""Closed-loop load: N connections, each sending its next request when the last one answered.

`run_load` (Python, bench.client: cheap enough that the server is what's measured) counts
every request and checks every status; `wrk_post` (C) is an optional cross-check.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.client import Connection, Target

TRUE_JOB = json.dumps({"entrypoint": "true"}).encode()


@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    client_cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def client_cpu_ms_per_request(self) -> float:
        return self.client_cpu_seconds / max(self.requests, 1) * 1000


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _worker(
    target: Target, path: str, body: bytes, deadline: float, budget: list[int]
) -> int:
    """POST until the deadline passes or the shared budget (a count, or -1: none) runs out."""
    done = 0
    async with await Connection.open(target) as conn:
        while time.monotonic() < deadline and budget[0] != 0:
            budget[0] -= 1
            (await conn.post(path, body)).check()
            done += 1
    return done


async def run_load(
    target: Target,
    clients: int,
    *,
    seconds: float | None = None,
    count: int | None = None,
    path: str = "/api/v1/jobs",
    body: bytes = TRUE_JOB,
) -> Load:
    """POST `body` over `clients` connections for `seconds`, or until `count` were answered."""
    if (seconds is None) == (count is None):
        raise ValueError("give exactly one of seconds and count")
    deadline = time.monotonic() + (seconds if seconds is not None else 3600)
    budget = [count if count is not None else -1]
    cpu, started = own_cpu_seconds(), time.monotonic()
    done = await asyncio.gather(
        *(_worker(target, path, body, deadline, budget) for _ in range(clients))
    )
    return Load(sum(done), time.monotonic() - started, own_cpu_seconds() - cpu)


# ---- wrk (optional) --------------------------------------------------------------------------

_LUA = 'wrk.method = "POST"\nwrk.body = {body}\nwrk.headers["Content-Type"] = "application/json"\n'


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk_post(target: Target, body: bytes, clients: int, seconds: float) -> Load:
    """`clients` keep-alive connections (2 wrk threads) POSTing `body` to /api/v1/jobs."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(_LUA.format(body=json.dumps(body.decode())))
        url = f"http://{target.host}:{target.port}/api/v1/jobs"
        command = ["wrk", f"-t{min(clients, 2)}", f"-c{clients}", f"-d{seconds:g}s"]
        command += ["-s", str(script), "-H", f"Authorization: Bearer {target.token}", url]
        cpu = _children_cpu_seconds()
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        cpu = _children_cpu_seconds() - cpu
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    total = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if total is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    elapsed = float(total.group(2)) / (1000 if total.group(3) == "ms" else 1)
    return Load(int(total.group(1)), elapsed, cpu)
