"""A real jobyard server as a subprocess on a free loopback port, in a fresh temp home.

Stopping it (SIGTERM, then wait) is followed by killing every job process it left behind:
job processes outlive the server by design, so they are found as its descendants (taken
before the SIGTERM) and as any process whose working directory lies in the server's home.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.client import Target
from bench.profile import Profiler

HOST = "127.0.0.1"


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds so far: the server's own, its reaped job processes', the whole machine's."""

    server: float
    jobs: float
    machine: float
    at: float

    @classmethod
    def take(cls, pid: int) -> CpuSnapshot:
        own, total = psutil.Process(pid).cpu_times(), psutil.cpu_times()
        busy = sum(total) - total.idle - getattr(total, "iowait", 0.0)
        return cls(
            own.user + own.system,
            own.children_user + own.children_system,
            busy,
            time.monotonic(),
        )

    def describe_since(self, before: CpuSnapshot, *, submitted: int = 0, finished: int = 0) -> str:
        """Shares of a core since `before`; with counts, also CPU per job: the server's per job
        `submitted`, its jobs' own processes' per job `finished` (reaped ones only count)."""
        wall = max(self.at - before.at, 1e-9)
        server, jobs = self.server - before.server, self.jobs - before.jobs
        text = (
            f"CPU: server {server / wall:.0%} of a core, "
            f"its finished jobs {jobs / wall:.0%}, machine "
            f"{(self.machine - before.machine) / wall / (os.cpu_count() or 1):.0%} of "
            f"{os.cpu_count()} cores"
        )
        if submitted > 0 and finished > 0:
            text += (
                f" (per job: server {server / submitted * 1000:.2f} ms, the job's own "
                f"processes {jobs / finished * 1000:.2f} ms)"
            )
        return text


@dataclass
class Server:
    target: Target
    home: Path
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_mb(self) -> float:
        return psutil.Process(self.pid).memory_info().rss / 1e6

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the server process itself, all threads."""
        times = psutil.Process(self.pid).cpu_times()
        return times.user + times.system

    def cpu(self) -> CpuSnapshot:
        return CpuSnapshot.take(self.pid)

    def job_processes(self) -> list[psutil.Process]:
        """Every process the server started that is still alive (supervisors and tasks)."""
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_server(
    home: Path | None = None,
    profile: Path | None = None,
    *,
    gil_only: bool = False,
    expect_leftovers: bool = False,
    settings: Mapping[str, str] | None = None,
) -> Iterator[Server]:
    """Serve from `home` (a new temp dir by default) with JOBYARD_<NAME> = `settings`; profile
    it with py-spy into `profile` if given; stop it and every job process afterwards (saying
    so on stderr, unless jobs were `expect_leftovers` to be running still)."""
    with contextlib.ExitStack() as stack:
        if home is None:
            home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jobyard-bench-")))
        port = free_port()
        process = _spawn(home, port, settings or {})
        stack.callback(_stop, process, home, expect_leftovers)
        _wait_healthy(port, process, home)
        if profile is not None:
            stack.enter_context(Profiler(process.pid, profile, gil_only=gil_only))
        token = (home / "admin.token").read_text().strip()
        yield Server(Target(HOST, port, token), home, process)


def _spawn(home: Path, port: int, settings: Mapping[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "jobyard", "server", "--port", str(port), "--home", str(home)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBYARD_")}
    env.update({f"JOBYARD_{k.upper()}": v for k, v in settings.items()})
    log = open(home / "server.log", "ab")  # noqa: SIM115 - the child holds it; closed below
    try:
        return subprocess.Popen(command, env=env, stdout=log, stderr=log)
    finally:
        log.close()


def _wait_healthy(
    port: int, process: subprocess.Popen[bytes], home: Path, timeout: float = 60
) -> None:
    request = f"GET /api/v1/health HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{_log_tail(home)}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1) as sock:
            sock.sendall(request)
            if sock.recv(64).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.05)
    raise RuntimeError(f"server did not become healthy in {timeout:g} s:\n{_log_tail(home)}")


def _log_tail(home: Path) -> str:
    try:
        return (home / "server.log").read_text(errors="replace")[-3000:]
    except OSError:
        return "(no server log)"


def _stop(process: subprocess.Popen[bytes], home: Path, expected: bool = False) -> None:
    """SIGTERM the server and wait; then kill what it left running, and make sure it is gone."""
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        print("warning: the server ignored SIGTERM for 30 s; killing it", file=sys.stderr)
        process.kill()
        process.wait()
    leftovers = {p for p in descendants if _alive(p)} | set(processes_in(home))
    if leftovers and not expected:
        print(f"note: killing {len(leftovers)} job process(es) left running", file=sys.stderr)
    for proc in leftovers:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _gone, alive = psutil.wait_procs(list(leftovers), timeout=10)
    if alive or processes_in(home):
        raise RuntimeError(f"job processes survived the end of the server: {alive}")


def _alive(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    return False


def processes_in(home: Path) -> list[psutil.Process]:
    """Live processes whose working directory is inside `home` (a job's task or supervisor)."""
    inside, prefix = [], f"{home.resolve()}{os.sep}"
    for proc in psutil.process_iter(["cwd"]):
        cwd = proc.info.get("cwd")
        if cwd and f"{cwd}{os.sep}".startswith(prefix) and proc.pid != os.getpid() and _alive(proc):
            inside.append(proc)
    return inside
