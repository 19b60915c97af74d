"""Ray's own JobSubmissionClient against jobyard's Ray job API, and against a real Ray head in
the same run when one can be started here.

Latency: submit -> SUCCEEDED of `echo hi`, polling get_job_status every 10 ms (p50 of 20).
Throughput: 50 sequential submit_job calls of `true` from one client (accepted per second).
Memory: the jobyard server's RSS (idle, fresh; and after the runs) against the summed RSS of
every process of a fresh Ray head. The head is `ray start --head` from $BENCH_RAY (a `ray`
executable of a `ray[default]` install), else the `ray` beside this Python; it is kept on
127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, as the contract note found) in its own temp
dir and session, and every process of it is killed afterwards. Without one, the figures are
compared with the contract's measured baseline (2 s, 25 submits/s, 1.6 GB).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from bench.report import Result, at_least, at_most, info, percentile
from bench.server import free_port

if TYPE_CHECKING:
    from bench.scenarios import Options

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# The contract note's Ray 2.60 head on this kind of machine (docs: shared/contracts).
BASELINE = {"latency_s": 2.0, "submits_per_s": 25.0, "rss_mb": 1600.0}
GOAL = 20.0  # times faster; and a tenth of the memory


@dataclass(frozen=True)
class Figures:
    latency_p50: float
    latencies: list[float]
    submits_per_s: float
    concurrent_submits_per_s: float


def _client(url: str, token: str | None) -> Any:
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {token}"} if token else None
    return JobSubmissionClient(url, headers=headers)


def _wait(client: Any, sid: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = str(client.get_job_status(sid).value)
        if status in TERMINAL:
            return status
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {sid} not finished within {timeout:g} s")
        time.sleep(0.01)


def measure(make: Callable[[], Any], runs: int, submits: int) -> Figures:
    client = make()
    _wait(client, client.submit_job(entrypoint="echo warm-up"))
    latencies = []
    for _ in range(runs):
        started = time.perf_counter()
        status = _wait(client, client.submit_job(entrypoint="echo hi"))
        latencies.append(time.perf_counter() - started)
        if status != "SUCCEEDED":
            raise RuntimeError(f"`echo hi` ended {status}")
    started = time.perf_counter()
    for _ in range(submits):
        client.submit_job(entrypoint="true")
    rate = submits / (time.perf_counter() - started)
    return Figures(percentile(latencies, 0.5), latencies, rate, _concurrent(make, submits))


def _concurrent(make: Callable[[], Any], submits: int, threads: int = 8) -> float:
    """Submits/s from `threads` clients at once (each made before the clock starts)."""
    clients = [make() for _ in range(threads)]
    share = max(submits // threads, 1)

    def run(client: Any) -> None:
        for _ in range(share):
            client.submit_job(entrypoint="true")

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, clients))
    return share * threads / (time.perf_counter() - started)


# ---- jobyard ----------


def _jobyard(options: Options, runs: int, submits: int) -> tuple[Figures, float, float]:
    port = free_port()
    with options.server("ray", ray_port=str(port)) as server:
        _wait_answering(f"http://127.0.0.1:{port}", server.target.token)
        time.sleep(1)
        idle = server.rss_mb()
        url, token = f"http://127.0.0.1:{port}", server.target.token
        figures = measure(lambda: _client(url, token), runs, submits)
        return figures, idle, server.rss_mb()


def _wait_answering(url: str, token: str | None, timeout: float = 120) -> None:
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/api/version", headers=headers, timeout=2).ok:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer /api/version within {timeout:g} s")


# ---- a real Ray head ----------


def _ray_bin() -> str | None:
    """A `ray` whose install has the dashboard (the job API): plain `ray` has not."""
    chosen = os.environ.get("BENCH_RAY") or str(Path(sys.executable).with_name("ray"))
    if not shutil.which(chosen):
        return None
    python = Path(chosen).with_name("python")
    check = [str(python), "-c", "import ray.dashboard.optional_deps"]
    ok = subprocess.run(check, capture_output=True, check=False).returncode == 0
    return chosen if ok else None


@dataclass
class RayHead:
    url: str
    temp_dir: Path
    session: int

    def processes(self) -> list[psutil.Process]:
        mine = []
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error, OSError):
                cmdline = " ".join(proc.info.get("cmdline") or [])
                if os.getsid(proc.pid) == self.session or str(self.temp_dir) in cmdline:
                    mine.append(proc)
        return [p for p in mine if p.pid != os.getpid()]

    def rss_mb(self) -> float:
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total / 1e6


@contextlib.contextmanager
def ray_head(ray: str) -> Iterator[RayHead]:
    temp_dir = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))
    dashboard = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every listener on 127.0.0.1
    }
    command = [
        ray, "start", "--head", "--node-ip-address", "127.0.0.1",
        "--port", str(free_port()), "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dashboard), "--ray-client-server-port", str(free_port()),
        "--num-cpus", "2", "--disable-usage-stats", "--temp-dir", str(temp_dir),
    ]  # fmt: skip
    starter = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    head = RayHead(f"http://127.0.0.1:{dashboard}", temp_dir, starter.pid)
    try:
        out, _ = starter.communicate(timeout=180)
        if starter.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{out.decode(errors='replace')[-2000:]}")
        _wait_answering(head.url, None)
        yield head
    finally:
        _kill(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _kill(head: RayHead) -> None:
    procs = head.processes()
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _gone, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)


# ---- the scenario ----------


def ray(options: Options) -> list[Result]:
    runs, submits = (10, 20) if options.quick else (20, 50)
    try:
        import ray.job_submission  # noqa: F401
    except ImportError:
        return [info("ray", "skipped", 0, "", "the ray client is not installed (pip install ray)")]
    jobyard, idle, after = _jobyard(options, runs, submits)
    results = [
        info("ray", "jobyard: submit -> SUCCEEDED, `echo hi`, p50", jobyard.latency_p50, "s",
             f"Ray's JobSubmissionClient, n={runs}; max {max(jobyard.latencies):.3f} s"),
        info("ray", "jobyard: submits accepted", jobyard.submits_per_s, "jobs/s",
             f"{submits} sequential submit_job calls, one client"),
        info("ray", "jobyard: submits accepted, 8 clients", jobyard.concurrent_submits_per_s,
             "jobs/s", f"{submits} submit_job calls from 8 threads, a client each"),
        info("ray", "jobyard: server RSS idle", idle, "MB", "fresh, Ray listener on"),
        info("ray", "jobyard: server RSS after the runs", after, "MB"),
    ]  # fmt: skip
    baseline = _head_figures(runs, submits, results)
    latency_ratio = baseline["latency_s"] / jobyard.latency_p50
    submit_ratio = jobyard.submits_per_s / baseline["submits_per_s"]
    where = baseline.get("where", "")
    results += [
        at_least("ray", "latency: Ray head / jobyard", latency_ratio, "x", GOAL, str(where)),
        at_least("ray", "submits/s: jobyard / Ray head", submit_ratio, "x", GOAL, str(where)),
        at_most("ray", "memory: jobyard / Ray head", after / baseline["rss_mb"], "x", 0.1,
                f"jobyard server RSS after the runs vs Ray head idle RSS {where}"),
    ]  # fmt: skip
    return results


def _head_figures(runs: int, submits: int, results: list[Result]) -> dict[str, Any]:
    """The same figures from a real Ray head, or the contract's baseline when none starts."""
    ray = _ray_bin()
    why = None if ray else "no `ray` of a ray[default] install (set BENCH_RAY to one)"
    if ray:
        try:
            with ray_head(ray) as head:
                time.sleep(10)  # let its dashboard modules settle, as the note measured idle
                idle = head.rss_mb()
                figures = measure(lambda: _client(head.url, None), runs, submits)
            results += [
                info("ray", "Ray head: submit -> SUCCEEDED, `echo hi`, p50", figures.latency_p50,
                     "s", f"same client, same run; max {max(figures.latencies):.3f} s"),
                info("ray", "Ray head: submits accepted", figures.submits_per_s, "jobs/s"),
                info("ray", "Ray head: submits accepted, 8 clients",
                     figures.concurrent_submits_per_s, "jobs/s"),
                info("ray", "Ray head: RSS of all its processes, idle", idle, "MB", "fresh"),
            ]  # fmt: skip
            return {
                "latency_s": figures.latency_p50,
                "submits_per_s": figures.submits_per_s,
                "rss_mb": idle,
                "where": "(Ray head measured in this run)",
            }
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            why = f"the Ray head did not start: {str(exc).splitlines()[0][:200]}"
    results.append(info("ray", "Ray head", 0, "", f"not measured: {why}"))
    return {**BASELINE, "where": "(Ray head: the contract note's baseline)"}
