"""Private registries: a user's stored login pulls their jobs' images, and nobody else's.

A real server process (debug log, access log on) with podman, and a real registry (Debian's
docker-registry) that asks for a login (bcrypt htpasswd). A job in its image fails
IMAGE_PULL_FAILED without its owner's login, or with a wrong one; pulls with the right one;
never with another user's. The login's auth file is private while the pull runs and gone once
it ends (or the job is stopped); the password is in no answer, event, job log or server log.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from jobyard.executors.slurm.executor import SlurmExecutor
from jobyard.model import JobSpec, Placement, TerminationReason
from jobyard.model.job import TaskPlacement
from jobyard.model.registry import RegistryLogin
from tests.helpers import wait_for, wait_report
from tests.integration.container_support import (
    Images,
    PrivateImage,
    container_settings,
    gone_in_time,
    images_fixture,  # noqa: F401 - the images fixture
    needs_podman,
    private_image,
    slow_proxy,
)
from tests.integration.server_process import ServerProcess
from tests.integration.slurm_support import (
    SKIP_REASON as NO_SLURM,
    holding_the_cluster,
    slurm_settings,
)

pytestmark = needs_podman
CREDENTIALS = "/api/v1/registry-credentials"


@pytest.fixture
def private(images: Images) -> Iterator[PrivateImage]:
    with private_image(images) as made:
        yield made


@pytest.fixture
def server(tmp_path: Path, images: Images) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path / "home",
        tmp_path / "server.log",
        JOBYARD_LOG_LEVEL="debug",
        JOBYARD_ACCESS_LOG="true",
        JOBYARD_CONTAINER_RUNTIME="podman",
        JOBYARD_CONTAINER_RUNTIME_ARGS=json.dumps({"pull_args": ["--tls-verify=false"]}),
    )
    proc.start()
    yield proc
    proc.stop()
    assert gone_in_time(proc.home) == []


def _forms(secret: str) -> set[str]:
    raw = secret.encode()
    return {
        secret,
        urllib.parse.quote(secret, safe=""),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }


def _users(server: ServerProcess, *names: str) -> list[str]:
    with server.client() as admin:
        return [admin.post("/api/v1/users", json={"name": n}).json()["token"] for n in names]


def _run(server: ServerProcess, token: str, image: str, answers: list[str]) -> dict[str, Any]:
    """Submit `echo` in `image` as the token's user; the job once it ended, its events and log
    kept in `answers`."""
    with server.client(token) as http:
        submitted = http.post(
            "/api/v1/jobs", json={"entrypoint": "echo in-private", "image": image}
        )
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["id"]
        done = server.wait_state(job_id, "SUCCEEDED", "FAILED", "STOPPED", timeout=60)
        answers += [submitted.text, http.get(f"/api/v1/jobs/{job_id}").text]
        events = http.get(f"/api/v1/jobs/{job_id}/events")
        answers += [events.text, http.get(f"/api/v1/jobs/{job_id}/logs").text]
        done["events"] = events.json()["items"]
        return done


def _pull_refused(job: dict[str, Any]) -> bool:
    said = " ".join(e["message"] for e in job["events"])
    return (
        job["state"] == "FAILED"
        and job["reason"] == "IMAGE_PULL_FAILED"
        and ("unauthorized" in said or "authentication required" in said)
    )


def _auth_dirs(home: Path) -> list[Path]:
    return sorted((home / "logs").rglob("*.auth"))


def test_a_private_image_pulls_with_its_owner_s_login_and_no_other(
    server: ServerProcess, private: PrivateImage
) -> None:
    alice, bob = _users(server, "alice", "bob")
    answers: list[str] = []
    wrong = "wrong-" + private.password
    right = {"registry": private.registry, "username": private.username}

    assert _pull_refused(_run(server, bob, private.image, answers))  # no login: refused
    with server.client(alice) as http:
        stored = http.post(CREDENTIALS, json={**right, "password": wrong})
        assert stored.status_code == 201, stored.text
        assert set(stored.json()) == {"registry", "username", "created_at", "updated_at"}
        answers.append(stored.text)
    assert _pull_refused(_run(server, alice, private.image, answers))  # her login, wrong
    with server.client(alice) as http:
        replaced = http.post(CREDENTIALS, json={**right, "password": private.password})
        assert replaced.status_code == 200, replaced.text  # the one she had, replaced
        listed = http.get(CREDENTIALS)
        assert [(i["registry"], i["username"]) for i in listed.json()["items"]] == [
            (private.registry, private.username)
        ]
        answers += [replaced.text, listed.text]
    # alice's login is hers: bob's job never pulls with it
    assert _pull_refused(_run(server, bob, private.image, answers))
    with server.client(bob) as http:
        assert http.get(CREDENTIALS).json() == {"items": []}
        gone = http.delete(f"{CREDENTIALS}/{private.registry}")
        assert gone.status_code == 404 and gone.json()["error"]["field"] == "registry"

    done = _run(server, alice, private.image, answers)
    assert (done["state"], done["exit_code"]) == ("SUCCEEDED", 0), done
    assert answers[-1] == "in-private\n"  # its log: it ran in the image it pulled
    assert _auth_dirs(server.home) == []  # the pull's auth file went with the pull

    with server.client(alice) as http:
        assert http.delete(f"{CREDENTIALS}/{private.registry}").status_code == 204
        assert http.get(CREDENTIALS).json() == {"items": []}
    _assert_nowhere(server, {private.password, wrong}, answers)


def _assert_nowhere(server: ServerProcess, passwords: set[str], answers: list[str]) -> None:
    logs = [p.read_text(errors="replace") for p in (server.home / "logs").rglob("*") if p.is_file()]
    places = {"server log": [server.output()], "answers": answers, "job files": logs}
    for password in passwords:
        for form in _forms(password):
            for where, texts in places.items():
                assert not any(form in text for text in texts), f"{form!r} in the {where}"


def test_the_auth_file_is_private_while_the_pull_runs_and_gone_after_a_stop(
    server: ServerProcess, private: PrivateImage
) -> None:
    """Through a proxy that holds each connection a while, so the pull lasts long enough to
    look at its auth file; the first job is stopped while it pulls, the second pulls."""
    (alice,) = _users(server, "alice")
    with slow_proxy(private.registry, 0.8) as registry, server.client(alice) as http:
        login = {"registry": registry, "username": private.username, "password": private.password}
        assert http.post(CREDENTIALS, json=login).status_code == 201
        image = private.image.replace(private.registry, registry)
        for stop in (True, False):
            job = http.post("/api/v1/jobs", json={"entrypoint": "true", "image": image}).json()
            folder = wait_for(lambda: _auth_dirs(server.home) or None, timeout=20)[0]
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700
            auth = folder / "config.json"
            assert stat.S_IMODE(auth.stat().st_mode) == 0o600
            assert list(json.loads(auth.read_text())["auths"]) == [registry]
            # the job's record says so once the pass that started it is committed
            reason = wait_for(lambda j=job["id"]: server.job(j)["pending_reason"], timeout=10)
            assert reason == "PULLING"
            if stop:
                assert http.post(f"/api/v1/jobs/{job['id']}/stop").status_code == 202
                assert server.wait_state(job["id"], "STOPPED", timeout=30)["state"] == "STOPPED"
            else:
                done = server.wait_state(job["id"], "SUCCEEDED", "FAILED", timeout=60)
                assert done["state"] == "SUCCEEDED", done
            # gone with the pull's end (the stop's clean-up may end just after the job does)
            assert wait_for(lambda: _auth_dirs(server.home) == [], timeout=10)
    subprocess.run(["podman", "rmi", "-f", image], capture_output=True, check=False)


def test_bad_logins_are_4xx_naming_the_field_and_never_echo_the_password(
    server: ServerProcess,
) -> None:
    secret = "never-echoed-" + os.urandom(6).hex()
    good = {"registry": "reg.example:5000", "username": "u", "password": secret}
    cases = [
        ({**good, "registry": "not a host"}, "registry"),
        ({**good, "registry": "https://"}, "registry"),
        ({**good, "username": "a:b"}, "username"),
        ({**good, "username": ""}, "username"),
        ({**good, "password": ""}, "password"),
        ({k: v for k, v in good.items() if k != "password"}, "password"),
        ({**good, "extra": secret}, "extra"),
        ({**good, "password": 7}, "password"),
    ]
    with server.client() as http:
        for body, field in cases:
            answer = http.post(CREDENTIALS, json=body)
            assert answer.status_code == 422, (body, answer.text)
            assert answer.json()["error"]["field"] == field, answer.text
            assert secret not in answer.text
        assert http.get(CREDENTIALS).json() == {"items": []}
    with server.client("jy_not-a-token-at-all-0000000") as stranger:
        assert stranger.post(CREDENTIALS, json=good).status_code == 401
    assert secret not in server.output()


def test_the_cli_logs_in_lists_and_logs_out_without_showing_the_password(
    server: ServerProcess, tmp_path: Path
) -> None:
    secret = "cli-secret-" + os.urandom(6).hex()
    env = {
        **os.environ,
        "JOBYARD_URL": server.url,
        "JOBYARD_TOKEN": server.token,
        "JOBYARD_HOME": str(tmp_path / "client-home"),
        "COLUMNS": "200",
    }

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "jobyard", "registry", *args],
            input=stdin,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert secret not in done.stdout + done.stderr
        return done

    stored = cli("login", "HTTPS://Reg.Example:5000/", "-u", "me", "--password-stdin", stdin=secret)
    assert stored.returncode == 0, stored.stderr
    assert "login to reg.example:5000 as me stored" in stored.stderr
    listed = cli("list", "--json")
    assert [(i["registry"], i["username"]) for i in json.loads(listed.stdout)] == [
        ("reg.example:5000", "me")
    ]
    assert "reg.example:5000" in cli("list").stdout
    assert cli("login", "reg.example", "-u", "me", "--password-stdin").returncode != 0  # empty
    assert cli("logout", "reg.example:5000").returncode == 0
    missing = cli("logout", "reg.example:5000")
    assert missing.returncode != 0 and "reg.example:5000" in missing.stderr
    assert json.loads(cli("list", "--json").stdout) == []
    assert secret not in server.output()


@pytest.mark.slurm
@pytest.mark.skipif(NO_SLURM is not None, reason=str(NO_SLURM))
async def test_on_slurm_the_node_pulls_with_the_owner_s_login(
    images: Images, private: PrivateImage, home: Path, tmp_path: Path
) -> None:
    """The batch script's pull on the node: refused without a login, done with the owner's
    (the placement's, as the scheduler hands it over), each task's auth file gone after."""
    settings = container_settings(home, executor="slurm", slurm=slurm_settings())
    login = RegistryLogin(
        registry=private.registry,
        username=private.username,
        password=SecretStr(private.password),
    )
    with holding_the_cluster(tmp_path):
        ex = SlurmExecutor(settings)
        try:
            (refused,) = await ex.start(_placement(home, private.image, "true", []))
            report = await wait_report(ex, refused.handle, timeout=60)
            assert (report.exit_code, report.reason) == (125, TerminationReason.IMAGE_PULL_FAILED)
            assert "unauthorized" in report.message or "authentication" in report.message
            job = _placement(home, private.image, "echo pulled", [login], replicas=2)
            started = await ex.start(job)
            assert sorted(p.name for p in (home / "logs").rglob("*.auth")) == [
                f"{t.name}.auth" for t in job.tasks
            ]
            for task in started:
                report = await wait_report(ex, task.handle, timeout=60)
                assert report.exit_code == 0, ex.read_log(task.handle, 0, 4096)
            assert ex.read_log(started[0].handle, 0, 100) == b"pulled\n"
            assert _auth_dirs(home) == []
            logs = [p.read_bytes() for p in (home / "logs").rglob("*") if p.is_file()]
            assert not any(private.password.encode() in text for text in logs)
        finally:
            await ex.close()
    assert gone_in_time(home) == []


_ids = iter(range(30_000_000 + os.getpid() * 100, 30_000_000 + os.getpid() * 100 + 100))


def _placement(
    home: Path, image: str, entrypoint: str, logins: list[RegistryLogin], replicas: int = 1
) -> Placement:
    job_id = next(_ids)
    spec = JobSpec(entrypoint=entrypoint, image=image, replicas=replicas, working_dir=str(home))
    tasks = [
        TaskPlacement(index=i, name=f"job{job_id}-worker-{i}", node="n") for i in range(replicas)
    ]
    return Placement(
        job_id=job_id,
        display_id=f"job{job_id}",
        owner="alice",
        spec=spec,
        tasks=tasks,
        registry_logins=logins,
    )
