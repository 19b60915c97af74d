"""Users and API tokens: made by admins (API, SDK, CLI), stored hashed, expiring, revocable at
once; jobs belong to whoever submitted them."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from jobyard.client import ApiError, Client
from tests.helpers import LiveServer, make_settings, running_server, wait_for


def _add_user(api: httpx.Client, name: str, *, admin: bool = False) -> str:
    response = api.post("/api/v1/users", json={"name": name, "admin": admin})
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def _status(server: LiveServer, token: str, path: str = "/api/v1/whoami") -> int:
    with server.client(token) as http:
        return http.get(path).status_code


def test_admins_create_users_whose_tokens_work_and_whose_jobs_are_theirs(
    live_server: LiveServer, api: httpx.Client
) -> None:
    token = _add_user(api, "alice")
    with live_server.client(token) as alice:
        assert alice.get("/api/v1/whoami").json() == {"name": "alice", "admin": False}
        job = alice.post("/api/v1/jobs", json={"entrypoint": "true"}).json()
        assert job["owner"] == "alice"
        # not an admin: may not create, list or remove users
        assert alice.post("/api/v1/users", json={"name": "eve"}).status_code == 403
        assert alice.get("/api/v1/users").status_code == 403
        assert alice.delete("/api/v1/users/admin").status_code == 403
    again = api.post("/api/v1/users", json={"name": "alice"})
    assert again.status_code == 409 and again.json()["error"]["field"] == "name"
    bad = api.post("/api/v1/users", json={"name": "Not A Name"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "name"
    listed = {u["name"]: u for u in api.get("/api/v1/users").json()["items"]}
    assert listed["alice"]["admin"] is False and listed["alice"]["tokens"] == 1
    assert listed["admin"]["admin"] is True
    assert api.get(f"/api/v1/jobs/{job['id']}").json()["owner"] == "alice"  # admins see all
    live_server.wait_state(job["id"], "SUCCEEDED")


def test_tokens_are_stored_only_as_hashes_and_never_listed(
    live_server: LiveServer, api: httpx.Client
) -> None:
    _add_user(api, "bob")
    made = api.post("/api/v1/tokens", json={"user": "bob", "name": "laptop"}).json()
    secret = made["token"]
    assert made["user"] == "bob" and made["name"] == "laptop" and secret.startswith("jy_")
    assert _status(live_server, secret) == 200
    listing = api.get("/api/v1/tokens", params={"user": "bob"})
    assert secret not in listing.text and "token_hash" not in listing.text
    assert [t["name"] for t in listing.json()["items"]] == ["initial", "laptop"]
    db = sqlite3.connect(live_server.settings.sqlite_path)
    try:
        hashes = [row[0] for row in db.execute("SELECT token_hash FROM tokens")]
    finally:
        db.close()
    assert hashlib.sha256(secret.encode()).hexdigest() in hashes
    files = [live_server.settings.sqlite_path, *live_server.settings.home.glob("jobyard.db-*")]
    for path in files:  # nor in the WAL: the value itself never reaches the disk
        assert secret.encode() not in path.read_bytes(), path


def test_a_revoked_token_stops_working_at_once(live_server: LiveServer, api: httpx.Client) -> None:
    _add_user(api, "carol")
    made = api.post("/api/v1/tokens", json={"user": "carol"}).json()
    assert _status(live_server, made["token"]) == 200  # now in the authentication cache
    revoked = api.delete(f"/api/v1/tokens/{made['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert _status(live_server, made["token"]) == 401
    assert api.delete("/api/v1/tokens/999999").status_code == 404


def test_an_expiring_token_stops_working_when_it_expires(
    live_server: LiveServer, api: httpx.Client
) -> None:
    _add_user(api, "dave")
    made = api.post("/api/v1/tokens", json={"user": "dave", "expires_in": 1.5}).json()
    assert made["expires_at"] is not None
    assert _status(live_server, made["token"]) == 200
    wait_for(lambda: _status(live_server, made["token"]) == 401, timeout=10, interval=0.1)
    past = api.post("/api/v1/tokens", json={"expires_at": "2001-01-01T00:00:00Z"})
    assert past.status_code == 422 and past.json()["error"]["field"] == "expires_at"
    both = api.post("/api/v1/tokens", json={"expires_in": 5, "expires_at": "2101-01-01T00:00:00Z"})
    assert both.status_code == 422


def test_users_manage_only_their_own_tokens(live_server: LiveServer, api: httpx.Client) -> None:
    tokens = {name: _add_user(api, name) for name in ("erin", "frank")}
    with (
        live_server.client(tokens["erin"]) as erin,
        live_server.client(tokens["frank"]) as frank,
    ):
        own = erin.post("/api/v1/tokens", json={"name": "ci"})
        assert own.status_code == 201 and own.json()["user"] == "erin"
        assert erin.post("/api/v1/tokens", json={"user": "frank"}).status_code == 403
        assert {t["user"] for t in erin.get("/api/v1/tokens").json()["items"]} == {"erin"}
        assert erin.get("/api/v1/tokens", params={"user": "frank"}).json()["items"] == []
        # another user's token is answered as missing, and stays valid
        assert frank.delete(f"/api/v1/tokens/{own.json()['id']}").status_code == 404
        assert _status(live_server, own.json()["token"]) == 200
        assert erin.delete(f"/api/v1/tokens/{own.json()['id']}").status_code == 200
        assert _status(live_server, own.json()["token"]) == 401


def test_removing_a_user_revokes_their_tokens_and_keeps_their_jobs(
    live_server: LiveServer, api: httpx.Client
) -> None:
    token = _add_user(api, "gina")
    with live_server.client(token) as gina:
        job = gina.post("/api/v1/jobs", json={"entrypoint": "true"}).json()
    assert _status(live_server, token) == 200
    assert api.delete("/api/v1/users/gina").status_code == 204
    assert _status(live_server, token) == 401
    assert api.delete("/api/v1/users/gina").status_code == 404
    assert api.get(f"/api/v1/jobs/{job['id']}").json()["owner"] == "gina"
    conflict = api.delete("/api/v1/users/admin")  # the last admin stays
    assert conflict.status_code == 409 and "last admin" in conflict.json()["error"]["message"]
    # the name cannot be given to someone new while it still owns gina's jobs
    reused = api.post("/api/v1/users", json={"name": "gina"})
    assert reused.status_code == 409 and reused.json()["error"]["field"] == "name"
    assert "removed user" in reused.json()["error"]["message"]
    live_server.wait_state(job["id"], "SUCCEEDED")
    assert api.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    assert api.post("/api/v1/users", json={"name": "gina"}).status_code == 201


def test_the_sdk_manages_users_and_tokens(live_server: LiveServer) -> None:
    with Client(live_server.url, live_server.token) as admin:
        made = admin.create_user("hank")
        assert {u.name for u in admin.list_users()} >= {"admin", "hank"}
        extra = admin.create_token("hank", name="nb", expires_in=3600)
        assert extra.expires_at is not None
        with Client(live_server.url, extra.token) as hank:
            assert hank.whoami().name == "hank"
            assert [t.name for t in hank.list_tokens()] == ["initial", "nb"]
        admin.revoke_token(extra.id)
        with Client(live_server.url, extra.token) as hank, pytest.raises(ApiError) as caught:
            hank.whoami()
        assert caught.value.status == 401
        admin.remove_user("hank")
        with Client(live_server.url, made.token) as hank, pytest.raises(ApiError):
            hank.whoami()


def _jobyard(server: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "jobyard", "--url", server.url, "--token", server.token]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_cli_adds_users_and_prints_tokens_alone_on_the_last_line(
    live_server: LiveServer,
) -> None:
    added = _jobyard(live_server, "user", "add", "ivy")
    assert added.returncode == 0, added.stderr
    first = added.stdout.strip().splitlines()[-1]
    assert _status(live_server, first) == 200
    created = _jobyard(live_server, "token", "create", "--user", "ivy", "--expires", "2h")
    assert created.returncode == 0, created.stderr
    second = created.stdout.strip().splitlines()[-1]
    assert second != first and _status(live_server, second) == 200
    listed = _jobyard(live_server, "token", "list", "--user", "ivy", "--json")
    tokens = json.loads(listed.stdout)
    assert second not in listed.stdout and len(tokens) == 2 and tokens[1]["expires_at"]
    revoked = _jobyard(live_server, "token", "revoke", str(tokens[1]["id"]))
    assert revoked.returncode == 0, revoked.stderr
    assert _status(live_server, second) == 401 and _status(live_server, first) == 200
    users = _jobyard(live_server, "user", "list")
    assert "ivy" in users.stdout and first not in users.stdout
    bad = _jobyard(live_server, "token", "create", "--expires", "soon")
    assert bad.returncode == 2 and "--expires" in bad.stderr
    assert _jobyard(live_server, "user", "remove", "ivy").returncode == 0
    assert _status(live_server, first) == 401
    missing = _jobyard(live_server, "user", "remove", "ivy")
    assert missing.returncode == 1 and "not found" in missing.stderr


# Operations anyone may call: health, the version Ray's client asks first, the dashboard's
# sign-in page and assets (the dashboard's API needs a session, checked below).
_PUBLIC = {("GET", "/api/v1/health"), ("GET", "/api/version")}


def _operations(base: str) -> list[tuple[str, str]]:
    spec = httpx.get(f"{base}/openapi.json", timeout=30).json()
    found = []
    for path, methods in spec["paths"].items():
        for method in methods:
            if method.upper() in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                found.append((method.upper(), path))
    return found


def _refused(path: str, response: httpx.Response) -> bool:
    if path.startswith("/v1/job"):  # the PaaS face: HTTP 200 with its token error code
        return response.json().get("code") == 176
    return response.status_code in (401, 403)


def test_every_operation_refuses_missing_expired_and_revoked_tokens(home: Path) -> None:
    with running_server(make_settings(home), ray=True) as server, server.client() as admin:
        admin.post("/api/v1/users", json={"name": "kim"})
        revoked = admin.post("/api/v1/tokens", json={"user": "kim"}).json()
        admin.delete(f"/api/v1/tokens/{revoked['id']}")
        expired = admin.post("/api/v1/tokens", json={"user": "kim", "expires_in": 0.5}).json()
        wait_for(lambda: _status(server, expired["token"]) == 401, timeout=10, interval=0.1)
        credentials: list[dict[str, str]] = [
            {},
            {"Authorization": f"Bearer {revoked['token']}"},
            {"Authorization": f"Bearer {expired['token']}"},
            {"Authorization": "Bearer jy_not-a-token"},
        ]
        checked = 0
        for base in (server.url, server.ray_url):
            for method, template in _operations(base):
                if (method, template) in _PUBLIC:
                    continue
                path = re.sub(r"\{[^}]+\}", "1", template)
                for headers in credentials:
                    response = httpx.request(method, base + path, headers=headers, timeout=30)
                    assert _refused(path, response), (method, path, headers, response.text)
                    assert revoked["token"] not in response.text
                    checked += 1
        assert checked >= 4 * 30  # the faces are all there
        # and the dashboard's API without a session
        assert httpx.get(f"{server.url}/ui/api/jobs", timeout=10).status_code == 401
