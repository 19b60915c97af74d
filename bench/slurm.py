"""jobyard onto Slurm beside plain `sbatch`, in the same run on the same cluster.

Latency: submit -> the job's first output line, for `sbatch --wrap` and for a POST to jobyard
(JOBYARD_EXECUTOR=slurm), alternating, each after a random 0-1 s pause so that neither is
phase-locked to slurmctld's one-second scheduling loop; both watch the log file every 10 ms.
Where each job falls in that loop swamps the difference, so the latency jobyard adds is taken
where the two paths part: POST -> sbatch done (as the server recorded it) minus sbatch's call.
Throughput: N trivial jobs handed to Slurm, by `sbatch` (sequential, and 4 at a time as the
executor runs them) and through jobyard (8 concurrent clients; until every job has its Slurm
id, i.e. each runs, has ended, or waits in Slurm's queue). jobyard hands the one-task jobs a
scheduler pass starts together to one sbatch as a job array; a last row measures it with one
sbatch per job (max_array_size=1). Skipped, with a row saying why,
without a cluster (`.ci/slurm-setup.sh` starts one).
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import random
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bench import load
from bench.client import Connection
from bench.report import Result, at_most, info, percentile

if TYPE_CHECKING:
    from bench.scenarios import Options
    from bench.server import Server

NOT_YET = ("QUEUED", "SCHEDULED")  # and STARTING until sbatch has taken it (pending EXECUTOR)
LIVE = "QUEUED,SCHEDULED,STARTING,RUNNING,STOPPING"


def find_conf() -> str | None:
    if os.environ.get("SLURM_CONF"):
        return os.environ["SLURM_CONF"]
    user = pwd.getpwuid(os.getuid()).pw_name
    for candidate in (f"/var/tmp/jobyard-slurm-{user}/slurm.conf", "/etc/slurm/slurm.conf"):
        if Path(candidate).is_file():
            return candidate
    return None


def _env(conf: str | None) -> dict[str, str]:
    return {**os.environ, **({"SLURM_CONF": conf} if conf else {})}


def _why_not(conf: str | None) -> str | None:
    if shutil.which("sbatch") is None:
        return "Slurm is not installed (run .ci/slurm-setup.sh)"
    ping = subprocess.run(
        ["scontrol", "ping"], env=_env(conf), capture_output=True, text=True, check=False
    )
    return None if ping.returncode == 0 else "no Slurm cluster answers (scontrol ping)"


def _sbatch(conf: str | None, output: str, command: str, *options: str) -> str:
    done = subprocess.run(
        ["sbatch", "--parsable", *options, f"--output={output}", f"--wrap={command}"],
        env=_env(conf),
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().split(";")[0]


def _wait_output(path: Path, t0: float, timeout: float = 60) -> float:
    while time.perf_counter() - t0 < timeout:
        try:
            if path.read_bytes().startswith(b"started"):
                return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"no output in {path} within {timeout:g} s")


def _wait_slurm_idle(conf: str | None, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run(
        ["squeue", "-h", "-o", "%i"], env=_env(conf), capture_output=True, text=True, check=False
    ).stdout.strip():
        if time.monotonic() > deadline:
            raise RuntimeError("Slurm still has jobs after the benchmark's wait")
        time.sleep(0.2)


async def _count(conn: Connection, states: str) -> int:
    return int((await conn.get(f"/api/v1/jobs?state={states}&limit=1")).check().json()["total"])


def _handed(job: dict[str, object]) -> bool:
    """sbatch has taken the job: it runs (or ended), or waits in Slurm's queue (STARTING with
    pending reason EXECUTOR)."""
    if job["state"] in NOT_YET:
        return False
    return job["state"] != "STARTING" or job["pending_reason"] == "EXECUTOR"


async def _wait_handed(conn: Connection, timeout: float = 300, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while True:
        waiting = await _count(conn, ",".join(NOT_YET))
        if waiting == 0:
            page = (await conn.get("/api/v1/jobs?state=STARTING&limit=500")).check().json()
            waiting = sum(1 for job in page["items"] if not _handed(job))
        if waiting == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{waiting} jobs not handed to Slurm within {timeout:g} s")
        await asyncio.sleep(interval)


async def _wait_count(conn: Connection, states: str, wanted: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while await _count(conn, states) != wanted:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not {wanted} jobs in {states} within {timeout:g} s")
        await asyncio.sleep(0.02)


# ---- latency -----------------------------------------------------------------------------------


async def _jobyard_trip(server: Server) -> tuple[float, float]:
    """(POST -> handed to Slurm, POST -> first output) of one `echo started` job. The hand-over
    is the server's own record of it (the EXECUTOR event), so nothing polls the server."""
    body = json.dumps({"entrypoint": "echo started"}).encode()
    async with await Connection.open(server.target) as conn:
        wall0, t0 = time.time(), time.perf_counter()
        job = (await conn.post("/api/v1/jobs", body)).check().json()
        log = server.home / "logs" / str(job["id"]) / f"{job['display_id']}-worker-0.log"
        to_output = await asyncio.to_thread(_wait_output, log, t0)
        handed_at = await _handed_at(conn, job["id"])
        if handed_at is None:
            raise RuntimeError(f"job {job['id']} has no EXECUTOR event")
        return handed_at - wall0, to_output


def _latency(server: Server, conf: str | None, runs: int, scratch: Path) -> list[Result]:
    plain, calls, through, handed = [], [], [], []
    for i in range(runs):
        time.sleep(random.uniform(0, 1))
        out = scratch / f"lat-{i}.out"
        t0 = time.perf_counter()
        _sbatch(conf, str(out), "echo started")
        calls.append(time.perf_counter() - t0)
        plain.append(_wait_output(out, t0))
        time.sleep(random.uniform(0, 1))
        to_slurm, to_output = asyncio.run(_jobyard_trip(server))
        handed.append(to_slurm)
        through.append(to_output)
    note = f"{runs} jobs each, alternating, 0-1 s jitter; log file polled every 10 ms"
    ms = {
        name: percentile(v, 0.5) * 1000
        for name, v in (("plain", plain), ("jy", through), ("call", calls), ("handed", handed))
    }
    return [
        info("slurm", "sbatch -> first output p50", ms["plain"], "ms", note),
        info("slurm", "sbatch -> first output p99", percentile(plain, 0.99) * 1000, "ms", note),
        info("slurm", "jobyard POST -> first output p50", ms["jy"], "ms", note),
        info("slurm", "jobyard POST -> first output p99", percentile(through, 0.99) * 1000, "ms"),
        info(
            "slurm",
            "first output, jobyard minus sbatch (p50 difference)",
            ms["jy"] - ms["plain"],
            "ms",
            "dominated by where each job falls in slurmctld's scheduling loop (0-1 s, for both "
            "paths alike); swings by hundreds of ms between runs of 20",
        ),
        info("slurm", "sbatch call (Slurm has the job) p50", ms["call"], "ms", note),
        info(
            "slurm",
            "jobyard POST -> Slurm has the job p50",
            ms["handed"],
            "ms",
            "POST, reconciler pass, sbatch, recorded (the server's EXECUTOR event)",
        ),
        at_most(
            "slurm",
            "latency jobyard adds before Slurm has the job",
            ms["handed"] - ms["call"],
            "ms",
            50,
            "hand-over p50 minus sbatch's own call p50; from there on both jobs take the same "
            "path through Slurm (jobyard's supervisor adds a few ms at the job's start)",
        ),
    ]


# ---- throughput --------------------------------------------------------------------------------


def _sbatch_rate(conf: str | None, total: int, parallel: int, *, held: bool) -> float:
    options = ["--hold"] if held else []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        ids = list(pool.map(lambda _: _sbatch(conf, "/dev/null", "true", *options), range(total)))
    rate = total / (time.perf_counter() - t0)
    if held:
        subprocess.run(["scancel", *ids], env=_env(conf), capture_output=True, check=False)
    _wait_slurm_idle(conf)
    return rate


async def _handed_at(conn: Connection, job_id: int) -> float | None:
    """When the reconciler recorded that sbatch had taken the job (its EXECUTOR event)."""
    events = (await conn.get(f"/api/v1/jobs/{job_id}/events")).check().json()["items"]
    times = [
        datetime.fromisoformat(e["timestamp"]).timestamp()
        for e in events
        if e["reason"] == "Pending" and e["message"].startswith("EXECUTOR")
    ]
    return min(times) if times else None


async def _jobyard_rate(server: Server, total: int, *, held: bool) -> tuple[float, float]:
    """(jobs/s handed to Slurm, jobs/s accepted by the API) for `total` concurrent POSTs.
    The end is the last job's hand-over as the server recorded it, not when polling saw it:
    polling every few milliseconds would take the server's CPU from the work it measures."""
    wall0, t0 = time.time(), time.perf_counter()
    run = await load.run_load(server.target, 8, count=total)
    async with await Connection.open(server.target) as conn:
        await _wait_handed(conn, interval=0.25)
        seen = time.perf_counter() - t0
        page = (await conn.get(f"/api/v1/jobs?limit={total}&order=desc")).check().json()
        stamps = [await _handed_at(conn, job["id"]) for job in page["items"][:total]]
        if held:  # they would wait for ever: stop them (jobyard cancels them in Slurm)
            for job in page["items"][:total]:
                (await conn.post(f"/api/v1/jobs/{job['id']}/stop", b"")).check()
        await _wait_count(conn, LIVE, 0)  # let them end before anything else runs
    known = [s for s in stamps if s is not None]
    handed = max(known) - wall0 if len(known) == total else seen
    return total / handed, run.rate


def _throughput(server: Server, conf: str | None, total: int, *, held: bool) -> list[Result]:
    sequential = _sbatch_rate(conf, total, 1, held=held)
    parallel = _sbatch_rate(conf, total, 4, held=held)
    through, accepted = asyncio.run(_jobyard_rate(server, total, held=held))
    _wait_slurm_idle(conf)
    how = "held (`--hold`, both ways)" if held else "running as they come"
    note = f"{total} `true` jobs, {how}"
    mode = "held" if held else "running"
    ratio = through / parallel
    rows = [
        info("slurm", f"sbatch submits/s, sequential, {mode}", sequential, "jobs/s", note),
        info("slurm", f"sbatch submits/s, 4 in parallel, {mode}", parallel, "jobs/s", note),
        info(
            "slurm",
            f"jobyard submits/s onto Slurm, {mode}",
            through,
            "jobs/s",
            f"{note}, 8 clients; first POST -> all handed to sbatch (API accepted "
            f"{accepted:.0f}/s); the executor runs 4 sbatch at a time, and the one-task "
            "jobs a pass starts together go as one job array",
        ),
    ]
    if not held:  # Slurm starts and runs jobs meanwhile: a diagnostic beside the figure
        return [*rows, info("slurm", "jobyard vs sbatch 4 in parallel, running", ratio * 100, "%")]
    return [
        *rows,
        Result(
            "slurm",
            "jobyard throughput vs sbatch 4 in parallel",
            round(ratio * 100, 1),
            "%",
            ">= 80",
            ratio >= 0.8,
            "goal: jobyard costs at most 20% of sbatch's throughput; held, so that Slurm "
            "starting the first jobs does not compete with the submissions for the CPUs",
        ),
    ]


def slurm(options: Options) -> list[Result]:
    conf = find_conf()
    why = _why_not(conf)
    if why is not None:
        return [info("slurm", f"skipped: {why}", 0, "")]
    settings = {"executor": "slurm", **({"slurm__conf": conf} if conf else {})}
    runs, total = (6, 50) if options.quick else (20, 200)
    with (
        tempfile.TemporaryDirectory(prefix="jobyard-bench-slurm-", dir="/var/tmp") as scratch,
        options.server("slurm", **settings) as server,
    ):
        _wait_slurm_idle(conf)
        results = _latency(server, conf, runs, Path(scratch))
        _wait_slurm_idle(conf)
        results += _throughput(server, conf, total, held=False)
    held = {**settings, "slurm__sbatch_args": '["--hold"]'}
    with options.server("slurm-held", **held) as server:
        results += _throughput(server, conf, total, held=True)
    # Without job arrays (max_array_size=1): what one sbatch per job costs, for comparison.
    with options.server("slurm-held-alone", **held, slurm__max_array_size="1") as server:
        alone, _ = asyncio.run(_jobyard_rate(server, total, held=True))
        _wait_slurm_idle(conf)
    note = f"{total} `true` jobs, held; max_array_size=1: one sbatch per job, no job arrays"
    alone_row = "jobyard submits/s onto Slurm, held, one sbatch per job"
    return [*results, info("slurm", alone_row, alone, "jobs/s", note)]
