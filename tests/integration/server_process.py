"""`python -m jobyard server` as a real subprocess on a free loopback port: start it, signal or
kill it, start it again on the same data directory, and read what it logged."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import wait_for

FAST = {
    "JOBYARD_RECONCILE_INTERVAL_SECONDS": "0.2",
    "JOBYARD_STOP_GRACE_SECONDS": "2",
    "JOBYARD_CPUS": "64",
    "JOBYARD_MEMORY_MIB": "65536",
    "JOBYARD_GPUS": "[]",
    "JOBYARD_LOG_LEVEL": "debug",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One jobyard server process at a time over `home`; its output goes to `log_path`."""

    def __init__(self, home: Path, log_path: Path, **env: str) -> None:
        self.home = home
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **FAST, **env}
        self.env.pop("JOBYARD_CONFIG", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.task_pids: list[int] = []  # tasks a test started: killed when it ends
        self.ray_port = 0  # the Ray job API's listener: off unless a test gives it a port

    @property
    def token(self) -> str:
        return (self.home / "admin.token").read_text().strip()

    def start(self, timeout: float = 30.0) -> float:
        """Start and wait until it answers; returns how long that took."""
        began = time.monotonic()
        command = [sys.executable, "-m", "jobyard", "server", "--home", str(self.home)]
        command += ["--port", str(self.port), "--ray-port", str(self.ray_port)]
        command += ["--host", "127.0.0.1"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.home.parent
            )
        wait_for(self._ready, timeout=timeout, interval=0.05)
        return time.monotonic() - began

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}: {self.output()}")
        try:
            return httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def signal(self, sig: signal.Signals, timeout: float = 15.0) -> float:
        """Send `sig`; wait for the process to end; returns how long it took."""
        assert self.proc is not None
        began = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=timeout)
        return time.monotonic() - began

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.signal(signal.SIGTERM, timeout=15)
            except subprocess.TimeoutExpired:
                self.kill9()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, token: str | None = None, **options: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **options)

    def job(self, ref: int | str) -> dict[str, Any]:
        with self.client() as http:
            job: dict[str, Any] = http.get(f"/api/v1/jobs/{ref}").json()
            return job

    def wait_state(self, ref: int | str, *states: str, timeout: float = 30.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            job = self.job(ref)
            return job if job["state"] in states else None

        return wait_for(reached, timeout=timeout, interval=0.05)


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
