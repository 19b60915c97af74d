"""`jobyard server` takes its settings from options, JOBYARD_* variables and a TOML file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.helpers import wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_server(
    env: dict[str, str], *args: str, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "jobyard", "server", *args]
    return subprocess.run(
        command,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def serves_on(port: int, env: dict[str, str], *args: str) -> bool:
    command = [sys.executable, "-m", "jobyard", "server", *args]
    process = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/v1/health").status_code == 200
            except httpx.HTTPError:
                return False

        return bool(wait_for(healthy, timeout=20))
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_port_comes_from_the_toml_file_then_the_environment_then_the_option(tmp_path: Path) -> None:
    toml_port, env_port, option_port = free_port(), free_port(), free_port()
    config = tmp_path / "jobyard.toml"
    config.write_text(f"port = {toml_port}\nstop_grace_seconds = 3\n")
    home = str(tmp_path / "home")
    assert serves_on(toml_port, {"JOBYARD_CONFIG": str(config)}, "--home", home)
    assert serves_on(
        env_port, {"JOBYARD_CONFIG": str(config), "JOBYARD_PORT": str(env_port)}, "--home", home
    )
    assert serves_on(
        option_port, {"JOBYARD_PORT": str(env_port)}, "--home", home, "--port", str(option_port)
    )


def test_bad_settings_are_reported_without_a_traceback(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    bogus = tmp_path / "bogus.toml"
    bogus.write_text("bogus = 1\n")
    for env, message in (
        ({"JOBYARD_PORT": "eighty"}, "setting port"),
        ({"JOBYARD_CONFIG": str(bogus)}, "setting bogus"),
        ({"JOBYARD_CONFIG": str(tmp_path / "missing.toml")}, "not a file"),
    ):
        result = run_server(env, "--home", home)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr


def test_a_second_server_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    from tests.helpers import make_settings, running_server

    with running_server(make_settings(tmp_path / "home")) as first:
        result = run_server({}, "--home", str(first.settings.home), "--port", str(free_port()))
        assert result.returncode == 1, result.stderr
        assert "another jobyard server" in result.stderr and "Traceback" not in result.stderr
        with first.client() as http:  # the first one is unharmed
            assert http.get("/api/v1/whoami").status_code == 200


def test_a_server_refused_for_a_busy_port_creates_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        home = tmp_path / "home"
        result = run_server({}, "--home", str(home), "--port", str(port), "--ray-port", "0")
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not home.exists()  # no data directory, database or token before the port is had


def test_the_startup_log_names_each_listener_once(tmp_path: Path) -> None:
    port, ray_port = free_port(), free_port()
    command = [sys.executable, "-m", "jobyard", "server", "--home", str(tmp_path / "home")]
    command += ["--port", str(port), "--ray-port", str(ray_port)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (tmp_path / "home" / "server.url").exists(), timeout=20)
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/api/v1/health").is_success, 20)
    finally:
        process.send_signal(2)  # Ctrl-C: a clean shutdown
        _out, log = process.communicate(timeout=30)
    assert log.count(f"http://127.0.0.1:{port}") == 1, log
    assert log.count(f"http://127.0.0.1:{ray_port}") == 1, log
    assert log.count("Started server process") == 1, log
    assert log.count("Finished server process") == 1, log
