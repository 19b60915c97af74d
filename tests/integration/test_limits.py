"""Limits, each a clear 4xx naming what was too big: request body size (max_request_bytes, in
every face's envelope), live jobs per user (max_live_jobs_per_user), entrypoint, env, name,
page and log sizes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import LiveServer, make_settings, running_server

MAX_BODY = 64 * 1024


@pytest.fixture
def server(home: Path) -> Iterator[LiveServer]:
    settings = make_settings(home, max_request_bytes=MAX_BODY, max_live_jobs_per_user=2)
    with running_server(settings) as live:
        yield live


def _big_body() -> dict[str, object]:
    return {"entrypoint": "true", "labels": {"x": "y" * 200}, "name": "n" * (MAX_BODY + 10)}


def test_a_body_over_max_request_bytes_is_413_in_each_faces_envelope(server: LiveServer) -> None:
    with server.client() as http:
        native = http.post("/api/v1/jobs", json=_big_body())
        assert native.status_code == 413
        assert native.json()["error"]["code"] == "too_large"
        assert "max_request_bytes" in native.json()["error"]["message"]
        training = http.post("/api/jobs/create", json=_big_body())
        assert training.status_code == 413 and training.json()["success"] is False
        assert "max_request_bytes" in training.json()["message"]
        paas = http.post("/v1/job", json=_big_body())
        assert "max_request_bytes" in paas.text and paas.json()["code"] != 0

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"entrypoint": "true", "name": "'
            for _ in range(MAX_BODY // 1024 + 2):
                yield b"n" * 1024
            yield b'"}'

        chunked = http.post(
            "/api/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert chunked.status_code == 413 and "max_request_bytes" in chunked.text
        # just under the limit is served as usual
        assert http.post("/api/v1/jobs", json={"entrypoint": "true"}).status_code == 201
        assert http.get("/api/v1/jobs").json()["total"] == 1


def test_max_live_jobs_per_user_refuses_the_next_job_naming_the_limit(
    server: LiveServer,
) -> None:
    with server.client() as admin:
        token = admin.post("/api/v1/users", json={"name": "alice"}).json()["token"]
    with server.client(token) as alice, server.client() as admin:
        first = alice.post("/api/v1/jobs", json={"entrypoint": "sleep 30", "submission_id": "a"})
        alice.post("/api/v1/jobs", json={"entrypoint": "sleep 30", "submission_id": "b"})
        third = alice.post("/api/v1/jobs", json={"entrypoint": "sleep 30", "submission_id": "c"})
        assert third.status_code == 429
        assert third.json()["error"]["field"] == "max_live_jobs_per_user"
        assert "limit is 2" in third.json()["error"]["message"]
        # the other faces say it in their own terms
        training = alice.post("/api/jobs/create", json={"jobName": "t", "command": "true"})
        assert training.status_code == 429 and "max_live_jobs_per_user" in training.text
        paas = alice.post("/v1/job", json={"cmd": "true", "from_image_id": "0"}).json()
        assert paas["code"] not in (0, 176) and "max_live_jobs_per_user" in paas["msg"]
        again = alice.post("/api/v1/jobs", json={"entrypoint": "sleep 30", "submission_id": "a"})
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        # another user's count is their own
        assert admin.post("/api/v1/jobs", json={"entrypoint": "true"}).status_code == 201
        alice.post(f"/api/v1/jobs/{first.json()['id']}/stop")
        server.wait_state(first.json()["id"], "STOPPED")
        later = alice.post("/api/v1/jobs", json={"entrypoint": "true", "submission_id": "c"})
        assert later.status_code == 201
        alice.post("/api/v1/jobs/b/stop")
        server.wait_state("b", "STOPPED")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"entrypoint": "x" * (64 * 1024 + 1)}, "entrypoint"),
        ({"entrypoint": "true", "env": {f"K{i}": "v" * 1024 for i in range(300)}}, "env"),
        ({"entrypoint": "true", "name": "n" * 300}, "name"),
        ({"entrypoint": "true", "replicas": 5000}, "replicas"),
    ],
    ids=["entrypoint", "env", "name", "replicas"],
)
def test_oversized_fields_are_422_naming_the_field(home: Path, body: object, field: str) -> None:
    with running_server(make_settings(home)) as live, live.client() as http:
        answer = http.post("/api/v1/jobs", json=body)
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["field"] == field


def test_page_and_log_sizes_are_bounded(server: LiveServer) -> None:
    with server.client() as http:
        job = http.post("/api/v1/jobs", json={"entrypoint": "echo hi"}).json()
        server.wait_state(job["id"], "SUCCEEDED")
        pages = http.get("/api/v1/jobs", params={"limit": 10**6})
        assert pages.status_code == 422 and pages.json()["error"]["field"] == "limit"
        tail = http.get(f"/api/v1/jobs/{job['id']}/logs", params={"tail": 10**9})
        assert tail.status_code == 422 and tail.json()["error"]["field"] == "tail"
        assert isinstance(httpx.get(f"{server.url}/api/v1/health").json(), dict)


def test_the_ray_listener_limits_bodies_but_lets_packages_reach_their_own_limit(
    home: Path,
) -> None:
    settings = make_settings(home, max_request_bytes=MAX_BODY)
    with running_server(settings, ray=True) as live:
        headers = {"Authorization": f"Bearer {live.token}"}
        big = httpx.post(f"{live.ray_url}/api/jobs/", json=_big_body(), headers=headers)
        assert big.status_code == 413 and "max_request_bytes" in big.text
        package = httpx.put(
            f"{live.ray_url}/api/packages/gcs/_ray_pkg_0123456789abcdef.zip",
            content=b"PK" + b"\0" * (MAX_BODY * 2),
            headers=headers,
        )
        assert package.status_code != 413, package.text  # judged by max_package_bytes


def test_configured_limits_are_enforced_in_every_face_naming_the_setting(home: Path) -> None:
    settings = make_settings(
        home,
        max_entrypoint_bytes=64,
        max_env_vars=2,
        max_env_bytes=40,
        max_name_length=8,
        max_page_size=50,
    )
    refused = [
        ({"entrypoint": "echo " + "x" * 64}, "entrypoint", "max_entrypoint_bytes"),
        ({"entrypoint": "true", "env": {"A": "1", "B": "2", "C": "3"}}, "env", "max_env_vars"),
        ({"entrypoint": "true", "env": {"A": "v" * 40}}, "env", "max_env_bytes"),
        ({"entrypoint": "true", "name": "n" * 9}, "name", "max_name_length"),
    ]
    with running_server(settings, ray=True) as live, live.client() as http:
        for body, field, setting in refused:
            native = http.post("/api/v1/jobs", json=body)
            assert native.status_code == 422, native.text
            assert native.json()["error"]["field"] == field
            assert setting in native.json()["error"]["message"]
        # the other faces, in their own envelopes
        training = http.post("/api/jobs/create", json={"jobName": "t", "command": "x" * 100})
        assert training.status_code == 400 and "max_entrypoint_bytes" in training.text
        paas = http.post("/v1/job", json={"cmd": "true", "envs": "A=1;B=2;C=3"}).json()
        assert paas["code"] not in (0, 176) and "max_env_vars" in paas["msg"]
        ray = httpx.post(
            f"{live.ray_url}/api/jobs/",
            json={"entrypoint": "echo " + "x" * 100},
            headers={"Authorization": f"Bearer {live.token}"},
        )
        assert ray.status_code == 400 and "max_entrypoint_bytes" in ray.text
        assert http.get("/api/v1/jobs").json()["total"] == 0
        # within the limits a job goes through; a page larger than max_page_size is refused
        ok = http.post("/api/v1/jobs", json={"entrypoint": "true", "name": "ok", "env": {"A": "1"}})
        assert ok.status_code == 201, ok.text
        page = http.get("/api/v1/jobs", params={"limit": 51})
        assert page.status_code == 422 and page.json()["error"]["field"] == "limit"
        assert "max_page_size" in page.json()["error"]["message"]
        assert http.get("/api/v1/jobs", params={"limit": 50}).status_code == 200
        listed = http.post("/api/jobs", json={"pageSize": 51})
        assert listed.status_code == 400 and "pageSize" in listed.text
        assert http.get("/v1/job/jobs", params={"per_page": 50}).json()["code"] == 0
