"""The HTTP port proxy with real clients: token by query, cookie and bearer; WebSocket echo."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
from websockets.sync.client import connect

from jobyard.errors import ExecutorRefused
from jobyard.executors.local.executor import LocalExecutor
from jobyard.model import JobSpec
from jobyard.service import JobRequest, JobService, User
from jobyard.service.access import AccessService
from jobyard.store.db import Database, migrate
from tests.helpers import make_settings, wait_for
from tests.integration.gateway_support import (
    PYTHON,
    access_of,
    free_port,
    gateway_port,
    gateway_server,
    stop_and_wait_closed,
    submit,
)

HTTP_SERVER = (
    f"echo hello from the job > hello.txt; exec {PYTHON} -m http.server $PORT --bind 127.0.0.1"
)

WS_ECHO = """
import os
from websockets.sync.server import serve

def echo(ws):
    for message in ws:
        ws.send("echo:" + message)

with serve(echo, "127.0.0.1", int(os.environ["PORT"])) as server:
    server.serve_forever()
"""


def _ready(port: int, path: str = "/") -> None:
    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code < 500
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=20)


def test_http_port_needs_the_token_and_nothing_reaches_the_job_without_it(home: Path) -> None:
    with gateway_server(home) as server, server.client() as http:
        target = free_port()
        job = submit(http, HTTP_SERVER, [{"port": target, "protocol": "http"}])
        other = submit(http, "sleep 60", [{"port": free_port(), "protocol": "http"}])
        server.wait_state(job["id"], "RUNNING")
        found = access_of(server, job)
        url = found["urls"][f"port_{target}"][0]
        token = found["token"]
        assert url.startswith("http://127.0.0.1:") and url.endswith(f"/?token={token}")
        port = gateway_port(url)
        _ready(target, "/hello.txt")
        base = f"http://127.0.0.1:{port}"
        other_token = access_of(server, other)["token"]

        refused = [
            httpx.get(f"{base}/refused-without-token"),
            httpx.get(f"{base}/refused-wrong-token", params={"token": "nope"}),
            httpx.get(f"{base}/refused-other-job", params={"token": other_token}),
            httpx.get(f"{base}/refused-bad-bearer", headers={"Authorization": "Bearer x"}),
        ]
        assert [r.status_code for r in refused] == [401, 401, 401, 401]
        assert refused[0].json()["error"]["code"] == "unauthorized"

        with httpx.Client(base_url=base) as browser:  # keeps cookies, as a browser does
            first = browser.get("/hello.txt", params={"token": token})
            assert first.status_code == 200 and first.text == "hello from the job\n"
            assert first.cookies.get(f"jobyard_port_{port}") == token
            again = browser.get("/hello.txt")  # a new request: the cookie alone opens it
            assert again.status_code == 200
        bearer = httpx.get(f"{base}/hello.txt", headers={"Authorization": f"Bearer {token}"})
        assert bearer.status_code == 200 and bearer.text == "hello from the job\n"

        logs = wait_for(lambda: http.get(f"/api/v1/jobs/{job['id']}/logs").text.count("GET"))
        log_text = http.get(f"/api/v1/jobs/{job['id']}/logs").text
        assert logs >= 3 and "/hello.txt" in log_text
        assert "refused" not in log_text  # no refused request reached the job
        assert token not in log_text  # the query token is taken out before the job sees it

        stop_and_wait_closed(server, job, [port])
        assert http.get(f"/api/v1/jobs/{job['id']}/access").json()["urls"] == {}
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/hello.txt", params={"token": token})


def test_websocket_echo_through_the_proxy(home: Path) -> None:
    with gateway_server(home) as server, server.client() as http:
        target = free_port()
        job = submit(http, [PYTHON, "-c", WS_ECHO], [{"port": target, "protocol": "http"}])
        server.wait_state(job["id"], "RUNNING")
        found = access_of(server, job)
        port = gateway_port(found["urls"][f"port_{target}"][0])
        _ready(target)
        with connect(f"ws://127.0.0.1:{port}/echo?token={found['token']}") as ws:
            for word in ("one", "two", "x" * 100_000):
                ws.send(word)
                assert ws.recv(timeout=10) == f"echo:{word}"
        with pytest.raises(Exception, match="401"):
            connect(f"ws://127.0.0.1:{port}/echo").close()
        stop_and_wait_closed(server, job, [port])


def test_ports_are_never_lent_twice_and_all_return_when_jobs_end(home: Path) -> None:
    _lend_and_return(home)


@pytest.mark.postgres
def test_ports_are_lent_and_returned_on_postgresql(home: Path, fresh_postgres_url: str) -> None:
    _lend_and_return(home, database_url=fresh_postgres_url)


def _lend_and_return(home: Path, **settings: str) -> None:
    with gateway_server(home, **settings) as server, server.client() as http:
        jobs = [
            submit(
                http,
                "sleep 60",
                [
                    {"port": free_port(), "protocol": "http"},
                    {"port": free_port(), "protocol": "ssh"},
                ],
            )
            for _ in range(4)
        ]
        ports: list[int] = []
        for job in jobs:
            server.wait_state(job["id"], "RUNNING")
            urls = access_of(server, job)["urls"]
            ports.extend(gateway_port(u[0]) for u in urls.values())
        assert len(ports) == len(set(ports)) == 8
        assert all(p in server.settings.gateway_ports for p in ports)
        for job in jobs:
            http.post(f"/api/v1/jobs/{job['id']}/stop")
        for job in jobs:
            server.wait_state(job["id"], "STOPPED")
        wait_for(lambda: server.runtime.gateway.ports == [], timeout=10)


class _NoPortsExecutor(LocalExecutor):
    capabilities: ClassVar[frozenset[str]] = frozenset({"shell"})


async def test_ports_are_refused_at_submit_where_the_executor_cannot_reach_them(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    migrate(settings.effective_database_url)
    db = Database(settings.effective_database_url)
    try:
        jobs = JobService(
            db, _NoPortsExecutor.from_settings(settings), settings, wake=lambda _: None
        )
        request = JobRequest(
            spec=JobSpec(entrypoint="true", ports=[{"port": 80, "protocol": "http"}])
        )
        with pytest.raises(ExecutorRefused, match="cannot reach a job's ports") as refused:
            await jobs.submit(User(id=1, name="admin", is_admin=True), request)
        assert refused.value.field == "ports"
        assert not AccessService(db, jobs, settings).supported()
    finally:
        db.close()


def test_a_large_download_arrives_whole_through_the_proxy(home: Path) -> None:
    with gateway_server(home) as server, server.client() as http:
        target = free_port()
        make = f"head -c 30000000 /dev/urandom > big.bin; exec {PYTHON} -m http.server $PORT"
        job = submit(http, f"{make} --bind 127.0.0.1", [{"port": target, "protocol": "http"}])
        server.wait_state(job["id"], "RUNNING")
        found = access_of(server, job)
        port = gateway_port(found["urls"][f"port_{target}"][0])
        _ready(target, "/big.bin")
        digest = hashlib.sha256()
        headers = {"Authorization": f"Bearer {found['token']}"}
        with httpx.stream("GET", f"http://127.0.0.1:{port}/big.bin", headers=headers) as got:
            assert got.status_code == 200
            for chunk in got.iter_raw(1 << 20):
                digest.update(chunk)
        on_disk = home / "jobs" / str(job["id"]) / "big.bin"
        assert digest.hexdigest() == hashlib.sha256(on_disk.read_bytes()).hexdigest()
