"""Shared fixtures: settings in a temp home, a live server, an HTTP client with the admin token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import LiveServer, make_settings, running_server

pytest_plugins = ["tests.plugins.postgres"]


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
