"""Container jobs (podman) beside plain `podman run`, in the same run on the same machine.

An image is made here (a static busybox, `podman import`; no registry, so it is cached: this
measures what jobyard adds, not a pull) and removed afterwards. Each round runs `true` these four
ways, one at a time, each after the last ended, in a random order:

- `podman run --rm --init --network host <image> true`, timed here, and the very command
  line jobyard runs for a container task (its name, labels, passthrough log, pid file, env
  file, mount): the anchors;
- a process job (`{"entrypoint": ["true"]}`) and a container job (the same with `image`),
  each submitted to one jobyard server (container_runtime=podman), its submit -> RUNNING and
  submit -> SUCCEEDED from the job's own state log (server clock).

The container job's overhead over the process job is what running it in a container costs;
less the same `podman run` by hand, what jobyard adds to it (its target: at most 20 ms), taken
round by round (podman's own time varies by more than that from one run to the next here).
Skipped, with a row saying why, without podman or busybox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.client import Connection
from bench.report import Result, at_most, info, percentile
from jobyard.executors import containers as runtime

if TYPE_CHECKING:
    from bench.scenarios import Options

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
SCENARIO = "containers"


def _why_not() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman catatonit)"
    if shutil.which("busybox") is None:
        return "busybox is not installed (apt-get install busybox-static)"
    return None


@contextlib.contextmanager
def _image() -> Iterator[str]:
    """A one-program image (busybox, `true` linked to it), in podman's store while it lasts."""
    ref = f"localhost/jobyard-bench-{uuid.uuid4().hex[:8]}/busybox:1"
    with tempfile.TemporaryDirectory(prefix="jobyard-bench-image-") as tmp:
        root = Path(tmp) / "root"
        (root / "bin").mkdir(parents=True)
        shutil.copy2(shutil.which("busybox") or "busybox", root / "bin" / "busybox")
        for applet in ("true", "sh"):
            (root / "bin" / applet).symlink_to("busybox")
        archive = Path(tmp) / "root.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(root, arcname=".")
        subprocess.run(
            ["podman", "import", "-q", str(archive), ref], check=True, capture_output=True
        )
    try:
        yield ref
    finally:
        subprocess.run(["podman", "rmi", "-f", ref], check=False, capture_output=True)


def _podman_run(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - started


def _plain(image: str) -> list[str]:
    return ["podman", "run", "--rm", "--init", "--network", "host", image, "true"]


def _as_jobyard_runs_it(image: str, scratch: Path, n: int) -> list[str]:
    """The command line jobyard runs for a container task (its own options: name, labels,
    passthrough log, pid file, env file, mount, workdir), for a task of its own here."""
    env_file = scratch / "task.env"
    env_file.write_text("JOBYARD_JOB_ID=0\n")
    task = runtime.ContainerTask(
        name=f"jobyard-bench-{uuid.uuid4().hex[:8]}-{n}",
        image=image,
        labels=runtime.labels(0, "bench", scratch),
        cwd=scratch,
        env_file=env_file,
        gpus=(),
        argv=("true",),
        pid_file=scratch / f"task-{n}.cpid",
    )
    return runtime.run_command(runtime.Runtime("podman", ("podman",)), task, cdi=False)


async def _job(conn: Connection, body: dict[str, Any]) -> tuple[float, float]:
    """(submit -> RUNNING, submit -> SUCCEEDED) of one job, from its state log."""
    job = (await conn.post("/api/v1/jobs", json.dumps(body).encode())).check().json()
    while job["state"] not in TERMINAL:  # seldom: the times are the server's, and its CPU
        await asyncio.sleep(0.05)  # is podman's too on a small machine
        job = (await conn.get(f"/api/v1/jobs/{job['id']}")).check().json()
    if job["state"] != "SUCCEEDED":
        raise RuntimeError(f"job {job['id']} ended {job['state']}: {job.get('message')}")
    at = {e["state"]: datetime.fromisoformat(e["timestamp"]).timestamp() for e in job["state_log"]}
    return at["RUNNING"] - at["QUEUED"], at["SUCCEEDED"] - at["QUEUED"]


@dataclass
class Rounds:
    """Seconds per round: plain `podman run`, jobyard's own command line run by hand, and the
    (submit -> RUNNING, submit -> SUCCEEDED) of a process job and of a container job."""

    plain: list[float] = field(default_factory=list)
    same: list[float] = field(default_factory=list)
    process: list[tuple[float, float]] = field(default_factory=list)
    container: list[tuple[float, float]] = field(default_factory=list)


async def _rounds(conn: Connection, image: str, runs: int, scratch: Path) -> Rounds:
    done = Rounds()
    await _job(conn, {"entrypoint": ["true"], "image": image})  # a first start warms up
    for n in range(runs):  # in a new order each round: no one of them always follows another
        steps = ["plain", "same", "process", "container"]
        random.shuffle(steps)
        for step in steps:
            if step == "plain":
                done.plain.append(await asyncio.to_thread(_podman_run, _plain(image)))
            elif step == "same":
                same = _as_jobyard_runs_it(image, scratch, n)
                done.same.append(await asyncio.to_thread(_podman_run, same))
            elif step == "process":
                done.process.append(await _job(conn, {"entrypoint": ["true"]}))
            else:
                done.container.append(await _job(conn, {"entrypoint": ["true"], "image": image}))
    return done


def _ms(values: list[float], fraction: float = 0.5) -> float:
    return percentile(values, fraction) * 1000


def containers(options: Options) -> list[Result]:
    why = _why_not()
    if why is not None:
        return [info(SCENARIO, f"skipped: {why}", 0, "")]
    runs = 10 if options.quick else 40
    with (
        _image() as image,
        tempfile.TemporaryDirectory(prefix="jobyard-bench-task-") as scratch,
        options.server(SCENARIO, container_runtime="podman") as server,
    ):
        done = asyncio.run(_go(server.target, image, runs, Path(scratch)))
    return _results(done, runs)


def _results(done: Rounds, runs: int) -> list[Result]:
    note = f"{runs} rounds of one of each, in a random order; jobs: server clock (state log)"
    process = [p[1] for p in done.process]
    container = [c[1] for c in done.container]
    overhead = _ms(container) - _ms(process)
    # per round: the container job, less the process job and the same podman run by hand
    added = [c - p - s for c, p, s in zip(container, process, done.same, strict=True)]
    return [
        info(SCENARIO, "podman run --rm --init true p50", _ms(done.plain), "ms", note),
        info(SCENARIO, "podman run, jobyard's command line, p50", _ms(done.same), "ms", note),
        info(SCENARIO, "  ... its p90", _ms(done.same, 0.9), "ms", _spread(done.same)),
        at_most(
            SCENARIO,
            "container job submit->RUNNING p50 (cached image)",
            _ms([c[0] for c in done.container]),
            "ms",
            50,
            note,
        ),
        info(SCENARIO, "process job submit->SUCCEEDED p50", _ms(process), "ms", note),
        info(SCENARIO, "container job submit->SUCCEEDED p50", _ms(container), "ms", note),
        info(SCENARIO, "container job over process job (p50s)", overhead, "ms", note),
        at_most(
            SCENARIO,
            "jobyard's addition to its podman run (p50 of rounds)",
            _ms(added),
            "ms",
            20,
            "per round: container job - process job - the same podman run by hand; "
            f"difference of p50s: {overhead - _ms(done.same):.0f} ms",
        ),
    ]


def _spread(values: list[float]) -> str:
    return f"stdev {statistics.pstdev(v * 1000 for v in values):.0f} ms"


async def _go(target: Any, image: str, runs: int, scratch: Path) -> Rounds:
    async with await Connection.open(target) as conn:
        return await _rounds(conn, image, runs, scratch)
