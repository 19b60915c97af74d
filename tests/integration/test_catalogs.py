"""Pools, queues and the environment catalog: what a submission may name, and what it gets."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from jobyard.config import EnvironmentSpec, PoolSpec, QueueSpec, Settings
from tests.helpers import LiveServer, make_settings, running_server


@pytest.fixture
def venv_dir(tmp_path: Path) -> Path:
    """A stand-in virtualenv: a bin/ directory with one program only it has."""
    root = tmp_path / "venv"
    (root / "bin").mkdir(parents=True)
    tool = root / "bin" / "only-in-venv"
    tool.write_text("#!/bin/sh\necho from-venv\n")
    tool.chmod(0o755)
    return root


@pytest.fixture
def server(home: Path, venv_dir: Path) -> Iterator[LiveServer]:
    settings = make_settings(
        home,
        pools=[PoolSpec(name="local")],
        queues=[
            QueueSpec(name="default", pool="local"),
            QueueSpec(name="batch", pool="local", priority=-1),
        ],
        environments=[
            EnvironmentSpec(id="1", name="host"),
            EnvironmentSpec(id="7", name="tools", venv=venv_dir, env={"FROM_CATALOG": "yes"}),
            EnvironmentSpec(id="9", name="cuda", image="nvcr.io/nvidia/pytorch:24.01-py3"),
        ],
    )
    with running_server(settings) as live:
        yield live


def submit(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/api/v1/jobs", json=body)


def log_of(server: LiveServer, http: httpx.Client, job: dict[str, Any]) -> str:
    server.wait_state(job["id"], "SUCCEEDED", "FAILED")
    return http.get(f"/api/v1/jobs/{job['id']}/logs").text


def test_an_image_naming_a_catalog_entry_runs_in_that_environment(server: LiveServer) -> None:
    with server.client() as http:
        for ref in ("7", "tools"):
            response = submit(http, entrypoint="only-in-venv; echo $FROM_CATALOG", image=ref)
            assert response.status_code == 201, response.text
            job = response.json()
            assert job["spec"]["image"] == ref
            assert log_of(server, http, job).split() == ["from-venv", "yes"]


def test_no_image_means_the_host_environment(server: LiveServer) -> None:
    with server.client() as http:
        job = submit(http, entrypoint="command -v only-in-venv || echo absent").json()
        assert log_of(server, http, job).strip() == "absent"


@pytest.mark.parametrize("image", ["missing", "python:3.11", "9", "cuda"])
def test_unknown_or_container_images_are_refused_naming_the_catalog(
    server: LiveServer, image: str
) -> None:
    with server.client() as http:
        response = submit(http, entrypoint="true", image=image)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["field"] == "image"
        assert "7 (tools)" in error["message"]
        assert http.get("/api/v1/jobs").json()["items"] == []


def test_the_default_catalog_is_the_host_under_a_positive_id(home: Path) -> None:
    """With no catalog configured, one entry: id 1 (faces whose clients want ids from 1, such as
    the PaaS API's, can name it), the host's own environment."""
    (entry,) = Settings(home=home).environments
    assert (entry.id, entry.name) == ("1", "host")
    assert (entry.image, entry.venv, entry.path_prefix, entry.env) == (None, None, [], {})
    settings = make_settings(home)
    assert settings.environments == [entry]
    with running_server(settings) as live, live.client() as http:
        for ref in ("1", "host"):
            job = submit(http, entrypoint="echo $JOBYARD_JOB_ID", image=ref).json()
            assert log_of(live, http, job).strip() == str(job["id"])
        refused = submit(http, entrypoint="true", image="0")
        assert refused.status_code == 400, refused.text
        assert "1 (host)" in refused.json()["error"]["message"]


def test_queue_and_pool_are_checked_and_recorded(server: LiveServer) -> None:
    with server.client() as http:
        job = submit(http, entrypoint="true", queue="batch").json()
        assert (job["queue"], job["pool"]) == ("batch", "local")
        job = submit(http, entrypoint="true", pool="local").json()
        assert (job["queue"], job["pool"]) == ("default", "local")
        for body, field, names in (
            ({"queue": "gpu"}, "queue", "default, batch"),
            ({"pool": "cloud"}, "pool", "local"),
        ):
            response = submit(http, entrypoint="true", **body)
            assert response.status_code == 422, response.text
            error = response.json()["error"]
            assert error["field"] == field
            assert names in error["message"]


@pytest.mark.parametrize(
    ("ports", "field"),
    [
        ([{"port": 0, "protocol": "ssh"}], "ports.0.port"),
        ([{"port": 8080, "protocol": "ftp"}], "ports.0.protocol"),
        ([{"port": 22, "protocol": "ssh"}, {"port": 22, "protocol": "http"}], "ports"),
    ],
)
def test_bad_ports_name_the_field(server: LiveServer, ports: list[Any], field: str) -> None:
    with server.client() as http:
        response = submit(http, entrypoint="true", ports=ports)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == field


def test_inconsistent_pools_and_queues_are_a_settings_error(home: Path) -> None:
    with pytest.raises(ValidationError, match="names pool 'nowhere'"):
        Settings(home=home, queues=[QueueSpec(name="q", pool="nowhere")])
    with pytest.raises(ValidationError, match="one executor per server"):
        Settings(home=home, pools=[PoolSpec(name="p", executor="slurm")])
    with pytest.raises(ValidationError, match="ids must be unique"):
        Settings(home=home, environments=[EnvironmentSpec(id="0", name="a")] * 2)


def test_catalogs_come_from_the_toml_file(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "jobyard.toml"
    config.write_text(
        '[[queues]]\nname = "default"\n\n[[queues]]\nname = "gpu"\npriority = 10\n'
        f'\n[[environments]]\nid = "1"\nname = "host"\n\n[[environments]]\nid = "py"\n'
        f'name = "python"\nvenv = "{Path(sys.executable).parent.parent}"\n'
    )
    monkeypatch.setenv("JOBYARD_CONFIG", str(config))
    settings = Settings(home=home)
    assert [q.name for q in settings.effective_queues] == ["default", "gpu"]
    assert settings.effective_queues[1].priority == 10
    found = settings.find_environment("python")
    assert found is not None
    assert found.id == "py"


def test_a_pools_declared_capacity_is_what_the_scheduler_uses(home: Path) -> None:
    settings = make_settings(
        home,
        pools=[PoolSpec(name="local", cpus=3, memory_mib=2048, gpus=[{"index": 0, "model": "L4"}])],
        queues=[QueueSpec(name="default", pool="local")],
    )
    with running_server(settings) as live, live.client() as http:
        (pool,) = http.get("/api/v1/pools").json()
        assert pool["capacity"]["cpus"] == 3 and pool["capacity"]["memory_mib"] == 2048
        assert [g["model"] for g in pool["gpus"]] == ["L4"]
        response = submit(http, entrypoint="true", resources={"cpus": 4})
        assert response.status_code == 422
        assert response.json()["error"]["field"] == "resources.cpus"
