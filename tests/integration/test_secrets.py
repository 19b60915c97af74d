"""Secrets never leak: a real server process at debug level with its access log on; the test
makes API tokens, jobs with an SSH password and a port token, uses every one of them (and wrong
ones), then greps the server's whole output, every event, every error answer and another
user's answers for each secret, literally, URL-encoded and base64-encoded. Another sends a
token in every credential-looking query parameter and header, to both listeners and through the
Ray WebSocket log tail, and greps the debug log for it."""

from __future__ import annotations

import asyncio
import base64
import random
import signal
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest
from websockets.sync.client import connect

from tests.helpers import wait_for
from tests.integration.server_process import ServerProcess, free_port

HTTP_APP = f"exec {sys.executable} -m http.server $JOBYARD_PORT_{{port}} --bind 127.0.0.1"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    low = random.randrange(30000, 59000)
    proc = ServerProcess(
        tmp_path / "home",
        tmp_path / "server.log",
        JOBYARD_LOG_LEVEL="debug",
        JOBYARD_ACCESS_LOG="true",
        JOBYARD_GATEWAY_PORT_RANGE=f"{low}-{low + 63}",
        JOBYARD_GATEWAY_SWEEP_SECONDS="0.05",
    )
    proc.start()
    yield proc
    proc.stop()


def _forms(secret: str) -> set[str]:
    raw = secret.encode()
    return {
        secret,
        urllib.parse.quote(secret, safe=""),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }


def _access(server: ServerProcess, token: str, job_id: int) -> dict[str, Any]:
    with server.client(token) as http:

        def ready() -> dict[str, Any] | None:
            found: dict[str, Any] = http.get(f"/api/v1/jobs/{job_id}/access").json()
            return found if len(found.get("urls", {})) == 2 else None

        return wait_for(ready, timeout=20)


async def _ssh(port: int, user: str, password: str) -> str:
    async with asyncssh.connect(
        "127.0.0.1", port, username=user, password=password, known_hosts=None
    ) as conn:
        return str((await conn.run("echo in-the-task", check=False)).stdout)


async def _ssh_refused(port: int, user: str, password: str) -> None:
    with pytest.raises(asyncssh.PermissionDenied):
        await _ssh(port, user, password)


def test_no_secret_reaches_logs_events_errors_or_other_users(server: ServerProcess) -> None:
    answers: list[str] = []  # every answer a secret must not appear in
    with server.client() as admin:
        alice = admin.post("/api/v1/users", json={"name": "alice"}).json()["token"]
        bob = admin.post("/api/v1/users", json={"name": "bob"}).json()["token"]
        second = admin.post("/api/v1/tokens", json={"user": "alice", "name": "ci"}).json()
        expiring = admin.post("/api/v1/tokens", json={"user": "alice", "expires_in": 600}).json()
    secrets = {"admin": server.token, "alice": alice, "bob": bob}
    secrets |= {"second": second["token"], "expiring": expiring["token"]}

    http_port, ssh_port = free_port(), free_port()
    body = {
        "entrypoint": HTTP_APP.format(port=http_port),
        "ports": [{"port": http_port, "protocol": "http"}, {"port": ssh_port, "protocol": "ssh"}],
    }
    with server.client(alice) as as_alice:
        job = as_alice.post("/api/v1/jobs", json=body).json()
        server.wait_state(job["id"], "RUNNING")
        access = _access(server, alice, job["id"])
        secrets["ssh_password"] = access["ssh"]["password"]
        secrets["port_token"] = access["token"]
        # every credential at work, and wrong ones beside them
        for token in (second["token"], expiring["token"]):
            with server.client(token) as other:
                assert other.get("/api/v1/whoami").json()["name"] == "alice"
        http_url = next(u[0] for u in access["urls"].values() if u[0].startswith("http"))
        ssh_url = next(u[0] for u in access["urls"].values() if u[0].startswith("ssh"))

        def served() -> httpx.Response | None:  # the token in the query string
            answer = httpx.get(http_url, timeout=10)  # 502 until the app listens
            return answer if answer.status_code != 502 else None

        answer = wait_for(served, timeout=20)
        assert answer.status_code == 200, answer.text
        plain = http_url.split("?")[0]
        answers.append(httpx.get(plain, timeout=10).text)
        answers.append(httpx.get(plain + "?token=" + secrets["alice"], timeout=10).text)
        gateway = httpx.URL(ssh_url).port or 0
        assert "in-the-task" in asyncio.run(
            _ssh(gateway, job["display_id"], access["ssh"]["password"])
        )
        asyncio.run(_ssh_refused(gateway, job["display_id"], secrets["port_token"]))
        answers.append(as_alice.delete(f"/api/v1/tokens/{second['id']}").text)
    with server.client(second["token"]) as revoked:  # a revoked token: a 401 naming nothing
        answers.append(revoked.get("/api/v1/jobs").text)
    with server.client(secrets["port_token"]) as wrong:  # a port token is no API token
        answers.append(wrong.get("/api/v1/jobs").text)
    with server.client(bob) as as_bob:  # another user: nothing of alice's
        for path in (
            "/api/v1/jobs",
            f"/api/v1/jobs/{job['id']}",
            f"/api/v1/jobs/{job['id']}/access",
            "/api/v1/tokens",
            f"/api/v1/jobs/{job['id']}/events",
        ):
            answers.append(as_bob.get(path).text)
        answers.append(as_bob.post("/api/v1/tokens", json={"user": "alice"}).text)
    with server.client() as admin:
        answers.append(admin.get("/api/v1/tokens").text)
        answers.append(admin.get("/api/v1/users").text)
        answers.append(admin.post("/api/v1/tokens", json={"expires_in": -1}).text)
        answers.append(admin.get("/api/v1/jobs").text)
        for item in admin.get("/api/v1/jobs").json()["items"]:
            answers.append(admin.get(f"/api/v1/jobs/{item['id']}/events").text)
            answers.append(admin.get(f"/api/v1/jobs/{item['id']}/logs").text)
        admin.post(f"/api/v1/jobs/{job['id']}/stop")
    server.wait_state(job["id"], "STOPPED")
    assert server.signal(signal.SIGTERM) < 10
    assert all(len(secret) >= 16 for secret in secrets.values()), secrets.keys()
    log = server.output()
    assert "GET /api/v1" in log, "the access log was not captured"
    leaks = [
        (name, where)
        for name, secret in secrets.items()
        for form in _forms(secret)
        for where, text in [("server output", log)]
        + [(f"answer {i}", a) for i, a in enumerate(answers)]
        if form in text
    ]
    assert leaks == []


CREDENTIAL_PARAMS = (
    *("api_key", "apikey", "key", "token", "access_token", "password", "secret"),
    *("auth", "session", "client_secret"),
)


@pytest.fixture
def ray_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """At debug level, with the access log and the Ray listener (its WebSocket handshake logs
    every header at debug level)."""
    proc = ServerProcess(
        tmp_path / "home", tmp_path / "server.log", JOBYARD_ACCESS_LOG="true"
    )  # server_process.FAST: JOBYARD_LOG_LEVEL=debug
    proc.ray_port = free_port()
    proc.start()
    yield proc
    proc.stop()


def _tail(url: str, headers: dict[str, str]) -> str:
    with connect(url, additional_headers=headers, open_timeout=10) as ws:
        return "".join(str(message) for message in ws)


def test_no_token_in_the_debug_log_from_queries_headers_or_the_ray_websocket(
    ray_server: ServerProcess,
) -> None:
    server = ray_server
    ray = f"http://127.0.0.1:{server.ray_port}"
    with server.client() as admin:
        token = admin.post("/api/v1/users", json={"name": "carol"}).json()["token"]
    with server.client(token) as carol:
        job = carol.post("/api/v1/jobs", json={"entrypoint": "echo tailed"}).json()
    server.wait_state(job["id"], "SUCCEEDED")
    bearer = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for name in CREDENTIAL_PARAMS:  # in the query string, and in the header beside it
            http.get("/api/v1/jobs", params={name: token, "limit": 5}, headers=bearer)
            http.get(f"{ray}/api/jobs/", params={name: token}, headers=bearer)
        assert http.get("/api/v1/whoami", headers=bearer).json()["name"] == "carol"
        http.get("/api/v1/whoami", headers={"Authorization": f"Bearer {token}x"})  # a 401
        http.get(f"{ray}/api/version", headers={"X-Ray-Authorization": f"Bearer {token}"})
        http.get(f"{ray}/api/version", headers={"Cookie": f"ray-authentication-token={token}"})
    ws = f"ws://127.0.0.1:{server.ray_port}/api/jobs/{job['display_id']}/logs/tail"
    assert "tailed" in _tail(ws, bearer)
    assert "tailed" in _tail(f"{ws}?token={token}", bearer)
    assert server.signal(signal.SIGTERM) < 10
    log = server.output()
    assert "GET /api/v1/jobs?" in log, "the access log was not captured"
    assert "authorization: <redacted>" in log.lower(), "the handshake's headers were not logged"
    assert [form for form in _forms(token) if form in log] == []
