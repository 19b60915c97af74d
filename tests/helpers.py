"""Plain helpers for tests: a real server on a free loopback port, and deadline polling."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import uvicorn

from jobyard.config import QueueSpec, Settings
from jobyard.executors.base import Executor, Handle, TaskReport
from jobyard.executors.usage import GpuSource
from jobyard.model import TaskState
from jobyard.server import Runtime, build, create_server_app, listen, ray_listener

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll until `predicate()` is truthy; return its value or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value: {value!r})")
        time.sleep(interval)


ENDED = frozenset({TaskState.EXITED, TaskState.LOST})


async def wait_report(
    executor: Executor,
    handle: Handle,
    *,
    until: frozenset[TaskState] | set[TaskState] = ENDED,
    timeout: float = 30,
) -> TaskReport:
    """Poll one task until its state is in `until` (by default: ended); its report."""
    deadline = time.monotonic() + timeout
    while True:
        (report,) = await executor.poll([handle])
        if report.state in until:
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"task did not reach {until} in time (last: {report})")
        await asyncio.sleep(0.05)


def with_default_signals(argv: list[str]) -> list[str]:
    """`argv` run with no signal blocked and SIGINT at its default, as from a terminal. A test
    process can have SIGINT ignored or blocked (a background CI shell, a library's threads), and
    a child inherits both, so a Ctrl-C the test sends would not reach the CLI under test."""
    code = (
        "import os, signal, sys; signal.pthread_sigmask(signal.SIG_SETMASK, []); "
        "signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", code, *argv]


@dataclass
class LiveServer:
    url: str
    token: str
    settings: Settings
    runtime: Runtime
    ray_url: str = ""  # the Ray job API's listener, when running_server(..., ray=True)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def wait_state(self, ref: str | int, *states: str, timeout: float = 15.0) -> dict[str, Any]:
        with self.client() as http:

            def done() -> dict[str, Any] | None:
                job: dict[str, Any] = http.get(f"/api/v1/jobs/{ref}").json()
                return job if job["state"] in states else None

            return wait_for(done, timeout)


def make_settings(home: Any, **overrides: Any) -> Settings:
    defaults: dict[str, Any] = {
        "home": home,
        "port": 0,
        "stop_grace_seconds": 2.0,
        "reconcile_interval_seconds": 0.2,
        "cpus": 8,
        "memory_mib": 16384,
        "gpus": [],
        "ray_port": 0,  # off: parallel tests never race for 8265 (running_server(ray=True))
        # No containers unless a test asks (container_support.py): an image is refused the same
        # way whether or not this machine has podman.
        "container_runtime": "none",
        # Three queues on the one pool, so tests can tell queues apart.
        "queues": [
            QueueSpec(name="default"),
            QueueSpec(name="gpu", priority=10),
            QueueSpec(name="batch", priority=-10),
        ],
    }
    return Settings(**{**defaults, **overrides})


@contextlib.contextmanager
def running_server(
    settings: Settings, *, ray: bool = False, gpus: GpuSource | None = None
) -> Iterator[LiveServer]:
    """Serve jobyard (uvicorn, in a thread) on 127.0.0.1 and a free port; stop it afterwards.
    With `ray`, also the Ray job API on another free port, in the same event loop; `gpus`:
    where usage samples get GPU figures (tests/usage_support.py has a scripted one)."""
    runtime = build(settings, gpus=gpus)
    listeners = [ray_listener(runtime, listen("127.0.0.1", 0))] if ray else []
    config = uvicorn.Config(
        create_server_app(runtime, listeners),
        host="127.0.0.1",
        port=settings.port,
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="jobyard-test-server", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), timeout=20)
        if not server.started:
            raise RuntimeError("server did not start")
        port = server.servers[0].sockets[0].getsockname()[1]
        token = settings.admin_token_path.read_text().strip()
        ray_url = f"http://127.0.0.1:{listeners[0].port}" if listeners else ""
        yield LiveServer(f"http://127.0.0.1:{port}", token, settings, runtime, ray_url)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
