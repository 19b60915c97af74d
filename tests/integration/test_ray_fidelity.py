"""The Ray job API side by side with a real Ray head: the behaviours Ray's own job-server tests
check (our own tests, written for jobyard), and where a real head and this face used to
differ: pip environments that see the base interpreter's packages, the runtime_env keys Ray's
client adds, setup timeouts and setup failures with Ray's error type, OMP_NUM_THREADS,
JobDetails' ids and addresses, Ray's 404 wording, a tokenless /api/version, and Ray's lines
at the top of a job's log. Ray's client runs in this process; no `ray` CLI, no cluster."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import shutil
import socket
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import LiveServer, make_settings, running_server, wait_for

sdk = pytest.importorskip("ray.job_submission", reason="the ray client is not installed")
PY = sys.executable
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
SETUP_FAILED = "runtime_env setup failed: Failed to set up runtime environment."
pytestmark = [
    pytest.mark.slow,
    # Ray's client passes ssl=None to aiohttp, which newer aiohttp releases deprecate.
    pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("rayfidelity") / "home"
    with running_server(make_settings(home), ray=True) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> sdk.JobSubmissionClient:
    return sdk.JobSubmissionClient(
        server.ray_url, headers={"Authorization": f"Bearer {server.token}"}
    )


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.ray_url, headers=headers, timeout=30) as raw:
        yield raw


def finished(client: sdk.JobSubmissionClient, sid: str, timeout: float = 30) -> Any:
    """The job's JobDetails once it has ended."""

    def done() -> Any:
        info = client.get_job_info(sid)
        return info if str(info.status.value) in TERMINAL else None

    return wait_for(done, timeout, interval=0.1)


def make_wheel(where: Path, name: str, files: dict[str, str]) -> Path:
    """A pure-Python wheel made here, so installing it needs no network."""
    dist = f"{name}-0.1.dist-info"
    contents = {path: text.encode() for path, text in files.items()}
    contents[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n".encode()
    contents[f"{dist}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: jobyard-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for path, data in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    wheel = where / f"{name}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in contents.items():
            archive.writestr(path, data)
        archive.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return wheel


def entry_output(logs: str, sid: str) -> str:
    """What the entrypoint wrote: after Ray's 'Running entrypoint for job' line."""
    head, found, rest = logs.partition(f"Running entrypoint for job {sid}: ")
    assert found and "Runtime env is setting up.\n" in head, logs
    return rest.partition("\n")[2]


# ---- 1. pip environments see the base interpreter's packages, their own first -----------------


def test_a_pip_env_sees_the_base_packages_behind_its_own(
    server: LiveServer, client: sdk.JobSubmissionClient, tmp_path: Path
) -> None:
    mine = make_wheel(tmp_path, "jymine", {"jymine/__init__.py": "VALUE = 'mine'\n"})
    # A module of the base's own name, from another distribution: the env's copy must win.
    shadow = make_wheel(tmp_path, "jyshadow", {"idna/__init__.py": "SHADOW = 'env first'\n"})
    check = (
        "import sys, importlib.util, jymine, idna, httpx, jobyard; "
        "print(jymine.VALUE, idna.SHADOW, importlib.util.find_spec('ray') is not None, sys.prefix)"
    )
    runtime_env = {"pip": [str(mine), str(shadow)], "env_vars": {"PIP_NO_INDEX": "1"}}
    sid = client.submit_job(entrypoint=f'python -c "{check}"', runtime_env=runtime_env)
    info = finished(client, sid, timeout=180)
    logs = client.get_job_logs(sid)
    assert str(info.status.value) == "SUCCEEDED", logs
    output = entry_output(logs, sid)
    venvs = server.settings.home / "runtime_env" / "venvs"
    assert output.startswith("mine env first True ") and str(venvs) in output
    # The environment is made before Ray's entrypoint line, as Ray sets it up first.
    assert logs.index("jobyard: installing") < logs.index("Running entrypoint for job")


# ---- 2. runtime_env keys Ray's client adds; setup timeouts; what cannot be set up here ---------


def test_the_local_dev_mode_key_rays_client_adds_is_accepted(
    client: sdk.JobSubmissionClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_RUNTIME_ENV_LOCAL_DEV_MODE", "1")  # adds _inject_current_ray
    sid = client.submit_job(entrypoint="echo hello", runtime_env={"env_vars": {"A": "1"}})
    info = finished(client, sid)
    assert str(info.status.value) == "SUCCEEDED"
    assert info.runtime_env["_inject_current_ray"] is True
    assert entry_output(client.get_job_logs(sid), sid) == "hello\n"


def hanging_index() -> socket.socket:
    """A package index that takes connections and never answers (pip waits on it)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener


def test_setup_timeout_seconds_fails_the_job_as_ray_does(
    server: LiveServer, client: sdk.JobSubmissionClient
) -> None:
    from ray.runtime_env import RuntimeEnv, RuntimeEnvConfig

    venvs = server.settings.home / "runtime_env" / "venvs"
    before = set(venvs.iterdir()) if venvs.exists() else set()
    with hanging_index() as index:
        url = f"http://127.0.0.1:{index.getsockname()[1]}/simple"
        pip = {
            "packages": ["never-answered"],
            "pip_check": False,
            "pip_install_options": ["--index-url", url, "--timeout", "60", "--retries", "0"],
        }
        env = RuntimeEnv(pip=pip, config=RuntimeEnvConfig(setup_timeout_seconds=1))
        sid = client.submit_job(entrypoint="echo never", runtime_env=env)
        info = finished(client, sid, timeout=20)
    assert str(info.status.value) == "FAILED"
    assert info.error_type == "RUNTIME_ENV_SETUP_FAILURE"
    assert info.message.startswith(SETUP_FAILED)
    for words in ("Timeout", "setup_timeout_seconds", "within the timeout of 1 seconds"):
        assert words in info.message
    assert "runtime_env setup timed out" in info.message
    assert info.driver_exit_code is None and info.driver_info is None
    assert "Running entrypoint" not in client.get_job_logs(sid)
    built = {path for path in set(venvs.iterdir()) - before if path.is_dir()}
    assert not built  # nothing half-built is kept


@pytest.mark.parametrize(
    ("runtime_env", "named"),
    [
        ({"conda": {"dependencies": ["pip"]}}, "runtime_env.conda"),
        ({"working_dir": "s3://does_not_exist.zip"}, "runtime_env.working_dir"),
        ({"py_modules": ["https://example.invalid/m.zip"]}, "runtime_env.py_modules.0"),
    ],
)
def test_what_cannot_be_set_up_here_fails_the_job_not_the_submit(
    client: sdk.JobSubmissionClient, runtime_env: dict[str, Any], named: str
) -> None:
    sid = client.submit_job(entrypoint="echo never", runtime_env=runtime_env)
    info = finished(client, sid)
    assert str(info.status.value) == "FAILED"
    assert info.error_type == "RUNTIME_ENV_SETUP_FAILURE"
    assert info.message.startswith(SETUP_FAILED) and named in info.message
    assert info.driver_exit_code is None and info.driver_info is None
    assert info.driver_node_id is None
    listed = {job.submission_id: job for job in client.list_jobs()}
    assert listed[sid].error_type == "RUNTIME_ENV_SETUP_FAILURE"  # the list says so too
    assert listed[sid].message == info.message
    assert "never" not in client.get_job_logs(sid).replace("echo never", "")


def test_a_remote_uri_that_is_no_zip_is_refused_by_rays_own_client(
    client: sdk.JobSubmissionClient,
) -> None:
    with pytest.raises(ValueError, match=r"Only \.zip.* files are supported"):
        client.submit_job(entrypoint="echo hello", runtime_env={"working_dir": "s3://not_a_zip"})


def test_runtime_env_config_is_checked(http: httpx.Client) -> None:
    for config in ({"setup_timeout_seconds": 0}, {"setup_timeout_seconds": "1"}, {"bogus": 1}):
        body = {"entrypoint": "true", "runtime_env": {"config": config}}
        response = http.post("/api/jobs/", json=body)
        assert response.status_code == 400 and "runtime_env.config" in response.json()
    body = {"entrypoint": "true", "runtime_env": {"config": {"setup_timeout_seconds": -1}}}
    assert http.post("/api/jobs/", json=body).status_code == 200  # -1: no limit, as Ray


# ---- 3. resources: OMP_NUM_THREADS as Ray leaves it; asks this pool can never meet -------------


@pytest.mark.parametrize(
    ("cpus", "env_vars", "expected"),
    [(None, {}, "1"), (0.5, {}, "1"), (2.5, {}, "2"), (2, {"OMP_NUM_THREADS": "7"}, "7")],
)
def test_omp_num_threads_is_the_drivers_whole_cpus_unless_set(
    client: sdk.JobSubmissionClient, cpus: float | None, env_vars: dict[str, str], expected: str
) -> None:
    sid = client.submit_job(
        entrypoint='echo "omp=$OMP_NUM_THREADS"',
        entrypoint_num_cpus=cpus,
        runtime_env={"env_vars": env_vars},
    )
    assert str(finished(client, sid).status.value) == "SUCCEEDED"
    assert entry_output(client.get_job_logs(sid), sid) == f"omp={expected}\n"


@pytest.mark.parametrize(
    ("ask", "named"),
    [
        ({"entrypoint_num_cpus": 64}, "entrypoint_num_cpus"),
        ({"entrypoint_num_gpus": 2}, "entrypoint_num_gpus"),
        ({"entrypoint_memory": 2**50}, "entrypoint_memory"),
    ],
)
def test_an_ask_the_local_pool_can_never_meet_is_refused_naming_it(
    client: sdk.JobSubmissionClient, ask: dict[str, Any], named: str
) -> None:
    """Ray waits PENDING for an autoscaler; the local pool cannot grow, so it is refused."""
    with pytest.raises(RuntimeError, match=rf"400.*{named}: .*cannot grow"):
        client.submit_job(entrypoint="echo hello", **ask)


def test_an_ask_that_fits_but_waits_is_pending_for_resources(
    client: sdk.JobSubmissionClient,
) -> None:
    blocker = client.submit_job(entrypoint="sleep 60", entrypoint_num_cpus=8)
    wait_for(lambda: client.get_job_status(blocker) == sdk.JobStatus.RUNNING, 20)
    waiting = client.submit_job(entrypoint="echo hello", entrypoint_num_cpus=1)
    info = client.get_job_info(waiting)
    assert info.status == sdk.JobStatus.PENDING
    assert "waiting for resources" in info.message
    assert client.stop_job(waiting) is True and client.stop_job(blocker) is True
    assert str(finished(client, waiting).status.value) == "STOPPED"
    assert str(finished(client, blocker).status.value) == "STOPPED"


# ---- 4. JobDetails, 404s, the version ---------------------------------------------------------


def test_list_jobs_as_ray_lists_them(client: sdk.JobSubmissionClient, http: httpx.Client) -> None:
    runtime_env = {"env_vars": {"TEST": "123"}}
    metadata = {"foo": "bar"}
    sid = client.submit_job(entrypoint="echo hello", runtime_env=runtime_env, metadata=metadata)
    assert str(finished(client, sid).status.value) == "SUCCEEDED"
    listed = next(job for job in client.list_jobs() if job.submission_id == sid)
    raw = next(job for job in http.get("/api/jobs/").json() if job["submission_id"] == sid)
    for info in (listed, sdk.JobDetails(**raw)):
        assert info.entrypoint == "echo hello" and info.status == sdk.JobStatus.SUCCEEDED
        assert info.message is not None and info.end_time >= info.start_time
        assert info.runtime_env == runtime_env and info.metadata == metadata
    assert client.get_job_status(sid) == sdk.JobStatus.SUCCEEDED


def test_job_details_ids_and_addresses(client: sdk.JobSubmissionClient, http: httpx.Client) -> None:
    first = client.submit_job(entrypoint="echo one")
    second = client.submit_job(entrypoint="echo two")
    details = [wait_for(lambda s=sid: _ended(http, s), 20) for sid in (first, second)]
    for job in details:
        ipaddress.ip_address(job["driver_info"]["node_ip_address"])  # an address, not a name
        assert re.fullmatch(r"[0-9a-f]{56}", job["driver_node_id"])
        assert job["error_type"] == ""  # the seed writes "" (Ray: null) for a job that did not fail
        assert job["driver_agent_http_address"] == ""
    assert details[0]["driver_node_id"] == details[1]["driver_node_id"]  # one node, one id


def _ended(http: httpx.Client, sid: str) -> dict[str, Any] | None:
    job: dict[str, Any] = http.get(f"/api/jobs/{sid}").json()
    return job if job["status"] in TERMINAL else None


def test_metadata_keys_are_any_strings_and_absent_metadata_is_empty(
    client: sdk.JobSubmissionClient, http: httpx.Client
) -> None:
    metadata = {"job name": "a b", "_owner": "me", "ключ": "значение", "a:b": "", "": "empty"}
    sid = client.submit_job(entrypoint="true", metadata=metadata)
    assert client.get_job_info(sid).metadata == metadata
    assert next(j for j in client.list_jobs() if j.submission_id == sid).metadata == metadata
    bare = http.post("/api/jobs/", json={"entrypoint": "ls"})  # Ray's "optional args"
    assert bare.status_code == 200
    bare_id = bare.json()["submission_id"]
    assert str(finished(client, bare_id).status.value) == "SUCCEEDED"
    assert http.get(f"/api/jobs/{bare_id}").json()["metadata"] == {}  # the seed: a map


def test_unknown_jobs_are_404_in_rays_words(
    client: sdk.JobSubmissionClient, http: httpx.Client
) -> None:
    with pytest.raises(RuntimeError, match="nonexistent_job does not exist"):
        client.get_job_status("nonexistent_job")
    for method, path in (
        ("GET", "/api/jobs/fake_job_id"),
        ("GET", "/api/jobs/fake_job_id/logs"),
        ("POST", "/api/jobs/fake_job_id/stop"),
        ("DELETE", "/api/jobs/fake_job_id"),
    ):
        response = http.request(method, path)
        assert response.status_code == 404
        assert response.json() == "Job fake_job_id does not exist"
    assert http.get("/api/packages/fake_package_uri").status_code == 404


def test_version_answers_without_a_token_and_to_head(server: LiveServer) -> None:
    import ray

    response = httpx.get(f"{server.ray_url}/api/version")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"version", "ray_version", "ray_commit", "session_name"}
    assert (body["version"], body["ray_version"]) == ("4", "2.60.0")
    if ray.__version__ == body["ray_version"]:  # the client of the release this face speaks
        assert body["ray_commit"] == ray.__commit__
    assert httpx.head(f"{server.ray_url}/api/version").status_code == 200
    assert httpx.get(f"{server.ray_url}/api/jobs/").status_code == 401  # the rest needs one


def test_submission_ids_and_bad_requests_as_ray(
    client: sdk.JobSubmissionClient, http: httpx.Client
) -> None:
    assert client.submit_job(entrypoint="echo hello", job_id="fidelity_custom_id") == (
        "fidelity_custom_id"
    )
    with pytest.raises(RuntimeError, match="fidelity_custom_id already exists"):
        client.submit_job(entrypoint="echo hello", job_id="fidelity_custom_id")
    for key in ("job_id", "submission_id"):
        http.post("/api/jobs/", json={"entrypoint": "ls", key: f"fidelity_{key}"})
        assert str(finished(client, f"fidelity_{key}").status.value) == "SUCCEEDED"
    bad = http.post("/api/jobs/", json={"key": "baaaad request"})
    assert bad.status_code == 400


def test_stop_delete_and_a_failing_driver(client: sdk.JobSubmissionClient, tmp_path: Path) -> None:
    (tmp_path / "test_script.py").write_text(
        "print('Hello !')\nraise RuntimeError('Intentionally failed.')\n"
    )
    (tmp_path / "sleeper.py").write_text("import time\nprint('Hello !')\ntime.sleep(300)\n")
    failing = client.submit_job(
        entrypoint=f"{PY} test_script.py", runtime_env={"working_dir": str(tmp_path)}
    )
    sleeping = client.submit_job(
        entrypoint=f"{PY} sleeper.py", runtime_env={"working_dir": str(tmp_path)}
    )
    assert client.stop_job(sleeping) is True
    with pytest.raises(RuntimeError, match="but it is in a non-terminal state"):
        client.delete_job(failing)
    assert str(finished(client, failing).status.value) == "FAILED"
    logs = client.get_job_logs(failing)
    assert "Hello !" in logs and "RuntimeError: Intentionally failed." in logs
    assert client.get_job_info(failing).error_type == "JOB_ENTRYPOINT_COMMAND_ERROR"
    assert str(finished(client, sleeping).status.value) == "STOPPED"
    assert client.delete_job(failing) is True
    assert failing not in [job.submission_id for job in client.list_jobs()]


def test_local_dir_zip_and_py_modules_uploaded_by_rays_client(
    client: sdk.JobSubmissionClient, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    (project / "test_module").mkdir(parents=True)
    (project / "test.py").write_text("from test_module import run_test\nprint(run_test())\n")
    (project / "test_module" / "__init__.py").write_text(
        "def run_test():\n    return 'Hello from test_module!'\n"
    )
    archive = shutil.make_archive(str(tmp_path / "test"), "zip", project)
    module_only = f"{PY} -c 'import test_module; print(test_module.run_test())'"
    for runtime_env, entrypoint in (
        ({"working_dir": str(project)}, f"{PY} test.py"),
        ({"working_dir": archive}, f"{PY} test.py"),
        ({"py_modules": [str(project / "test_module")]}, f"cd / && {module_only}"),
    ):
        sid = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        assert str(finished(client, sid).status.value) == "SUCCEEDED", client.get_job_logs(sid)
        assert entry_output(client.get_job_logs(sid), sid) == "Hello from test_module!\n"


# ---- 5. Ray's own lines at the top of the log -------------------------------------------------


def test_rays_lines_open_the_log_and_the_tail(client: sdk.JobSubmissionClient) -> None:
    import asyncio

    sid = client.submit_job(entrypoint="echo hello")
    assert str(finished(client, sid).status.value) == "SUCCEEDED"
    first, entry, output = client.get_job_logs(sid).splitlines()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\tINFO \S+ -- Runtime env is setting up\.", first
    )
    assert entry == f"Running entrypoint for job {sid}: echo hello" and output == "hello"

    async def tail() -> str:
        return "".join([chunk async for chunk in client.tail_job_logs(sid)])

    assert asyncio.run(tail()) == client.get_job_logs(sid)
