"""The native REST API against a real server on a free loopback port."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.helpers import LiveServer, wait_for


def submit(api: httpx.Client, **body: Any) -> dict[str, Any]:
    response = api.post("/api/v1/jobs", json={"entrypoint": "true", **body})
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def error_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}, body
    assert "Traceback" not in response.text
    return body["error"]  # type: ignore[no-any-return]


# ---- auth -----------------------------------------------------------------------------------


def test_health_needs_no_token(live_server: LiveServer) -> None:
    response = httpx.get(f"{live_server.url}/api/v1/health")
    assert response.json()["status"] == "ok"


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}]
)
def test_every_job_route_needs_a_valid_token(
    live_server: LiveServer, headers: dict[str, str]
) -> None:
    with httpx.Client(base_url=live_server.url, headers=headers) as anon:
        for method, path in [
            ("GET", "/api/v1/jobs"),
            ("POST", "/api/v1/jobs"),
            ("GET", "/api/v1/jobs/1"),
            ("POST", "/api/v1/jobs/1/stop"),
            ("DELETE", "/api/v1/jobs/1"),
            ("GET", "/api/v1/jobs/1/logs"),
            ("GET", "/api/v1/jobs/1/events"),
        ]:
            response = anon.request(
                method, path, json={"entrypoint": "true"} if method == "POST" else None
            )
            assert response.status_code == 401, (method, path)
            assert error_of(response)["code"] == "unauthorized"


def test_admin_token_file_is_private(live_server: LiveServer) -> None:
    assert live_server.settings.admin_token_path.stat().st_mode & 0o777 == 0o600


def test_users_never_see_or_touch_each_others_jobs(
    live_server: LiveServer, api: httpx.Client
) -> None:
    tokens = {
        name: api.post("/api/v1/users", json={"name": name}).json()["token"]
        for name in ("alice", "bob")
    }
    with live_server.client(tokens["alice"]) as alice, live_server.client(tokens["bob"]) as bob:
        job = submit(alice, entrypoint="sleep 30", submission_id="shared-name")
        assert bob.get(f"/api/v1/jobs/{job['id']}").status_code == 404
        assert bob.get(f"/api/v1/jobs/{job['display_id']}/logs").status_code == 404
        assert bob.post(f"/api/v1/jobs/{job['id']}/stop").status_code == 404
        assert bob.delete(f"/api/v1/jobs/{job['id']}?force=true").status_code == 404
        assert bob.get("/api/v1/jobs").json()["total"] == 0
        assert bob.get("/api/v1/jobs?owner=alice").json()["total"] == 0
        # the same submission_id is per owner: bob's is a different job
        assert submit(bob, submission_id="shared-name")["id"] != job["id"]
        assert bob.post("/api/v1/users", json={"name": "mallory", "admin": True}).status_code == 403
        assert api.get(f"/api/v1/jobs/{job['id']}").status_code == 200  # the admin sees all
        alice.post(f"/api/v1/jobs/{job['id']}/stop")


# ---- submit ---------------------------------------------------------------------------------


def test_submit_returns_the_committed_job(api: httpx.Client) -> None:
    job = submit(api, name="train", env={"A": "1"}, labels={"team": "nlp"}, queue="gpu", priority=3)
    assert job["state"] == "QUEUED" and job["id"] > 0 and len(job["display_id"]) == 6
    assert job["tasks"][0]["name"] == f"{job['display_id']}-worker-0"
    assert (job["name"], job["queue"], job["priority"], job["labels"]) == (
        "train",
        "gpu",
        3,
        {"team": "nlp"},
    )
    assert job["state_log"][0]["state"] == "QUEUED"
    assert api.get(f"/api/v1/jobs/{job['id']}").json()["submission_id"] == job["submission_id"]


def test_ids_increase(api: httpx.Client) -> None:
    ids = [submit(api)["id"] for _ in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5


def test_same_submission_id_and_body_returns_the_same_job(api: httpx.Client) -> None:
    body = {"entrypoint": "true", "submission_id": "run-42", "labels": {"a": "b"}}
    first = api.post("/api/v1/jobs", json=body)
    again = api.post("/api/v1/jobs", json=body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    clash = api.post("/api/v1/jobs", json={**body, "entrypoint": "false"})
    assert clash.status_code == 409
    assert error_of(clash)["field"] == "submission_id"


BAD_BODIES: list[tuple[Any, str | None]] = [
    ({"entrypoint": 5}, "entrypoint"),
    ({"entrypoint": ""}, "entrypoint"),
    ({"entrypoint": []}, "entrypoint"),
    ({"entrypoint": "x" * 1_000_000}, "entrypoint"),
    ({}, "entrypoint"),
    ({"entrypoint": "true", "bogus": 1}, "bogus"),
    ({"entrypoint": "true", "env": {"A=B": "1"}}, "env"),
    ({"entrypoint": "true", "env": {"A\u0000": "1"}}, "env"),
    ({"entrypoint": "true", "env": {"my.var": "1"}}, "env"),  # /bin/sh would drop it
    ({"entrypoint": "true", "env": {"A": 1}}, "env.A"),
    ({"entrypoint": "true", "resources": {"gpus": -1}}, "resources.gpus"),
    ({"entrypoint": "true", "resources": {"cpus": -0.5}}, "resources.cpus"),
    ({"entrypoint": "true", "resources": {"memory": "-1G"}}, "resources.memory"),
    ({"entrypoint": "true", "resources": {"gpus": 1}}, "resources.gpus"),  # the pool has none
    ({"entrypoint": "true", "replicas": 0}, "replicas"),
    ({"entrypoint": "true", "replicas": "two"}, "replicas"),
    ({"entrypoint": "true", "priority": 10**9}, "priority"),
    ({"entrypoint": "true", "max_runtime": -1}, "max_runtime"),
    ({"entrypoint": "true", "labels": {"bad key!": "v"}}, "labels"),
    ({"entrypoint": "true", "submission_id": "has space"}, "submission_id"),
    ({"entrypoint": "true", "name": ""}, "name"),
    ({"entrypoint": "true", "queue": "../etc"}, "queue"),
    ({"entrypoint": "true", "image": "python:3.11"}, "image"),
    ([1, 2], None),
    ("just a string", None),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
def test_bad_submissions_get_a_4xx_naming_the_field(
    api: httpx.Client, body: Any, field: str | None
) -> None:
    response = api.post("/api/v1/jobs", json=body)
    assert 400 <= response.status_code < 500, response.text
    error = error_of(response)
    if field is not None:
        assert error.get("field") == field, error
    assert error["message"]


@pytest.mark.parametrize("raw", [b"{", b"{'entrypoint': 'x'}", b"\xff\xfe", b""])
def test_malformed_json_is_a_400(api: httpx.Client, raw: bytes) -> None:
    response = api.post("/api/v1/jobs", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422), response.text
    assert error_of(response)["code"] in ("invalid_json", "invalid")


def test_bad_input_never_changes_stored_jobs(api: httpx.Client) -> None:
    before = submit(api, name="keep")
    for body, _ in BAD_BODIES:
        api.post("/api/v1/jobs", json=body)
    listing = api.get("/api/v1/jobs").json()
    assert listing["total"] == 1 and listing["items"][0]["id"] == before["id"]


# ---- get, list ------------------------------------------------------------------------------


def test_a_job_is_found_by_id_display_id_and_submission_id(api: httpx.Client) -> None:
    job = submit(api, submission_id="by-name")
    for ref in (str(job["id"]), job["display_id"], "by-name"):
        assert api.get(f"/api/v1/jobs/{ref}").json()["id"] == job["id"]


@pytest.mark.parametrize("ref", ["999999", "nope", "9" * 40, "%00", "a%2Fb"])
def test_unknown_jobs_are_404(api: httpx.Client, ref: str) -> None:
    response = api.get(f"/api/v1/jobs/{ref}")
    assert response.status_code == 404
    assert error_of(response)["code"] in ("not_found",)


def test_list_filters_and_paginates(live_server: LiveServer, api: httpx.Client) -> None:
    made = [
        submit(
            api,
            name=f"exp-{i}",
            queue="gpu" if i % 2 else "batch",
            labels={"n": str(i % 3)},
            entrypoint="exit 1" if i == 0 else "true",
        )
        for i in range(7)
    ]
    live_server.wait_state(made[-1]["id"], "SUCCEEDED")
    live_server.wait_state(made[0]["id"], "FAILED")
    assert api.get("/api/v1/jobs?state=FAILED").json()["total"] == 1
    assert api.get("/api/v1/jobs?state=FAILED,SUCCEEDED").json()["total"] == 7
    assert api.get("/api/v1/jobs?queue=gpu").json()["total"] == 3
    assert api.get("/api/v1/jobs?q=exp-1").json()["total"] == 1
    assert api.get("/api/v1/jobs?label=n=0").json()["total"] == 3
    assert api.get("/api/v1/jobs?label=n").json()["total"] == 7
    seen, cursor = [], None
    while True:
        page = api.get(
            "/api/v1/jobs",
            params={"limit": 3, "order": "asc", **({"cursor": cursor} if cursor else {})},
        ).json()
        assert page["total"] == 7
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [j["id"] for j in made]
    desc = api.get("/api/v1/jobs?limit=2").json()["items"]
    assert [j["id"] for j in desc] == [made[-1]["id"], made[-2]["id"]]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("state=DANCING", "state"),
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
        ("order=up", "order"),
        ("cursor=abc", "cursor"),
        ("limit=x", "limit"),
    ],
)
def test_bad_list_queries_name_the_parameter(api: httpx.Client, query: str, field: str) -> None:
    response = api.get(f"/api/v1/jobs?{query}")
    assert response.status_code == 422
    assert error_of(response)["field"] == field


# ---- lifecycle, stop, delete -----------------------------------------------------------------


def test_state_log_and_events_follow_the_lifecycle(
    live_server: LiveServer, api: httpx.Client
) -> None:
    job = submit(api, entrypoint="exit 3")
    done = live_server.wait_state(job["id"], "FAILED")
    assert [e["state"] for e in done["state_log"]] == ["QUEUED", "STARTING", "RUNNING", "FAILED"]
    assert (done["exit_code"], done["reason"]) == (3, "EXIT_NONZERO")
    events = api.get(f"/api/v1/jobs/{job['id']}/events").json()["items"]
    assert [e["reason"] for e in events] == ["Queued", "Scheduled", "Started", "Failed"]
    assert events[1]["message"].startswith("placed on ")
    assert events[-1]["type"] == "Warning" and "exited with code 3" in events[-1]["message"]


def test_a_program_that_cannot_start_ends_start_failed(
    live_server: LiveServer, api: httpx.Client
) -> None:
    job = submit(api, entrypoint=["definitely-not-a-program"])
    done = live_server.wait_state(job["id"], "FAILED")
    assert done["reason"] == "START_FAILED" and "not found" in done["message"]


def test_stop_is_idempotent_then_conflicts_when_finished(
    live_server: LiveServer, api: httpx.Client
) -> None:
    # The job takes a moment to honour SIGTERM, so the second stop finds it STOPPING.
    job = submit(api, entrypoint="trap 'sleep 0.5; exit 0' TERM; sleep 60 & wait")
    running = live_server.wait_state(job["id"], "RUNNING")
    pid = running["tasks"][0]["pid"]
    first = api.post(f"/api/v1/jobs/{job['id']}/stop")
    second = api.post(f"/api/v1/jobs/{job['id']}/stop")
    assert (first.status_code, second.status_code) == (202, 202)
    done = live_server.wait_state(job["id"], "STOPPED")
    assert done["reason"] == "STOPPED_BY_USER"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    late = api.post(f"/api/v1/jobs/{job['id']}/stop")
    assert late.status_code == 409 and error_of(late)["code"] == "conflict"


def test_stop_of_a_queued_job_ends_it_without_running(live_server: LiveServer) -> None:
    from tests.helpers import make_settings, running_server

    with (
        running_server(
            make_settings(live_server.settings.home.parent / "h2", max_tasks=1)
        ) as small,
        small.client() as http,
    ):
        blocker = submit(http, entrypoint="sleep 60")
        queued = submit(http, entrypoint="true")
        small.wait_state(blocker["id"], "RUNNING")
        assert http.get(f"/api/v1/jobs/{queued['id']}").json()["state"] == "QUEUED"
        assert http.post(f"/api/v1/jobs/{queued['id']}/stop").json()["state"] == "STOPPED"
        http.post(f"/api/v1/jobs/{blocker['id']}/stop")
        small.wait_state(blocker["id"], "STOPPED")


def test_max_runtime_is_enforced(live_server: LiveServer, api: httpx.Client) -> None:
    job = submit(api, entrypoint="sleep 60", max_runtime=0.5)
    done = live_server.wait_state(job["id"], "FAILED")
    assert done["reason"] == "MAX_RUNTIME_EXCEEDED"


def test_delete_refuses_live_jobs_unless_forced(live_server: LiveServer, api: httpx.Client) -> None:
    job = submit(api, entrypoint="sleep 60")
    running = live_server.wait_state(job["id"], "RUNNING")
    refused = api.delete(f"/api/v1/jobs/{job['id']}")
    assert refused.status_code == 409
    assert api.delete(f"/api/v1/jobs/{job['id']}?force=true").status_code == 204
    assert api.get(f"/api/v1/jobs/{job['id']}").status_code == 404
    pid = running["tasks"][0]["pid"]
    wait_for(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    )


def test_delete_of_a_finished_job_removes_its_logs_and_directory(
    live_server: LiveServer, api: httpx.Client, tmp_path: Path
) -> None:
    job = submit(api, entrypoint="echo bye; mkdir -p out; echo 1 > out/result")
    live_server.wait_state(job["id"], "SUCCEEDED")
    log_dir = live_server.settings.logs_dir / str(job["id"])
    job_dir = live_server.settings.jobs_dir / str(job["id"])
    assert any(log_dir.iterdir())
    assert (job_dir / "out" / "result").read_text() == "1\n"
    assert api.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    assert not log_dir.exists()
    assert not job_dir.exists()
    assert api.delete(f"/api/v1/jobs/{job['id']}").status_code == 404
    # a working directory the spec named is the user's: deleting the job leaves it
    own = tmp_path / "mine"
    own.mkdir()
    theirs = submit(api, entrypoint="echo kept > here", working_dir=str(own))
    live_server.wait_state(theirs["id"], "SUCCEEDED")
    assert api.delete(f"/api/v1/jobs/{theirs['id']}").status_code == 204
    assert (own / "here").read_text() == "kept\n"


# ---- logs -----------------------------------------------------------------------------------


def test_logs_tail_offset_and_task(live_server: LiveServer, api: httpx.Client) -> None:
    job = submit(api, entrypoint='for i in 1 2 3 4 5; do echo "line $i"; done', replicas=2)
    live_server.wait_state(job["id"], "SUCCEEDED")
    base = f"/api/v1/jobs/{job['id']}/logs"
    assert api.get(base).text == "".join(f"line {i}\n" for i in range(1, 6))
    assert api.get(f"{base}?tail=2").text == "line 4\nline 5\n"
    assert api.get(f"{base}?tail=0").text == ""
    assert api.get(f"{base}?offset=7").text.startswith("line 2")
    assert api.get(f"{base}?task=1").text.startswith("line 1")
    assert api.get(f"{base}?task={job['display_id']}-worker-1").status_code == 200
    missing = api.get(f"{base}?task=7")
    assert missing.status_code == 404 and error_of(missing)["field"] == "task"
    assert api.get(f"{base}?tail=-1").status_code == 422


def test_follow_streams_until_the_task_ends(live_server: LiveServer, api: httpx.Client) -> None:
    job = submit(api, entrypoint="echo first; sleep 0.5; echo second")
    with api.stream("GET", f"/api/v1/jobs/{job['id']}/logs?follow=true") as response:
        text = "".join(response.iter_text())
    assert text == "first\nsecond\n"


def test_jobs_inherit_no_file_descriptors_of_the_server(
    live_server: LiveServer, api: httpx.Client
) -> None:
    job = submit(api, entrypoint=["ls", "/proc/self/fd"])
    live_server.wait_state(job["id"], "SUCCEEDED")
    fds = {int(fd) for fd in api.get(f"/api/v1/jobs/{job['id']}/logs").text.split()}
    assert fds <= {0, 1, 2, 3}, fds  # stdin, stdout, stderr, and ls's own directory handle


@pytest.mark.parametrize(
    "path", ["/api/v1/jobs/nope/logs?follow=true", "/api/v1/jobs/1/logs?follow=true&task=7"]
)
def test_follow_of_an_unknown_job_or_task_is_a_404(api: httpx.Client, path: str) -> None:
    submit(api)
    response = api.get(path)
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_a_stopped_jobs_log_holds_only_its_own_output(
    live_server: LiveServer, api: httpx.Client
) -> None:
    job = submit(api, entrypoint="echo started; sleep 60")
    live_server.wait_state(job["id"], "RUNNING")
    wait_for(lambda: api.get(f"/api/v1/jobs/{job['id']}/logs").text)
    api.post(f"/api/v1/jobs/{job['id']}/stop")
    live_server.wait_state(job["id"], "STOPPED")
    assert api.get(f"/api/v1/jobs/{job['id']}/logs").text == "started\n"


def test_openapi_documents_the_native_api(live_server: LiveServer) -> None:
    spec = httpx.get(f"{live_server.url}/openapi.json").json()
    assert {"/api/v1/jobs", "/api/v1/jobs/{ref}", "/api/v1/jobs/{ref}/logs"} <= set(spec["paths"])
    assert httpx.get(f"{live_server.url}/docs").status_code == 200
