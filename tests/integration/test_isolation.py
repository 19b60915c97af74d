"""Isolation on every face: the full matrix of routes x users. Another user's job is answered
exactly like a missing one (404, or the face's own not-found) on every route of the native,
PaaS, training and Ray APIs, the dashboard, the web terminal, the access (SSH / port proxy)
details, the port proxy and the SSH gateway;
lists never show it; the owner and admins get the same routes answered."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import connect

from tests.helpers import LiveServer, make_settings, running_server, wait_for

MISSING = "999999"
DEADLINE = 60.0  # seconds; generous, for a loaded 2-core machine (waits end as soon as met)


@dataclass(frozen=True)
class Route:
    face: str
    method: str
    path: str  # {id}: the job's numeric id; {ref}: its display id; {sid}: its submission id
    destructive: bool = False


ROUTES = [
    Route("native", "GET", "/api/v1/jobs/{id}"),
    Route("native", "GET", "/api/v1/jobs/{ref}"),
    Route("native", "GET", "/api/v1/jobs/{sid}"),
    Route("native", "GET", "/api/v1/jobs/{id}/events"),
    Route("native", "GET", "/api/v1/jobs/{id}/logs"),
    Route("native", "GET", "/api/v1/jobs/{id}/logs?follow=true"),
    Route("native", "GET", "/api/v1/jobs/{id}/metrics"),
    Route("native", "GET", "/api/v1/jobs/{id}/logs?timestamps=true"),
    Route("native", "GET", "/api/v1/jobs/{id}/access"),
    Route("native", "POST", "/api/v1/jobs/{id}/stop", destructive=True),
    Route("native", "DELETE", "/api/v1/jobs/{id}?force=true", destructive=True),
    Route("paas", "GET", "/v1/job?id={id}"),
    Route("paas", "DELETE", "/v1/job?id={id}", destructive=True),
    Route("training", "GET", "/api/jobs/{ref}"),
    Route("training", "GET", "/api/jobs/{ref}/events"),
    Route("training", "GET", "/api/jobs/{ref}/pods/{ref}-worker-0/logs"),
    Route("training", "GET", "/api/jobs/{ref}/pods/{ref}-worker-0/logs?follow=true"),
    Route("training", "GET", "/api/jobs/{ref}/pods/{ref}-worker-0/webterminal"),
    Route("training", "POST", "/api/jobs/{ref}/stop", destructive=True),
    Route("training", "DELETE", "/api/jobs/{ref}", destructive=True),
    Route("dashboard", "GET", "/ui/api/jobs/{id}"),
    Route("dashboard", "GET", "/ui/api/jobs/{ref}/logs"),
    Route("dashboard", "GET", "/ui/api/jobs/{id}/metrics"),
    Route("dashboard", "GET", "/ui/api/jobs/{id}/logs/stamped"),
    Route("dashboard", "POST", "/ui/api/jobs/{id}/stop", destructive=True),
    Route("dashboard", "DELETE", "/ui/api/jobs/{id}", destructive=True),
    Route("ray", "GET", "/api/jobs/{sid}"),
    Route("ray", "GET", "/api/jobs/{sid}/"),
    Route("ray", "GET", "/api/jobs/{sid}/logs"),
    Route("ray", "POST", "/api/jobs/{sid}/stop", destructive=True),
    Route("ray", "DELETE", "/api/jobs/{sid}", destructive=True),
]


@dataclass
class World:
    server: LiveServer
    tokens: dict[str, str]  # alice, bob, admin
    running: dict[str, Any]  # alice's running job (has a port: access details exist)
    finished: dict[str, Any]  # alice's finished job

    def http(self, user: str, face: str) -> httpx.Client:
        base = self.server.ray_url if face == "ray" else self.server.url
        if face == "dashboard":  # a signed-in browser: the session cookie and CSRF pair
            cookies = {"jobyard_session": self.tokens[user], "jobyard_csrf": "c"}
            headers = {"X-CSRF-Token": "c"}
            return httpx.Client(base_url=base, headers=headers, cookies=cookies, timeout=30)
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        return httpx.Client(base_url=base, headers=headers, timeout=30)

    def story(self) -> str:
        """The running job's state and events, for a failure message."""
        with self.server.client() as admin:
            job = admin.get(f"/api/v1/jobs/{self.running['id']}").json()
            events = admin.get(f"/api/v1/jobs/{self.running['id']}/events").json()
        return f"job {job['state']} ({job.get('termination_reason')}): {events}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home: Path = tmp_path_factory.mktemp("isolation") / "home"
    low = random.randrange(30000, 59000)
    settings = make_settings(
        home, gateway_port_range=f"{low}-{low + 63}", gateway_sweep_seconds=0.05
    )
    with running_server(settings, ray=True) as server, server.client() as admin:
        tokens = {"admin": server.token}
        for name in ("alice", "bob"):
            made = admin.post("/api/v1/users", json={"name": name})
            assert made.status_code == 201, made.text
            tokens[name] = made.json()["token"]
        with server.client(tokens["alice"]) as alice:
            ports = [{"port": 8080, "protocol": "http"}, {"port": 2222, "protocol": "ssh"}]
            # Runs until the fixture stops it: a fixed sleep ended mid-module on a loaded machine.
            body = {"entrypoint": "echo hi; exec sleep 100000", "ports": ports}
            running = alice.post("/api/v1/jobs", json=body).json()
            finished = alice.post("/api/v1/jobs", json={"entrypoint": "echo done"}).json()
        running = server.wait_state(running["id"], "RUNNING", timeout=DEADLINE)
        finished = server.wait_state(finished["id"], "SUCCEEDED", timeout=DEADLINE)
        yield World(server, tokens, running, finished)
        admin.post(f"/api/v1/jobs/{running['id']}/stop")
        server.wait_state(running["id"], "STOPPED", timeout=DEADLINE)  # no sleep outlives it


def _path(route: Route, job: dict[str, Any]) -> str:
    return route.path.format(id=job["id"], ref=job["display_id"], sid=job["submission_id"])


def _send(http: httpx.Client, route: Route, path: str) -> httpx.Response:
    with http.stream(route.method, path) as response:
        if "follow=true" in path and response.status_code == 200:
            return response  # a live stream: the status is the answer
        response.read()
        return response


def _not_found(route: Route, response: httpx.Response) -> bool:
    """The face's own answer for a job that does not exist."""
    if route.face == "paas":  # HTTP 200 with {code: 404, msg}
        return response.status_code == 200 and response.json().get("code") == 404
    if route.face == "training":
        return response.status_code == 404 and response.json().get("success") is False
    if route.face == "native":
        return response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    return response.status_code == 404


def _answered(route: Route, response: httpx.Response) -> bool:
    if route.face == "paas":
        return response.status_code == 200 and response.json().get("code") == 0
    return response.is_success


def _shape(response: httpx.Response) -> tuple[int, Any]:
    """Status and body without its message (which names the ref asked for)."""
    try:
        body = response.json()
    except ValueError:
        return response.status_code, None
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in ("msg", "message")}
        if isinstance(body.get("error"), dict):
            body["error"] = {k: v for k, v in body["error"].items() if k != "message"}
    return response.status_code, body


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.face}:{r.method}:{r.path}")
@pytest.mark.parametrize("which", ["running", "finished"])
def test_another_users_job_is_answered_as_missing(world: World, route: Route, which: str) -> None:
    job = getattr(world, which)
    missing = {"id": MISSING, "display_id": "ZZZZZZ", "submission_id": "no-such-job"}
    with world.http("bob", route.face) as bob:
        theirs = _send(bob, route, _path(route, job))
        nothing = _send(bob, route, _path(route, missing))
    assert _not_found(route, theirs), (theirs.status_code, theirs.text)
    assert _not_found(route, nothing), (nothing.status_code, nothing.text)
    if route.face != "ray":  # exactly the answer for a job that does not exist
        assert _shape(theirs) == _shape(nothing)
    # bob's attempts changed nothing
    assert (
        world.server.wait_state(job["id"], job["state"], timeout=DEADLINE)["state"] == job["state"]
    )


@pytest.mark.parametrize(
    "route", [r for r in ROUTES if not r.destructive], ids=lambda r: f"{r.face}:{r.path}"
)
@pytest.mark.parametrize("user", ["alice", "admin"])
def test_the_owner_and_admins_reach_every_route(world: World, route: Route, user: str) -> None:
    job = world.running
    with world.http(user, route.face) as http:
        response = _send(http, route, _path(route, job))
    assert _answered(route, response), (response.status_code, response.text[:300], world.story())


Lister = Callable[[httpx.Client], list[Any]]
LISTS: dict[str, tuple[str, Lister]] = {
    "native": ("native", lambda h: h.get("/api/v1/jobs").json()["items"]),
    "native-owner": ("native", lambda h: h.get("/api/v1/jobs?owner=alice").json()["items"]),
    "paas": ("paas", lambda h: h.get("/v1/job/jobs").json()["job"]),
    "paas-stats": ("paas", lambda h: h.get("/v1/job/stats").json()["jobs"]),
    "training": ("training", lambda h: h.post("/api/jobs", json={}).json()["data"]["jobs"]),
    "ray": ("ray", lambda h: h.get("/api/jobs/").json()),
    "dashboard": ("dashboard", lambda h: h.get("/ui/api/jobs").json()["items"]),
}


@pytest.mark.parametrize("name", sorted(LISTS))
def test_lists_never_show_another_users_jobs(world: World, name: str) -> None:
    face, listing = LISTS[name]
    with world.http("bob", face) as bob:
        assert listing(bob) == []
    with world.http("alice", face) as alice:
        assert len(listing(alice)) >= 2
    with world.http("admin", face) as admin:
        assert len(listing(admin)) >= 2


def test_the_ray_log_tail_of_another_users_job_is_refused(world: World) -> None:
    url = world.server.ray_url.replace("http", "ws", 1)
    path = f"{url}/api/jobs/{world.running['submission_id']}/logs/tail"

    def first_frame(user: str) -> str:
        headers = {"Authorization": f"Bearer {world.tokens[user]}"}
        with connect(path, additional_headers=headers, open_timeout=10) as ws:
            return str(ws.recv(timeout=10))

    assert "hi" in first_frame("alice")
    with pytest.raises((InvalidStatus, WebSocketException)):
        first_frame("bob")


def test_ssh_and_port_credentials_are_only_for_the_owner(world: World) -> None:
    with world.http("alice", "native") as alice:
        access = alice.get(f"/api/v1/jobs/{world.running['id']}/access").json()
    secrets = json.dumps(access)
    with world.http("bob", "native") as bob:
        listed = bob.get("/api/v1/jobs").text + bob.get("/api/v1/keys").text
        denied = bob.get(f"/api/v1/jobs/{world.running['id']}/access").text
    for key in ("ssh_password", "port_token", "password", "token"):
        value = _find(access, key)
        if value:
            assert value not in listed and value not in denied
    assert secrets  # the owner did get the access details


def _gateway_url(world: World, scheme: str) -> str:
    with world.http("alice", "native") as alice:

        def ready() -> str | None:
            urls = alice.get(f"/api/v1/jobs/{world.running['id']}/access").json()["urls"]
            found = [u[0] for u in urls.values() if u[0].startswith(scheme)]
            return found[0] if found else None

        try:
            return wait_for(ready, timeout=DEADLINE)
        except Exception as exc:
            raise AssertionError(world.story()) from exc


def test_the_port_proxy_opens_only_with_the_jobs_own_token(world: World) -> None:
    url = httpx.URL(_gateway_url(world, "http"))
    bare = str(url.copy_with(query=None))
    for user in ("bob", "alice", "admin"):  # an API token is not the port's token
        headers = {"Authorization": f"Bearer {world.tokens[user]}"}
        assert httpx.get(bare, headers=headers, timeout=10).status_code == 401
        assert httpx.get(bare, params={"token": world.tokens[user]}, timeout=10).status_code == 401
    assert httpx.get(str(url), timeout=10).status_code != 401  # the job's token opens it


def test_ssh_keys_open_only_their_owners_jobs(world: World) -> None:
    port = httpx.URL(_gateway_url(world, "ssh")).port or 0
    keys = {user: asyncssh.generate_private_key("ssh-ed25519") for user in ("alice", "bob")}
    for user, key in keys.items():
        with world.http(user, "native") as http:
            public = key.export_public_key().decode()
            answer = http.post("/api/v1/keys", json={"name": "laptop", "public_key": public})
            assert answer.status_code == 201, answer.text

    async def login(user: str) -> str:
        async with asyncssh.connect(
            "127.0.0.1",
            port,
            username=world.running["display_id"],
            client_keys=[keys[user]],
            known_hosts=None,
            password=None,
        ) as conn:
            return str((await conn.run("echo inside", check=False)).stdout)

    assert asyncio.run(login("alice")).strip() == "inside"
    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(login("bob"))


def _find(data: Any, key: str) -> str | None:
    if isinstance(data, dict):
        for k, v in data.items():
            if k == key and isinstance(v, str):
                return v
            found = _find(v, key)
            if found:
                return found
    if isinstance(data, list):
        for item in data:
            found = _find(item, key)
            if found:
                return found
    return None
