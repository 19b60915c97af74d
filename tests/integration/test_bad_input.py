"""Bad input is a 4xx naming the field, in every face's envelope, never a 500 (which also reset
the keep-alive connection it came on); and nothing it leaves behind breaks a list.

- a lone UTF-16 surrogate (the JSON escape "\\ud800", or its raw bytes), on every face,
  and percent-encoded bytes that are not UTF-8 in a path or a query string;
- numbers out of the database's range (ids are 32-bit on PostgreSQL), offsets out of 64 bits,
  floats that are not finite or not sane, booleans given for numbers (and numbers for booleans);
- JSON nested deeper than the parser can take.

A real server on a loopback port (with the Ray listener); every queue holds its jobs, so a job
that got through would stay listed.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from jobyard.config import QueueSpec
from tests.helpers import LiveServer, make_settings, running_server

SURROGATE = "\\ud800"  # the six characters of the JSON escape, written into raw bodies
JSON = {"Content-Type": "application/json"}
HELD = [QueueSpec(name=name, max_running_jobs=0) for name in ("default", "gpu", "batch")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("bad-input") / "home"
    with running_server(make_settings(home, queues=HELD), ray=True) as live:
        yield live


@pytest.fixture(scope="module")
def alice(server: LiveServer) -> str:
    with server.client() as admin:
        token: str = admin.post("/api/v1/users", json={"name": "alice"}).json()["token"]
    return token


@contextlib.contextmanager
def _dashboard(server: LiveServer, token: str) -> Iterator[httpx.Client]:
    """A signed-in dashboard session: its cookies and the CSRF header."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        http.post("/login", data={"token": token})
        http.headers["X-CSRF-Token"] = http.cookies["jobyard_csrf"]
        yield http


def _raw(http: httpx.Client, method: str, url: str, body: str | bytes) -> httpx.Response:
    return http.request(method, url, content=body, headers=JSON)


def _totals(server: LiveServer, token: str) -> dict[str, int]:
    """How many jobs each face's list shows `token`'s owner; every list must answer 200."""
    with server.client(token) as http, _dashboard(server, token) as ui:
        answers = {
            "native": http.get("/api/v1/jobs"),
            "paas": http.get("/v1/job/jobs"),
            "paas_stats": http.get("/v1/job/stats"),
            "training": http.post("/api/jobs", json={}),
            "ray": http.get(f"{server.ray_url}/api/jobs/"),
            "dashboard": ui.get("/ui/api/jobs"),
            "activity": ui.get("/ui/api/activity"),
        }
    assert {face: a.status_code for face, a in answers.items()} == dict.fromkeys(answers, 200)
    assert answers["paas"].json()["code"] == 0
    return {
        "native": answers["native"].json()["total"],
        "paas": answers["paas"].json()["pagination"]["total"],
        "paas_stats": answers["paas_stats"].json()["total"],
        "training": answers["training"].json()["data"]["totalCount"],
        "ray": len(answers["ray"].json()),
        "dashboard": answers["dashboard"].json()["total"],
    }


def _problems(server: LiveServer, token: str) -> dict[str, httpx.Response]:
    """One lone surrogate per face, in its submit (and the training list's filter)."""
    native = f'{{"entrypoint": "true", "env": {{"K": "{SURROGATE}"}}}}'
    form = {"cmd": (None, "true"), "spec": (None, f'{{"gpuName": "{SURROGATE}"}}')}
    with server.client(token) as http, _dashboard(server, token) as ui:
        return {
            "native": _raw(http, "POST", "/api/v1/jobs", native),
            "native_raw_bytes": _raw(
                http, "POST", "/api/v1/jobs", b'{"entrypoint": "echo \xed\xa0\x80"}'
            ),
            "paas_json": _raw(
                http, "POST", "/v1/job", f'{{"cmd": "true", "envs": "K={SURROGATE}"}}'
            ),
            "paas_form": http.post("/v1/job", files=form),
            "training": _raw(
                http,
                "POST",
                "/api/jobs/create",
                f'{{"jobName": "t", "command": "true", "envs": {{"K": "{SURROGATE}"}}}}',
            ),
            "training_list": _raw(http, "POST", "/api/jobs", f'{{"keyword": "{SURROGATE}"}}'),
            "ray": _raw(
                http,
                "POST",
                f"{server.ray_url}/api/jobs/",
                f'{{"entrypoint": "true", "runtime_env": {{"env_vars": {{"K": "{SURROGATE}"}}}}}}',
            ),
            "ray_metadata": _raw(
                http,
                "POST",
                f"{server.ray_url}/api/jobs/",
                f'{{"entrypoint": "true", "metadata": {{"k": "{SURROGATE}"}}}}',
            ),
            "dashboard": _raw(ui, "POST", "/ui/api/jobs", native),
        }


def test_a_lone_surrogate_is_refused_by_every_face_and_every_list_still_answers(
    server: LiveServer, alice: str
) -> None:
    before = {"admin": _totals(server, server.token), "alice": _totals(server, alice)}
    answers = _problems(server, alice)
    codes = {face: answer.status_code for face, answer in answers.items()}
    assert codes == {
        "native": 422,
        "native_raw_bytes": 422,
        "paas_json": 200,  # the PaaS face answers every failure with 200 and a code
        "paas_form": 200,
        "training": 400,
        "training_list": 400,
        "ray": 400,
        "ray_metadata": 400,
        "dashboard": 422,
    }, {face: a.text for face, a in answers.items()}
    assert answers["native"].json()["error"]["field"] == "env.K"
    assert "surrogate" in answers["native"].json()["error"]["message"]
    assert answers["native_raw_bytes"].json()["error"]["field"] == "entrypoint"
    assert answers["dashboard"].json()["error"]["field"] == "env.K"
    for face in ("paas_json", "paas_form"):
        assert answers[face].json()["code"] == 6, answers[face].text
    assert "envs" in answers["paas_json"].json()["msg"]
    assert "spec" in answers["paas_form"].json()["msg"]
    assert "gpuName" in answers["paas_form"].json()["msg"]
    assert answers["training"].json()["details"]["field"] == "envs.K"
    assert answers["training_list"].json()["details"]["field"] == "keyword"
    assert answers["ray"].json().startswith("runtime_env.env_vars.K: ")
    assert answers["ray_metadata"].json().startswith("metadata.k: ")
    # nothing was stored, and every list, the owner's and the admin's, still answers
    after = {"admin": _totals(server, server.token), "alice": _totals(server, alice)}
    assert after == before


@pytest.mark.parametrize(
    ("url", "status", "field"),
    [
        ("/api/v1/jobs?q=%ED%A0%80", 422, "q"),
        ("/api/v1/jobs/%ED%A0%80", 422, "path"),
        ("/api/v1/jobs/%ED%A0%80/logs?offset=%FF", 422, "path"),
        ("/api/v1/tokens?user=%ED%A0%80", 422, "user"),
        ("/api/jobs/%ED%A0%80", 400, "path"),
        ("/api/jobs?keyword=%ED%A0%80", 400, "keyword"),
        ("/ui/api/jobs?q=%ED%A0%80", 422, "q"),
    ],
)
def test_percent_encoded_non_utf8_in_paths_and_queries_is_refused(
    server: LiveServer, url: str, status: int, field: str
) -> None:
    with server.client() as http:
        method = "POST" if url.startswith("/api/jobs?") else "GET"
        answer = http.request(method, url)
        assert answer.status_code == status, answer.text
        body = answer.json()
        named = body["error"]["field"] if "error" in body else body["details"]["field"]
        assert named == field


def test_percent_encoded_non_utf8_on_the_paas_and_ray_faces(server: LiveServer) -> None:
    with server.client() as http:
        assert http.get("/v1/job", params={"id": "1"}).json()["code"] == 404  # a good id
        bad = http.get("/v1/job?id=%ED%A0%80").json()
        assert bad["code"] == 6 and "id" in bad["msg"], bad
        ray = http.get(f"{server.ray_url}/api/jobs/%ED%A0%80")
        assert ray.status_code == 400 and ray.json().startswith("path: ")
    headers = {"Authorization": f"Bearer {server.token}"}
    tail = server.ray_url.replace("http", "ws") + "/api/jobs/%ED%A0%80/logs/tail"
    with pytest.raises(InvalidStatus) as refused:
        connect(tail, additional_headers=headers, open_timeout=10).close()
    assert refused.value.response.status_code == 400


def test_a_job_stored_with_a_surrogate_before_the_edge_refused_them_is_still_listed(
    tmp_path: Path,
) -> None:
    """Such jobs exist in databases written before this check: their text leaves as U+FFFD."""
    with running_server(make_settings(tmp_path / "home", queues=HELD), ray=True) as live:
        with live.client() as http:
            job = http.post("/api/v1/jobs", json={"entrypoint": "true", "env": {"K": "v"}}).json()
        database = live.settings.effective_database_url.removeprefix("sqlite:///")
        with sqlite3.connect(database) as db:  # what the native face stored before: JSON escapes
            spec = db.execute("SELECT spec FROM jobs WHERE id = ?", (job["id"],)).fetchone()[0]
            db.execute(
                "UPDATE jobs SET spec = ?, labels = ? WHERE id = ?",
                (spec.replace('"v"', f'"{SURROGATE}"'), f'{{"k": "{SURROGATE}"}}', job["id"]),
            )
        assert set(_totals(live, live.token).values()) == {1}
        with live.client() as http:
            shown = http.get(f"/api/v1/jobs/{job['id']}")
            assert shown.status_code == 200 and shown.json()["spec"]["env"] == {"K": "\ufffd"}
            ray = http.get(f"{live.ray_url}/api/jobs/{job['display_id']}")
            assert ray.status_code == 200 and ray.json()["metadata"] == {"k": "\ufffd"}
            assert http.get(f"/api/jobs/{job['id']}").status_code == 200


def _bad_numbers(job_id: int) -> list[tuple[str, str, Any, str]]:
    """(method, url, JSON body or raw text, field) of answers that were 500s, or wrong."""
    nested = "[" * 1000 + "]" * 1000
    native, training = "/api/v1/jobs", "/api/jobs/create"
    job = {"entrypoint": "true"}
    run = {"jobName": "t", "command": "true"}
    return [
        ("DELETE", "/api/v1/keys/9223372036854775808", None, "key_id"),
        ("DELETE", "/api/v1/keys/2147483648", None, "key_id"),
        ("DELETE", "/api/v1/tokens/2147483648", None, "token_id"),
        ("GET", f"{native}/{job_id}/logs?offset=9223372036854775808", None, "offset"),
        ("GET", f"{native}?cursor=2147483648", None, "cursor"),
        ("POST", "/api/v1/tokens", {"expires_in": True}, "expires_in"),
        ("POST", "/api/v1/users", {"name": "bob", "admin": 1}, "admin"),
        ("POST", native, {**job, "replicas": True}, "replicas"),
        ("POST", native, {**job, "resources": {"gpus": False}}, "resources.gpus"),
        ("POST", native, {**job, "resources": {"memory": "9" * 400 + "T"}}, "resources.memory"),
        ("POST", native, '{"entrypoint": "true", "max_runtime": NaN}', "max_runtime"),
        ("POST", native, '{"entrypoint": "true", "priority": 1e999}', "priority"),
        ("POST", native, nested, "body"),
        ("POST", training, {**run, "timeout": 1e308}, "timeout"),
        ("POST", training, '{"jobName": "t", "command": "true", "timeout": 1e999}', "timeout"),
        ("POST", training, {**run, "resources": {"memory": 1e308}}, "resources.memory"),
        ("POST", training, {**run, "replicas": True}, "replicas"),
        ("POST", training, nested, "body"),
    ]


def _field(answer: httpx.Response) -> str | None:
    body = answer.json()
    if "error" in body:
        return str(body["error"].get("field"))
    return str(body["details"].get("field"))


def test_numbers_out_of_range_and_deep_json_are_4xx_naming_the_field_on_one_connection(
    server: LiveServer,
) -> None:
    with server.client() as http:
        job = http.post("/api/v1/jobs", json={"entrypoint": "true"}).json()
        tokens = len(http.get("/api/v1/tokens").json()["items"])
        for method, url, body, field in _bad_numbers(job["id"]):
            if isinstance(body, str):
                answer = _raw(http, method, url, body)
            else:
                answer = http.request(method, url, json=body)
            assert 400 <= answer.status_code < 500, (url, body, answer.text)
            assert _field(answer) == field, (url, answer.text)
            # the same keep-alive connection serves the next request
            assert http.get("/api/v1/health").status_code == 200
        assert len(http.get("/api/v1/tokens").json()["items"]) == tokens  # none was made
        http.delete(f"/api/v1/jobs/{job['id']}", params={"force": "true"})


def test_the_paas_and_ray_faces_refuse_deep_json_and_numbers_in_their_envelopes(
    server: LiveServer,
) -> None:
    nested = "[" * 1000 + "]" * 1000
    with server.client() as http:
        paas = _raw(http, "POST", "/v1/job", nested).json()
        assert paas["code"] == 6 and "body" in paas["msg"], paas
        deep_field = _raw(http, "POST", "/v1/job", '{"cmd": "true", "spec": "' + nested + '"}')
        assert deep_field.json()["code"] == 6 and "spec" in deep_field.json()["msg"]
        boolean = http.post("/v1/job", json={"cmd": "true", "agent_domain": True}).json()
        assert boolean["code"] == 6 and "agent_domain" in boolean["msg"], boolean
        ray = http.post(
            f"{server.ray_url}/api/jobs/", json={"entrypoint": "true", "entrypoint_num_gpus": True}
        )
        assert ray.status_code == 400 and ray.json().startswith("entrypoint_num_gpus"), ray.text
        infinite = _raw(
            http,
            "POST",
            f"{server.ray_url}/api/jobs/",
            '{"entrypoint": "true", "entrypoint_num_gpus": 1e999}',
        )
        assert infinite.status_code == 400 and infinite.json().startswith("entrypoint_num_gpus")
        deep = _raw(http, "POST", f"{server.ray_url}/api/jobs/", nested)
        assert deep.status_code == 400 and "nested deeper" in deep.json()
        assert http.get("/api/v1/jobs").json()["total"] == 0


@pytest.mark.postgres
def test_ids_past_postgresqls_integer_columns_are_4xx_not_500(
    home: Path, fresh_postgres_url: str
) -> None:
    settings = make_settings(home, database_url=fresh_postgres_url)
    with running_server(settings) as live, live.client() as http:
        job = http.post("/api/v1/jobs", json={"entrypoint": "true"}).json()
        for url, field in [
            ("/api/v1/jobs?cursor=2147483648", "cursor"),
            ("/api/v1/jobs?cursor=2147483647", None),
            ("/api/v1/keys/2147483648", "key_id"),
            ("/api/v1/tokens/2147483648", "token_id"),
        ]:
            method = "GET" if "cursor" in url else "DELETE"
            answer = http.request(method, url)
            if field is None:
                assert answer.status_code == 200, answer.text
                assert answer.json()["items"][0]["id"] == job["id"]
            else:
                assert answer.status_code == 422, answer.text
                assert answer.json()["error"]["field"] == field
        assert http.get(f"/api/v1/jobs/{2**31}").status_code == 404
        assert http.get("/v1/job", params={"id": str(2**31)}).json()["code"] == 6
        assert http.post("/api/jobs", json={"keyword": str(2**40)}).status_code == 200
