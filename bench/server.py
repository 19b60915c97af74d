"""Start a real jobyard server as a subprocess on a free loopback port, in a temp home."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil


@dataclass
class Server:
    url: str
    token: str
    home: Path
    process: subprocess.Popen[bytes]

    def client(self, timeout: float = 60) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def rss_mb(self) -> float:
        return psutil.Process(self.process.pid).memory_info().rss / 2**20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_server(home: Path | None = None, **env: str) -> Iterator[Server]:
    """Serve from `home` (a new temp dir by default); stop it and every job process after."""
    with contextlib.ExitStack() as stack:
        if home is None:
            home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jobyard-bench-")))
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "jobyard",
            "server",
            "--port",
            str(port),
            "--home",
            str(home),
        ]
        environ = {**os.environ, **{f"JOBYARD_{k.upper()}": v for k, v in env.items()}}
        process = subprocess.Popen(
            command, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        stack.callback(_stop, process)
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, process)
        token = (home / "admin.token").read_text().strip()
        yield Server(url, token, home, process)


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError("server did not become healthy")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server, then kill every job process it started (they outlive it by design)."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        children = []
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for child in children:
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
