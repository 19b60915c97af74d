"""The training-job API's web terminal: a real shell in the pod over a WebSocket."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.helpers import LiveServer, make_settings, running_server, wait_for

TTL = 1.5  # seconds a terminal URL stays valid on this test server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("terminal") / "home"
    with running_server(make_settings(home, terminal_token_ttl_seconds=TTL)) as live:
        yield live


def _running_job(server: LiveServer, **extra: Any) -> dict[str, Any]:
    with server.client() as http:
        body = {"jobName": "shell-me", "command": ["sleep", "120"], **extra}
        created = http.post("/api/jobs/create", json=body).json()
        assert created["success"], created
        server.wait_state(created["data"]["jobId"], "RUNNING")
        job: dict[str, Any] = http.get(f"/api/jobs/{created['data']['jobId']}").json()["data"]
        return job


def _terminal_url(server: LiveServer, job: dict[str, Any], token: str | None = None) -> str:
    with server.client(token) as http:
        answer = http.get(f"/api/jobs/{job['jobId']}/pods/{job['pods'][0]['podName']}/webterminal")
        assert answer.status_code == 200, answer.text
        url: str = answer.json()["data"]["webTerminalUrl"]
        return url


def _stop(server: LiveServer, job: dict[str, Any]) -> None:
    with server.client() as http:
        http.post(f"/api/jobs/{job['jobId']}/stop")


class Screen:
    """What the terminal printed so far, and a way to wait for a pattern in it."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.text = ""
        self.kinds: list[type] = []  # str or bytes, per frame received

    def wait(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.text)
            if found:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} not seen within {timeout} s: {self.text!r}")
            try:
                self._take(self.ws.recv(timeout=left))
            except TimeoutError:
                continue

    def _take(self, frame: str | bytes) -> None:
        self.kinds.append(type(frame))
        self.text += frame if isinstance(frame, str) else frame.decode(errors="replace")

    def closed_code(self, timeout: float = 10.0) -> int | None:
        """Read until the server closes the socket; its close code."""
        deadline = time.monotonic() + timeout
        with pytest.raises(ConnectionClosed):
            while time.monotonic() < deadline:
                self._take(self.ws.recv(timeout=deadline - time.monotonic()))
        return self.ws.close_code

    def type(self, keys: str) -> None:
        self.ws.send(b"\x00" + keys.encode())


def test_a_terminal_is_a_shell_in_the_pod(server: LiveServer) -> None:
    job = _running_job(server, envs=[{"name": "FLAVOUR", "value": "mint"}])
    url = _terminal_url(server, job)
    assert url.startswith(f"ws://{server.url.removeprefix('http://')}/webterminal?token=")
    with connect(url) as ws:
        screen = Screen(ws)
        screen.type("echo id=$JOBYARD_JOB_ID flavour=$FLAVOUR cwd=$(pwd)\r")
        found = screen.wait(r"id=(\d+) flavour=(\w+) cwd=(\S+)\r\n")
        assert found.group(1) == str(job["id"])
        assert found.group(2) == "mint"
        assert found.group(3).endswith(f"/jobs/{job['id']}")
        # Resize through channel 4, then ask the terminal its size.
        ws.send(b"\x04" + json.dumps({"Height": 33, "Width": 111}).encode())
        screen.type("stty size\r")
        screen.wait(r"[\r\n]33 111\r\n")
        ws.send(b"\x04" + json.dumps({"Height": 40, "Width": 90}).encode())
        screen.type("stty size\r")
        screen.wait(r"[\r\n]40 90\r\n")
        ws.send(b"\x00\x00\x00")  # the client's heartbeat types nothing
        # Plain text frames are keystrokes too; output then comes back as text.
        assert set(screen.kinds) == {bytes}
        seen = len(screen.kinds)
        ws.send("echo sum=$((6*7))\r")
        screen.wait(r"sum=42\r\n")
        # (the prompt after `stty size` may still come as bytes; the answer comes as text)
        assert str in screen.kinds[seen:] and screen.kinds[-1] is str
    _stop(server, job)


def test_a_used_or_expired_token_is_refused(server: LiveServer) -> None:
    job = _running_job(server)
    url = _terminal_url(server, job)
    with connect(url) as ws:
        screen = Screen(ws)
        screen.type("exit\r")
        assert screen.closed_code() == 1000  # the shell ended: the socket closes normally
    with connect(url) as again:
        assert Screen(again).closed_code() == 1008
        assert again.close_reason == "terminal token is unknown, used or expired"
    with connect(url.split("?")[0]) as missing:
        assert Screen(missing).closed_code() == 1008
    late = _terminal_url(server, job)
    time.sleep(TTL + 0.2)  # let the token expire
    with connect(late) as ws:
        assert Screen(ws).closed_code() == 1008
    _stop(server, job)


def _shell_pid(screen: Screen) -> int:
    screen.type("echo shell=$$\r")
    return int(screen.wait(r"shell=(\d+)\r\n").group(1))


def _sleepers(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.info["cmdline"] and marker in proc.info["cmdline"]:
            found.append(proc)
    return found


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_closing_the_socket_kills_the_shell_and_its_children(server: LiveServer) -> None:
    job = _running_job(server)
    with connect(_terminal_url(server, job)) as ws:
        screen = Screen(ws)
        pid = _shell_pid(screen)
        # One child in the background (its own process group), one in the foreground.
        screen.type("sleep 987651 & sleep 987652\r")
        wait_for(lambda: len(_sleepers("987651") + _sleepers("987652")) == 2)
    wait_for(lambda: _gone(pid) and not _sleepers("987651") and not _sleepers("987652"))
    # The job itself is untouched.
    assert server.wait_state(job["jobId"], "RUNNING")["state"] == "RUNNING"
    _stop(server, job)


def test_the_shell_ends_when_the_job_ends(server: LiveServer) -> None:
    job = _running_job(server)
    with connect(_terminal_url(server, job)) as ws:
        screen = Screen(ws)
        pid = _shell_pid(screen)
        _stop(server, job)
        assert screen.closed_code() == 1000
        assert "terminal closed" in screen.text
    wait_for(lambda: _gone(pid))


def test_no_terminal_into_a_finished_pod_or_another_users_job(server: LiveServer) -> None:
    job = _running_job(server)
    bob = asyncio.run(server.runtime.auth.create_user_token("bob-terminal"))
    path = f"/api/jobs/{job['jobId']}/pods/{job['pods'][0]['podName']}/webterminal"
    with server.client(bob) as http:
        refused = http.get(path)
        assert refused.status_code == 404
        assert refused.json()["success"] is False
    with server.client() as http:
        # Behind a TLS proxy (on loopback, so trusted) the URL is wss:// on the proxy's host.
        proxied = http.get(path, headers={"X-Forwarded-Proto": "https", "Host": "gpu.example"})
        assert proxied.json()["data"]["webTerminalUrl"].startswith(
            "wss://gpu.example/webterminal?token="
        )
        # A pod is named by its name or its index.
        by_index = http.get(f"/api/jobs/{job['jobId']}/pods/0/webterminal")
        assert by_index.json()["data"]["webTerminalUrl"].startswith("ws://")
        unknown = http.get(f"/api/jobs/{job['jobId']}/pods/nope-worker-7/webterminal")
        assert unknown.status_code == 404
        assert "nope-worker-7" in unknown.json()["message"]
        _stop(server, job)
        server.wait_state(job["jobId"], "STOPPED")
        finished = http.get(path)
        assert finished.status_code == 409
        assert "not running" in finished.json()["message"]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_the_token_is_not_logged(server: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    job = _running_job(server)
    url = _terminal_url(server, job)
    token = url.split("token=")[1]
    # uvicorn logs each WebSocket with its query string (on a logger that does not propagate).
    uvicorn_log, collect = logging.getLogger("uvicorn.error"), _Collect()
    level = uvicorn_log.level
    uvicorn_log.addHandler(collect)
    uvicorn_log.setLevel(logging.INFO)
    try:
        with caplog.at_level("INFO"), connect(url) as ws:
            screen = Screen(ws)
            screen.type("exit\r")
            screen.closed_code()
    finally:
        uvicorn_log.removeHandler(collect)
        uvicorn_log.setLevel(level)
    logged = caplog.text + "\n".join(collect.lines)
    assert "WebSocket /webterminal?token=<redacted>" in logged
    assert token not in logged
    with server.client() as http:
        events = http.get(f"/api/jobs/{job['jobId']}/events").json()["data"]["events"]
    opened = [e for e in events if e["reason"] == "WebTerminal"]
    assert len(opened) == 1
    assert opened[0]["message"] == f"admin opened a terminal into {job['pods'][0]['podName']}"
    assert token not in str(events)
    for path in Path(server.settings.home).rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    _stop(server, job)
