"""Shared fixtures: settings in a temp home, a live server, an HTTP client with the admin token."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers import LiveServer, make_settings, running_server

pytest_plugins = ["tests.plugins.postgres"]

_REAL_HOME = os.environ.get("HOME", "")


def pytest_configure(config: pytest.Config) -> None:
    """Jobs, their terminals and the CLI under test get an empty HOME: an interactive shell must
    not run this machine's ~/.bashrc (pyenv's prompt hook in one waits 60 s on a lock that a
    killed shell left behind), and no test reads or writes the developer's own dotfiles."""
    if getattr(config, "workerinput", None) is None and "JOBYARD_TEST_HOME" not in os.environ:
        os.environ["JOBYARD_TEST_HOME"] = tempfile.mkdtemp(prefix="jobyard-test-home-")
    home = os.environ.get("JOBYARD_TEST_HOME") or tempfile.mkdtemp(prefix="jobyard-test-home-")
    os.environ["HOME"] = home
    if _REAL_HOME and home != _REAL_HOME:  # the tool caches that live under the real home
        os.environ.setdefault("PLAYWRIGHT_BROWSERS_PATH", f"{_REAL_HOME}/.cache/ms-playwright")
        os.environ.setdefault("npm_config_cache", f"{_REAL_HOME}/.npm")


def pytest_unconfigure(config: pytest.Config) -> None:
    if getattr(config, "workerinput", None) is None and "JOBYARD_TEST_HOME" in os.environ:
        shutil.rmtree(os.environ.pop("JOBYARD_TEST_HOME"), ignore_errors=True)
        os.environ["HOME"] = _REAL_HOME


@pytest.fixture(autouse=True)
def _no_job_outlives_its_test(tmp_path: Path) -> Iterator[None]:
    """Tasks outlive their server by design (restarts); a test's own must not outlive the test.
    Afterwards, every process group of a job that runs in the test's own temp directory is
    killed (servers of module-scoped fixtures live elsewhere, and their jobs go on)."""
    started = time.time() - 1
    yield
    root = str(tmp_path)
    groups: set[int] = set()
    for proc in psutil.process_iter(["create_time"]):
        with contextlib.suppress(psutil.Error, OSError):
            if proc.info["create_time"] < started or proc.pid == os.getpid():
                continue
            if "JOBYARD_JOB_ID" in proc.environ() and proc.cwd().startswith(root):
                groups.add(os.getpgid(proc.pid))
    for group in groups - {os.getpgid(0)}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def live_server(home: Path) -> Iterator[LiveServer]:
    with running_server(make_settings(home)) as server:
        yield server


@pytest.fixture
def api(live_server: LiveServer) -> Iterator[httpx.Client]:
    with live_server.client() as client:
        yield client
