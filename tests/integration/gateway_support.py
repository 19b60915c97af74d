"""Shared by the gateway tests: a server with its own gateway range, jobs with ports."""

from __future__ import annotations

import contextlib
import random
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import LiveServer, make_settings, running_server, wait_for

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_range() -> str:
    """A random stretch of ports for this test's gateway: parallel workers rarely meet, and
    when they do, the allocator skips ports it cannot bind."""
    low = random.randrange(30000, 59000)
    return f"{low}-{low + 63}"


@contextlib.contextmanager
def gateway_server(home: Path, **overrides: Any) -> Iterator[LiveServer]:
    settings = make_settings(
        home, gateway_port_range=gateway_range(), gateway_sweep_seconds=0.05, **overrides
    )
    with running_server(settings) as server:
        yield server


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def submit(http: httpx.Client, entrypoint: Any, ports: list[dict[str, Any]]) -> dict[str, Any]:
    response = http.post("/api/v1/jobs", json={"entrypoint": entrypoint, "ports": ports})
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def access_of(server: LiveServer, job: dict[str, Any]) -> dict[str, Any]:
    """The job's access once every declared port has a URL whose gateway port listens."""
    with server.client() as http:

        def ready() -> dict[str, Any] | None:
            found: dict[str, Any] = http.get(f"/api/v1/jobs/{job['id']}/access").json()
            urls = found.get("urls", {})
            if len(urls) < len(job["spec"]["ports"]):
                return None
            ports = [gateway_port(u[0]) for u in urls.values()]
            return found if all(accepts(p) for p in ports) else None

        return wait_for(ready, timeout=15)


def gateway_port(url: str) -> int:
    return int(httpx.URL(url).port or 0)


def stop_and_wait_closed(server: LiveServer, job: dict[str, Any], ports: list[int]) -> None:
    with server.client() as http:
        http.post(f"/api/v1/jobs/{job['id']}/stop")
    server.wait_state(job["id"], "STOPPED", "FAILED", "SUCCEEDED")
    wait_for(lambda: not any(accepts(p) for p in ports), timeout=10)
    wait_for(lambda: not set(ports) & set(server.runtime.gateway.ports), timeout=10)
