"""The Ray job API on its own listener, spoken to as raw HTTP/WebSocket:
the exact shapes Ray's client relies on, and every kind of bad input."""

from __future__ import annotations

import io
import os
import signal
import socket
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.helpers import LiveServer, make_settings, running_server, wait_for

PY = sys.executable
LIMIT = 64 * 1024  # max_package_bytes of these tests


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("ray") / "home"
    with running_server(make_settings(home, max_package_bytes=LIMIT), ray=True) as live:
        yield live


@pytest.fixture
def ray(server: LiveServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.ray_url, headers=headers, timeout=30) as client:
        yield client


def submit(ray: httpx.Client, entrypoint: str, **fields: Any) -> str:
    response = ray.post("/api/jobs/", json={"entrypoint": entrypoint, **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"job_id", "submission_id"}
    return str(body["submission_id"])


def wait_status(ray: httpx.Client, ref: str, *statuses: str, timeout: float = 20) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = ray.get(f"/api/jobs/{ref}").json()
        return job if job["status"] in statuses else None

    return wait_for(done, timeout)


def entry_output(logs: str) -> str:
    """The entrypoint's own output: what follows Ray's lines at the top of the job's log."""
    head, found, rest = logs.partition("Running entrypoint for job ")
    assert found and head.endswith("Runtime env is setting up.\n"), logs
    return rest.partition("\n")[2]


def job_output(ray: httpx.Client, ref: str) -> str:
    return entry_output(ray.get(f"/api/jobs/{ref}/logs").json()["logs"])


def zip_bytes(entries: dict[str, str], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in entries.items():
            archive.writestr(name, text)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


# ---- the listener, versions and tokens ----------------------------------------------------------


def test_version_is_what_rays_client_parses(ray: httpx.Client) -> None:
    response = ray.get("/api/version")
    assert response.status_code == 200
    body = response.json()
    assert body["version"] == "4" and int(body["version"]) == 4
    major, minor = (int(part) for part in body["ray_version"].split(".")[:2])
    assert (major, minor) >= (2, 8)


def test_missing_token_is_401_and_a_wrong_one_403(server: LiveServer) -> None:
    url = server.ray_url
    assert httpx.get(f"{url}/api/jobs/").status_code == 401
    wrong = {"Authorization": "Bearer jy_not-a-token"}
    assert httpx.get(f"{url}/api/jobs/", headers=wrong).status_code == 403
    assert "jy_not-a-token" not in httpx.get(f"{url}/api/jobs/", headers=wrong).text
    # Ray's own server also takes X-Ray-Authorization and a cookie.
    other = {"X-Ray-Authorization": f"Bearer {server.token}"}
    assert httpx.get(f"{url}/api/jobs/", headers=other).status_code == 200
    cookies = {"ray-authentication-token": server.token}
    assert httpx.get(f"{url}/api/jobs/", cookies=cookies).status_code == 200


def test_the_native_api_is_not_on_the_ray_listener(ray: httpx.Client) -> None:
    assert ray.get("/api/v1/jobs").status_code == 404


# ---- jobs ---------------------------------------------------------------------------------------


def test_submit_get_list_logs_delete(ray: httpx.Client) -> None:
    sid = submit(
        ray,
        "echo out; echo err >&2",
        submission_id="face_ray_1",
        metadata={"task_type": "demo"},
        runtime_env={"env_vars": {"A": "1"}},
    )
    assert sid == "face_ray_1"
    job = wait_status(ray, sid, "SUCCEEDED")
    assert job["type"] == "SUBMISSION" and job["entrypoint"] == "echo out; echo err >&2"
    assert job["message"] == "Job finished successfully." and job["error_type"] == ""
    assert isinstance(job["start_time"], int) and job["end_time"] >= job["start_time"]
    assert job["metadata"] == {"task_type": "demo"}
    assert job["runtime_env"] == {"env_vars": {"A": "1"}}
    assert isinstance(job["driver_info"]["pid"], str) and job["driver_exit_code"] == 0
    for key in ("driver_agent_http_address", "driver_node_id", "job_id"):
        assert key in job
    # By job_id as well as submission_id; with and without the trailing slash.
    assert ray.get(f"/api/jobs/{job['job_id']}").json()["submission_id"] == sid
    assert ray.get(f"/api/jobs/{sid}/").json()["job_id"] == job["job_id"]
    listed = ray.get("/api/jobs/").json()
    assert sid in [item["submission_id"] for item in listed]
    assert ray.get("/api/jobs").json() == listed
    logs = ray.get(f"/api/jobs/{sid}/logs").json()
    assert set(logs) == {"logs"} and "out\n" in logs["logs"] and "err\n" in logs["logs"]
    assert sorted(entry_output(logs["logs"]).splitlines()) == ["err", "out"]
    deleted = ray.delete(f"/api/jobs/{sid}")
    assert deleted.status_code == 200 and deleted.json() == {"deleted": True}
    assert ray.get(f"/api/jobs/{sid}").status_code == 404


def test_a_pending_job_has_nulls_where_ray_has_them(ray: httpx.Client) -> None:
    blocker = submit(ray, "sleep 60", entrypoint_num_cpus=8)  # the whole test pool
    wait_status(ray, blocker, "RUNNING")
    waiting = submit(ray, "true", entrypoint_num_cpus=8, entrypoint_memory=2**30)
    job = ray.get(f"/api/jobs/{waiting}").json()
    assert job["status"] == "PENDING"
    assert job["message"].startswith("Job has not started yet. It may be waiting for resources")
    for key in ("driver_info", "end_time", "driver_exit_code"):
        assert job[key] is None
    assert job["entrypoint_num_cpus"] == 8 and job["entrypoint_memory"] == 2**30
    assert ray.post(f"/api/jobs/{waiting}/stop").json() == {"stopped": True}
    assert wait_status(ray, waiting, "STOPPED")["start_time"] is not None
    assert ray.post(f"/api/jobs/{blocker}/stop").json() == {"stopped": True}
    wait_status(ray, blocker, "STOPPED")


def test_resources_that_never_fit_are_refused(ray: httpx.Client) -> None:
    response = ray.post("/api/jobs/", json={"entrypoint": "true", "entrypoint_num_gpus": 1})
    assert response.status_code == 400 and "gpus" in response.text
    custom = {"entrypoint": "true", "entrypoint_resources": {"NPU": 1}}
    assert ray.post("/api/jobs/", json=custom).status_code == 400
    zero = {"entrypoint": "true", "entrypoint_resources": {"NPU": 0}, "entrypoint_num_cpus": 1}
    sid = submit(ray, **zero)
    job = wait_status(ray, sid, "SUCCEEDED")
    assert job["entrypoint_num_cpus"] == 1


def test_failure_message_carries_the_exit_code_and_last_lines(ray: httpx.Client) -> None:
    sid = submit(ray, "echo something broke; exit 3")
    job = wait_status(ray, sid, "FAILED")
    assert job["error_type"] == "JOB_ENTRYPOINT_COMMAND_ERROR"
    assert job["driver_exit_code"] == 3
    assert "exit code 3" in job["message"] and "something broke" in job["message"]


def test_stop_a_running_job_then_stop_and_delete_rules(ray: httpx.Client) -> None:
    sid = submit(ray, "sleep 60")
    wait_status(ray, sid, "RUNNING")
    refused = ray.delete(f"/api/jobs/{sid}")
    assert refused.status_code == 400 and "non-terminal" in refused.text
    stopped = ray.post(f"/api/jobs/{sid}/stop")
    assert stopped.status_code == 200 and stopped.json() == {"stopped": True}
    job = wait_status(ray, sid, "STOPPED")
    assert job["driver_exit_code"] is None and job["end_time"] is not None
    assert ray.post(f"/api/jobs/{sid}/stop").json() == {"stopped": False}
    assert ray.post("/api/jobs/nope/stop").status_code == 404


def test_a_job_being_stopped_is_still_running_for_ray(ray: httpx.Client) -> None:
    """STOPPING is not terminal: a Ray client takes STOPPED as final, and the stop may still
    end otherwise; so it reads RUNNING until the job has really stopped."""
    sid = submit(ray, "trap '' TERM; echo ready; sleep 30")  # SIGKILL after the 2 s grace
    wait_for(lambda: ray.get(f"/api/jobs/{sid}/logs").json()["logs"].endswith("\nready\n"))
    assert ray.post(f"/api/jobs/{sid}/stop").json() == {"stopped": True}
    job = ray.get(f"/api/jobs/{sid}").json()
    assert (job["status"], job["message"]) == ("RUNNING", "Job is being stopped.")
    assert job["end_time"] is None
    assert wait_status(ray, sid, "STOPPED")["message"] == "Job was intentionally stopped."


def test_duplicate_submission_id_is_400(ray: httpx.Client) -> None:
    submit(ray, "true", submission_id="face_ray_dup")
    again = ray.post("/api/jobs/", json={"entrypoint": "true", "submission_id": "face_ray_dup"})
    assert again.status_code == 400 and "already exists" in again.text


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"entrypoint": ""}, "entrypoint"),
        ({"entrypoint": "   "}, "entrypoint"),
        ({}, "entrypoint"),
        ({"entrypoint": 5}, "entrypoint"),
        ({"entrypoint": "true", "bogus": 1}, "bogus"),
        ({"entrypoint": "true", "runtime_env": {"uv": ["x"]}}, "runtime_env.uv"),
        ({"entrypoint": "true", "runtime_env": {"envVars": "{}"}}, "runtime_env.envVars"),
        ({"entrypoint": "true", "runtime_env": {"env_vars": {"A": 1}}}, "env_vars"),
        ({"entrypoint": "true", "runtime_env": {"pip": "rm -rf /"}}, "runtime_env.pip"),
        ({"entrypoint": "true", "runtime_env": {"pip": {"bogus": 1}}}, "runtime_env.pip.bogus"),
        (
            {"entrypoint": "true", "runtime_env": {"working_dir": "gcs://_ray_pkg_0.zip"}},
            "never uploaded",
        ),
        (
            {"entrypoint": "true", "runtime_env": {"working_dir": "file:///no/such.zip"}},
            "runtime_env.working_dir",
        ),
        (
            {"entrypoint": "true", "runtime_env": {"config": {"setup_timeout_seconds": 0}}},
            "runtime_env.config.setup_timeout_seconds",
        ),
        ({"entrypoint": "true", "metadata": {"a": 1}}, "metadata"),
        ({"entrypoint": "true", "metadata": {"x y" * 30: "v"}}, "metadata"),
        ({"entrypoint": "true", "entrypoint_num_cpus": -1}, "entrypoint_num_cpus"),
    ],
)
def test_bad_submissions_are_4xx_naming_the_field(
    ray: httpx.Client, body: dict[str, Any], named: str
) -> None:
    response = ray.post("/api/jobs/", json=body)
    assert response.status_code == 400, response.text
    assert named in response.json()


def test_a_file_uri_that_is_not_a_zip_is_refused(ray: httpx.Client, tmp_path: Path) -> None:
    fake = tmp_path / "fake.zip"
    fake.write_text("not a zip")
    body = {"entrypoint": "true", "runtime_env": {"working_dir": f"file://{fake}"}}
    response = ray.post("/api/jobs/", json=body)
    assert response.status_code == 400 and "not a zip" in response.json()


def test_unknown_job_is_404_on_every_route(ray: httpx.Client) -> None:
    for method, path in (
        ("GET", "/api/jobs/nope"),
        ("GET", "/api/jobs/nope/logs"),
        ("POST", "/api/jobs/nope/stop"),
        ("DELETE", "/api/jobs/nope"),
    ):
        assert ray.request(method, path).status_code == 404


def test_another_users_job_looks_missing(server: LiveServer, ray: httpx.Client) -> None:
    sid = submit(ray, "true", submission_id="face_ray_admins")
    with server.client() as native:
        token = native.post("/api/v1/users", json={"name": "rayuser"}).json()["token"]
    other = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.ray_url, headers=other) as them:
        assert them.get(f"/api/jobs/{sid}").status_code == 404
        assert sid not in [j["submission_id"] for j in them.get("/api/jobs/").json()]
        assert them.post(f"/api/jobs/{sid}/stop").status_code == 404


# ---- working directories ------------------------------------------------------------------------


def test_package_upload_then_working_dir(ray: httpx.Client) -> None:
    name = "_ray_pkg_00000000000000a1.zip"
    assert ray.get(f"/api/packages/gcs/{name}").status_code == 404
    package = zip_bytes(
        {
            "main.py": "import helper\nhelper.hello()\n",
            "helper.py": "def hello():\n    print('hi')\n",
        }
    )
    assert ray.put(f"/api/packages/gcs/{name}", content=package).status_code == 200
    assert ray.get(f"/api/packages/gcs/{name}").status_code == 200
    # The module imports from the working directory (its cwd and PYTHONPATH), even from /tmp.
    entrypoint = f"cd /tmp && {PY} -c 'import helper; helper.hello()' && {PY} $OLDPWD/main.py"
    sid = submit(ray, entrypoint, runtime_env={"working_dir": f"gcs://{name}"})
    job = wait_status(ray, sid, "SUCCEEDED", "FAILED")
    logs = ray.get(f"/api/jobs/{sid}/logs").json()["logs"]
    assert job["status"] == "SUCCEEDED", logs
    assert entry_output(logs) == "hi\nhi\n"


def test_py_modules_are_importable_from_anywhere(ray: httpx.Client, tmp_path: Path) -> None:
    name = "_ray_pkg_00000000000000c3.zip"
    uploaded = zip_bytes({"shared_util/__init__.py": "WORD = 'uploaded'\n"})
    assert ray.put(f"/api/packages/gcs/{name}", content=uploaded).status_code == 200
    local = tmp_path / "local_mod.zip"
    local.write_bytes(zip_bytes({"local_mod.py": "WORD = 'local'\n"}))
    modules = [f"gcs://{name}", f"file://{local}"]
    entrypoint = (
        f"cd / && {PY} -c 'import shared_util, local_mod; print(shared_util.WORD, local_mod.WORD)'"
    )
    sid = submit(ray, entrypoint, runtime_env={"py_modules": modules})
    job = wait_status(ray, sid, "SUCCEEDED", "FAILED")
    assert (job["status"], job_output(ray, sid)) == ("SUCCEEDED", "uploaded local\n")


def test_packages_are_per_user(server: LiveServer, ray: httpx.Client) -> None:
    name = "_ray_pkg_00000000000000b2.zip"
    assert ray.put(f"/api/packages/gcs/{name}", content=zip_bytes({"a": "1"})).status_code == 200
    with server.client() as native:
        token = native.post("/api/v1/users", json={"name": "pkguser"}).json()["token"]
    with httpx.Client(base_url=server.ray_url, headers={"Authorization": f"Bearer {token}"}) as c:
        assert c.get(f"/api/packages/gcs/{name}").status_code == 404


def test_file_zip_with_one_top_dir_is_unpacked_without_it(
    ray: httpx.Client, tmp_path: Path
) -> None:
    archive = tmp_path / "project.zip"
    archive.write_bytes(zip_bytes({"project/run.sh": "echo from-zip\n"}))
    body = {"working_dir": f"file://{archive}"}
    sid = submit(ray, "sh run.sh && pwd", runtime_env=body)
    job = wait_status(ray, sid, "SUCCEEDED", "FAILED")
    logs = entry_output(ray.get(f"/api/jobs/{sid}/logs").json()["logs"])
    assert job["status"] == "SUCCEEDED", logs
    assert logs.startswith("from-zip\n")
    workdir = Path(logs.splitlines()[1])
    assert ray.delete(f"/api/jobs/{sid}").status_code == 200
    assert not workdir.exists()  # the unpacked copy goes with the job


def test_a_directory_path_is_the_jobs_cwd(ray: httpx.Client, tmp_path: Path) -> None:
    sid = submit(ray, "pwd", runtime_env={"working_dir": str(tmp_path)})
    wait_status(ray, sid, "SUCCEEDED")
    assert job_output(ray, sid) == f"{tmp_path}\n"
    relative = ray.post(
        "/api/jobs/", json={"entrypoint": "pwd", "runtime_env": {"working_dir": "x"}}
    )
    assert relative.status_code == 400


@pytest.mark.parametrize(
    ("name", "entries", "links"),
    [
        ("_ray_pkg_0000000000000e01.zip", {"../escaped.txt": "x"}, None),
        ("_ray_pkg_0000000000000e02.zip", {"ok/../../escaped.txt": "x"}, None),
        ("_ray_pkg_0000000000000e03.zip", {"/tmp/escaped-absolute.txt": "x"}, None),
        ("_ray_pkg_0000000000000e04.zip", {"a.txt": "x"}, {"link": "/etc"}),
        ("_ray_pkg_0000000000000e05.zip", {"a.txt": "x"}, {"sub/link": "../../outside"}),
    ],
)
def test_unsafe_zips_are_refused_at_upload(
    ray: httpx.Client, name: str, entries: dict[str, str], links: dict[str, str] | None
) -> None:
    response = ray.put(f"/api/packages/gcs/{name}", content=zip_bytes(entries, links))
    assert response.status_code == 400, response.text
    assert ray.get(f"/api/packages/gcs/{name}").status_code == 404
    assert not Path("/tmp/escaped-absolute.txt").exists()


def test_unsafe_file_zip_is_refused_at_submit(ray: httpx.Client, tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    archive.write_bytes(zip_bytes({"../../evil.txt": "x"}))
    body = {"entrypoint": "true", "runtime_env": {"working_dir": f"file://{archive}"}}
    response = ray.post("/api/jobs/", json=body)
    assert response.status_code == 400 and "unsafe path" in response.json()
    assert not (tmp_path.parent / "evil.txt").exists()


def test_a_symlink_inside_the_directory_is_kept(ray: httpx.Client) -> None:
    name = "_ray_pkg_00000000000000c3.zip"
    package = zip_bytes({"data/real.txt": "real\n"}, {"alias.txt": "data/real.txt"})
    assert ray.put(f"/api/packages/gcs/{name}", content=package).status_code == 200
    sid = submit(ray, "cat alias.txt", runtime_env={"working_dir": f"gcs://{name}"})
    wait_status(ray, sid, "SUCCEEDED")
    assert job_output(ray, sid) == "real\n"


def test_not_a_zip_or_too_large_or_bad_names_are_refused(ray: httpx.Client) -> None:
    assert ray.put("/api/packages/gcs/_ray_pkg_1.zip", content=b"garbage").status_code == 400
    big = zip_bytes({"big.bin": "x" * (LIMIT + 1)})
    assert ray.put("/api/packages/gcs/_ray_pkg_2.zip", content=big).status_code == 413
    assert ray.put("/api/packages/s3/_ray_pkg_3.zip", content=zip_bytes({})).status_code == 400
    assert ray.put("/api/packages/gcs/..zip", content=zip_bytes({})).status_code in (400, 404)
    assert ray.put("/api/packages/gcs/x.tar.gz", content=b"x").status_code == 400
    assert ray.get("/api/packages/gcs/_ray_pkg_2.zip").status_code == 404


# ---- the WebSocket log tail ----------------------------------------------------------------------


def ws_url(server: LiveServer, ref: str) -> str:
    return server.ray_url.replace("http://", "ws://") + f"/api/jobs/{ref}/logs/tail"


def test_tail_streams_text_frames_and_closes_normally(
    server: LiveServer, ray: httpx.Client
) -> None:
    sid = submit(ray, "echo one; sleep 0.5; echo two")
    headers = {"Authorization": f"Bearer {server.token}"}
    frames: list[str] = []
    with connect(ws_url(server, sid), additional_headers=headers, open_timeout=10) as ws:
        for message in ws:
            assert isinstance(message, str)
            frames.append(message)
        assert ws.close_code == 1000
    assert entry_output("".join(frames)) == "one\ntwo\n"
    assert ray.get(f"/api/jobs/{sid}").json()["status"] == "SUCCEEDED"


def test_tail_of_unknown_job_or_without_token_fails_before_upgrade(server: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {server.token}"}
    with pytest.raises(InvalidStatus) as missing:
        connect(ws_url(server, "nope"), additional_headers=headers, open_timeout=10)
    assert missing.value.response.status_code == 404
    with pytest.raises(InvalidStatus) as anonymous:
        connect(ws_url(server, "nope"), open_timeout=10)
    assert anonymous.value.response.status_code == 401


def test_tail_ends_cleanly_when_the_client_leaves(server: LiveServer, ray: httpx.Client) -> None:
    sid = submit(ray, "echo start; sleep 30")
    headers = {"Authorization": f"Bearer {server.token}"}
    with connect(ws_url(server, sid), additional_headers=headers, open_timeout=10) as ws:
        received = ""
        while not received.endswith("start\n"):
            received += str(ws.recv(timeout=10))
        assert entry_output(received) == "start\n"
    assert ray.post(f"/api/jobs/{sid}/stop").json() == {"stopped": True}
    wait_status(ray, sid, "STOPPED")


# ---- `jobyard server`: one process, two listeners ----------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_jobyard_server_serves_the_ray_api_on_its_own_port(tmp_path: Path) -> None:
    home, port, ray_port = tmp_path / "home", _free_port(), _free_port()
    command = [PY, "-m", "jobyard", "server", "--home", str(home), "--port", str(port)]
    env = {**os.environ, "JOBYARD_RAY_PORT": str(ray_port)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:

        def version() -> int:
            try:
                token = (home / "admin.token").read_text().strip()
                headers = {"Authorization": f"Bearer {token}"}
                url = f"http://127.0.0.1:{ray_port}/api/version"
                return httpx.get(url, headers=headers).status_code
            except (OSError, httpx.HTTPError):
                return 0

        assert wait_for(version, timeout=30) == 200
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/health").status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught.
    assert process.returncode in (0, -signal.SIGTERM), out
    assert b"Application shutdown complete" in out
    assert f"Ray job API on http://127.0.0.1:{ray_port}" in out.decode()


def test_a_ray_port_asked_for_but_taken_stops_the_server(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ray_port = taken.getsockname()[1]
        command = [PY, "-m", "jobyard", "server", "--home", str(tmp_path / "home")]
        command += ["--port", str(_free_port()), "--ray-port", str(ray_port)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert f"Ray job API: cannot listen on 127.0.0.1:{ray_port}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("module", ["jobyard.executors.venv", "jobyard.service.runtime_env"])
def test_the_venv_builder_runs_under_its_name_and_the_one_queued_jobs_of_0_1_use(
    module: str, tmp_path: Path
) -> None:
    """A job's setup step builds its virtualenv with `python -m jobyard.executors.venv`; a job
    queued by jobyard 0.1.0 says `jobyard.service.runtime_env`, which still builds it. (httpx:
    the base interpreter has it, which the virtualenv sees, so pip installs nothing.)"""
    venv = tmp_path / "venv"
    build = [sys.executable, "-I", "-m", module, "venv", str(venv), "--", "--no-index", "httpx"]
    done = subprocess.run(build, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (venv / ".jobyard-ready").is_file() and (venv / "bin" / "python").exists()
    assert f"jobyard: installing --no-index httpx into {venv}" in done.stdout
    assert "Requirement already satisfied: httpx" in done.stdout
