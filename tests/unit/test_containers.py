"""Containers without a runtime: which image a spec runs in, references, and the command lines."""

from __future__ import annotations

import base64
import json
import os
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from jobyard.config import ContainerRuntimeArgs, EnvironmentSpec, Settings
from jobyard.errors import ExecutorRefused
from jobyard.executors import containers
from jobyard.executors.base import StartFailed, TaskReport
from jobyard.executors.environment import catalog_entry
from jobyard.model import JobSpec, PendingReason, TaskState, TerminationReason
from jobyard.model.registry import (
    RegistryLogin,
    login_for,
    normalize_registry,
    registry_of,
    registry_problem,
)

PODMAN = containers.Runtime("podman", ("/usr/bin/podman", "--runtime", "runc"), ("--ulimit", "x"))
DOCKER = containers.Runtime("docker", ("/usr/bin/docker",))


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    catalog = [
        EnvironmentSpec(id="1", name="host"),
        EnvironmentSpec(id="2", name="py", image="registry.example:5000/team/python:3.11"),
    ]
    return Settings(home=tmp_path, environments=catalog, **overrides)  # type: ignore[arg-type]


def _task(**overrides: object) -> containers.ContainerTask:
    fields: dict[str, object] = {
        "name": "jobyard-job1-worker-0-abcd1234",
        "image": "127.0.0.1:5000/x/busybox:1",
        "labels": {"jobyard.job-id": "1", "jobyard.task": "job1-worker-0"},
        "cwd": Path("/data/jobs/1"),
        "env_file": Path("/data/logs/1/job1-worker-0.env"),
        "gpus": (),
        "argv": ("/bin/sh", "-c", "echo hi"),
    }
    return containers.ContainerTask(**{**fields, **overrides})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "ref",
    [
        "busybox:1",
        "library/busybox",
        "docker.io/library/python:3.11-slim",
        "127.0.0.1:5000/jobyard-test/busybox:1",
        "localhost/a__b/c-d.e:latest",
        "[::1]:5000/x/y:z",
        "ghcr.io/o/r@sha256:" + "a" * 64,
        "ghcr.io/o/r:tag@sha256:" + "0" * 64,
    ],
)
def test_references_a_registry_takes(ref: str) -> None:
    assert containers.looks_like_reference(ref)
    assert containers.reference_problem(ref) is None


@pytest.mark.parametrize(
    "ref",
    [
        "Busybox:1",  # a name is lowercase
        "busybox:",
        "busybox:-tag",
        "a//b:1",
        "x/y:tag with space",
        "x/y@sha256:short",
        "x/" + "a" * 256 + ":1",
        "x/y:" + "t" * 129,
        "-x/y:1",
        "x/y:1\n",
    ],
)
def test_malformed_references_say_why(ref: str) -> None:
    problem = containers.reference_problem(ref)
    assert problem is not None and "image" in problem


def test_which_image_a_spec_runs_in(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    image = containers.container_image
    assert image(settings, JobSpec(entrypoint="true")) is None  # the host
    assert image(settings, JobSpec(entrypoint="true", image="1")) is None
    assert image(settings, JobSpec(entrypoint="true", image="host")) is None
    py = "registry.example:5000/team/python:3.11"
    assert image(settings, JobSpec(entrypoint="true", image="2")) == py  # a catalog id
    assert image(settings, JobSpec(entrypoint="true", image="py")) == py  # a catalog name
    assert image(settings, JobSpec(entrypoint="true", image="busybox:1")) == "busybox:1"
    assert image(settings, JobSpec(entrypoint="true", image="typo")) is None  # the catalog's
    settings = _settings(tmp_path, default_image="py")
    assert image(settings, JobSpec(entrypoint="true")) == py
    assert image(settings, JobSpec(entrypoint="true", image="x/y:1")) == "x/y:1"


def test_no_runtime_is_refused_naming_what_is_missing(tmp_path: Path) -> None:
    settings = _settings(tmp_path, container_runtime="none")
    assert containers.find_runtime(settings) is None
    with pytest.raises(ExecutorRefused) as info:
        containers.require_runtime(settings, "local", "x/y:1")
    assert info.value.field == "image"
    assert "container_runtime = 'none'" in info.value.message and "1 (host)" in info.value.message
    settings = _settings(tmp_path, container_runtime="docker")
    expected = "docker is not on PATH" if containers.find_runtime(settings) is None else None
    if expected:
        assert expected in containers.missing_runtime(settings)
    assert "podman" in containers.missing_runtime(_settings(tmp_path))


def test_the_runtime_found_carries_the_configured_arguments(tmp_path: Path) -> None:
    args = ContainerRuntimeArgs(global_args=["--runtime", "runc"], run_args=["--ulimit", "a=1"])
    found = containers.find_runtime(_settings(tmp_path, container_runtime_args=args))
    if found is None:
        pytest.skip("neither podman nor docker is on PATH")
    assert found.argv[1:] == ("--runtime", "runc") and found.run_args == ("--ulimit", "a=1")


def test_the_run_command() -> None:
    argv = containers.run_command(PODMAN, _task(), cdi=False)
    assert argv[:4] == ["/usr/bin/podman", "--runtime", "runc", "run"]
    words = " ".join(argv)
    for part in (
        "--rm --name jobyard-job1-worker-0-abcd1234 --init --network host",
        "--label jobyard.job-id=1 --label jobyard.task=job1-worker-0",
        "--replace --log-driver passthrough",
        "--env-file /data/logs/1/job1-worker-0.env",
        "--mount type=bind,source=/data/jobs/1,destination=/data/jobs/1 --workdir /data/jobs/1",
        "--ulimit x 127.0.0.1:5000/x/busybox:1 /bin/sh -c echo hi",
    ):
        assert part in words
    docker = " ".join(containers.run_command(DOCKER, _task(), cdi=False))
    assert "passthrough" not in docker and "--replace" not in docker
    with pytest.raises(StartFailed, match="comma"):
        containers.run_command(PODMAN, _task(cwd=Path("/a,b")), cdi=False)


def test_gpus_are_the_scheduler_s_indices_never_all() -> None:
    assert containers.gpu_args(PODMAN, [], cdi=False) == []
    assert containers.gpu_args(PODMAN, [1, 3], cdi=True) == [
        "--device",
        "nvidia.com/gpu=1",
        "--device",
        "nvidia.com/gpu=3",
    ]
    assert containers.gpu_args(DOCKER, [1, 3], cdi=False) == ["--gpus", '"device=1,3"']
    with pytest.raises(StartFailed, match="CDI"):
        containers.gpu_args(PODMAN, [0], cdi=False)
    env = containers.container_env({"CUDA_VISIBLE_DEVICES": "1,3", "A": "b"}, [1, 3])
    assert env == {"CUDA_VISIBLE_DEVICES": "0,1", "A": "b"}  # numbered from 0 inside
    assert containers.container_env({"CUDA_VISIBLE_DEVICES": ""}, []) == {
        "CUDA_VISIBLE_DEVICES": ""
    }


def test_cdi_specs_are_looked_for(tmp_path: Path) -> None:
    assert not containers.cdi_specs_exist([tmp_path / "none", tmp_path])
    (tmp_path / "nvidia.yaml").write_text("cdiVersion: 0.5.0\n")
    assert containers.cdi_specs_exist([tmp_path])


def test_the_env_file_is_literal_and_refuses_line_breaks() -> None:
    text = containers.env_file_text({"A": "x y ", "Q": "'\"$x;`id`", "E": ""})
    assert text == "A=x y \nQ='\"$x;`id`\nE=\n"
    for value in ("a\nb", "a\r"):
        with pytest.raises(ExecutorRefused) as info:
            containers.env_file_text({"K": value})
        assert info.value.field == "env"


def test_names_and_labels_tell_servers_apart() -> None:
    a, b = Path("/srv/a"), Path("/srv/b")
    assert containers.container_name("job 1/worker-0", a) != containers.container_name(
        "job 1/worker-0", b
    )
    assert containers.container_name("job 1/worker-0", a).startswith("jobyard-job-1-worker-0-")
    assert containers.labels(7, "t", a) == {
        "jobyard.job-id": "7",
        "jobyard.task": "t",
        "jobyard.home": "/srv/a",
    }


def test_the_launch_script_pulls_only_when_asked(tmp_path: Path) -> None:
    files = containers.PullFiles(tmp_path / "t.pull-state", tmp_path / "t.pull")
    options: dict[str, Any] = {"cdi": False, "pull": None, "pull_timeout": 60}
    options["log"] = tmp_path / "t.log"
    plain = containers.launch_script(PODMAN, _task(), **options)
    assert " pull " not in plain and "run --rm" in plain
    assert "catatonit" in plain  # a program the image lacks: 127 and its name in the log
    pulling = containers.launch_script(PODMAN, _task(), **{**options, "pull": files})
    first = pulling.splitlines()[0]
    assert "pull --tls-verify" not in first and " pull 127.0.0.1:5000/x/busybox:1" in first
    assert shlex.quote(str(files.log)) in first and "exit 125" in first
    docker = containers.launch_script(DOCKER, _task(), **options)
    assert docker.splitlines()[0].startswith("/usr/bin/docker rm -f jobyard-job1")
    assert docker.splitlines()[-1].startswith("exec /usr/bin/docker run")


def test_a_failed_pull_is_reported_with_the_runtime_s_words(tmp_path: Path) -> None:
    files = containers.PullFiles(tmp_path / "t.pull-state", tmp_path / "t.pull")
    handle = {
        "container": "c",
        "image": "r/x:missing",
        "pull_state": str(files.state),
        "pull_log": str(files.log),
    }
    files.state.write_text("pulling\n")
    running = containers.task_report(handle, TaskReport(TaskState.RUNNING), 60)
    assert (running.state, running.pending_reason) == (TaskState.PENDING, PendingReason.PULLING)
    assert running.message == "pulling image r/x:missing"
    files.state.write_text("failed\n")
    files.log.write_text(
        "Trying to pull r/x:missing...\nError: reading manifest missing in r/x: manifest unknown\n"
        "jobyard: the pull exited with code 125\n"
    )
    ended = containers.task_report(handle, TaskReport(TaskState.EXITED, 125), 60)
    assert (ended.exit_code, ended.reason) == (125, TerminationReason.IMAGE_PULL_FAILED)
    assert ended.message == (
        "cannot pull image r/x:missing: Error: reading manifest missing in r/x: manifest unknown"
    )
    files.log.write_text("jobyard: the pull exited with code 124\n")
    assert (
        "longer than 60 s"
        in containers.task_report(handle, TaskReport(TaskState.EXITED, 125), 60).message
    )
    files.state.unlink()  # a container that exited 125 itself is no pull failure
    plain = containers.task_report(handle, TaskReport(TaskState.EXITED, 125), 60)
    assert plain.reason is None


def test_a_shell_execs_into_the_container() -> None:
    argv = containers.exec_command(PODMAN, "c1", "/data/jobs/1", "echo hi")
    assert argv[:2] == ["/bin/sh", "-c"]
    assert "[ -t 0 ]" in argv[2] and "-it" in argv[2] and "exec /usr/bin/podman" in argv[2]
    assert "--workdir /data/jobs/1 c1 /bin/sh -c 'echo hi'" in argv[2]
    login = containers.exec_command(PODMAN, "c1", "/w", None)
    assert "bash -il" in login[2]


def test_the_node_script_of_a_slurm_task() -> None:
    node = containers.Runtime("podman", ("podman",), pull_args=("--tls-verify=false",))
    task = containers.NodeTask(
        image="r:5000/x/y:1",
        job_id=9,
        home=Path("/srv/jy"),
        files_dir=Path("/srv/jy/logs/9"),
        cwd=Path("/work dir"),
        env_file=Path("/srv/jy/logs/9/container.env"),
        argv=("/bin/sh", "-c", "echo hi"),
        grace=2.5,
    )
    script = containers.node_script(node, task, pull_timeout=30)
    assert "podman image exists r:5000/x/y:1" in script
    assert "podman pull --tls-verify=false r:5000/x/y:1" in script and "exit 125" in script
    assert "timeout --foreground -k 10 30 " in script
    assert '_jobyard_c=jobyard-"$JOBYARD_TASK_NAME"-' in script  # each rank its own name
    assert "--label jobyard.job-id=9" in script and "--label jobyard.home=/srv/jy" in script
    assert "--env-file /srv/jy/logs/9/container.env --env JOBYARD_JOB_ID" in script
    assert "--env RANK" in script and "--env MASTER_ADDR" in script
    assert "--mount 'type=bind,source=/work dir,destination=/work dir'" in script
    assert "podman stop -t 3" in script  # on the TERM of a stop: the grace, then KILL
    assert "nvidia.com/gpu=$_jobyard_d" in script and "SLURM_STEP_GPUS" in script
    assert script.rstrip().endswith('exit "$_jobyard_rc"')
    docker = containers.node_script(containers.Runtime("docker", ("docker",)), task, pull_timeout=3)
    assert "docker image inspect" in docker and "passthrough" not in docker


# ---- registry logins: which registry, the auth file, the pull's argv -------------------------


@pytest.mark.parametrize(
    ("image", "host"),
    [
        ("busybox", "docker.io"),
        ("library/busybox:1", "docker.io"),
        ("team/app", "docker.io"),
        ("docker.io/library/python:3.11", "docker.io"),
        ("index.docker.io/x/y", "docker.io"),
        ("127.0.0.1:5000/jobyard-test/busybox:1", "127.0.0.1:5000"),
        ("localhost/a/b", "localhost"),
        ("Registry.Example.com/a/b@sha256:" + "0" * 64, "registry.example.com"),
        ("[::1]:5000/x/y:z", "[::1]:5000"),
    ],
)
def test_an_image_s_registry_is_distribution_s(image: str, host: str) -> None:
    assert registry_of(image) == host


def test_a_registry_named_by_a_user_is_its_host() -> None:
    assert normalize_registry("https://index.docker.io/v1/") == "docker.io"
    assert normalize_registry(" HTTP://Reg.Example:5000/ ") == "reg.example:5000"
    assert registry_problem("reg.example:5000") is None
    assert registry_problem("[::1]:5000") is None
    for bad in ("", "a b", "x:port", "-bad.example", "a" * 300):
        assert registry_problem(normalize_registry(bad)) is not None, bad


def _login(registry: str = "127.0.0.1:5000") -> RegistryLogin:
    return RegistryLogin(registry=registry, username="alice", password=SecretStr("p@ss:w rd"))


def test_the_login_for_an_image_is_its_registry_s_only() -> None:
    logins = [_login("reg.example"), _login("127.0.0.1:5000")]
    assert login_for("127.0.0.1:5000/x/y:1", logins) == logins[1]
    assert login_for("127.0.0.1:5001/x/y:1", logins) is None
    assert login_for("busybox", logins) is None
    assert "p@ss" not in repr(_login()) and "p@ss" not in str(_login().model_dump())


def test_the_auth_file_is_private_and_in_containers_auth_format(tmp_path: Path) -> None:
    folder = tmp_path / "t.auth"
    folder.mkdir()
    (folder / "stale").write_text("an earlier attempt's")
    path = containers.write_auth(folder, PODMAN, _login())
    assert path == folder / "config.json" and sorted(os.listdir(folder)) == ["config.json"]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    auths = json.loads(path.read_text())["auths"]
    assert base64.b64decode(auths["127.0.0.1:5000"]["auth"]) == b"alice:p@ss:w rd"
    hub = json.loads(containers.auth_file_text(DOCKER, _login("docker.io")))["auths"]
    assert list(hub) == ["https://index.docker.io/v1/"]  # where docker looks for Docker Hub's
    containers.forget_auth({"auth_dir": str(folder)})
    assert not folder.exists()


def test_the_pull_passes_the_auth_file_and_the_script_removes_it(tmp_path: Path) -> None:
    auth = tmp_path / "t.auth" / "config.json"
    image = "127.0.0.1:5000/x/busybox:1"
    podman = containers.Runtime("podman", ("/usr/bin/podman",), pull_args=("--tls-verify=false",))
    assert containers.pull_command(podman, image, auth) == [
        "/usr/bin/podman",
        "pull",
        "--authfile",
        str(auth),
        "--tls-verify=false",
        image,
    ]
    assert containers.pull_command(DOCKER, image, auth) == [
        "/usr/bin/docker",
        "--config",
        str(auth.parent),
        "pull",
        image,
    ]
    assert containers.pull_command(DOCKER, image, None) == ["/usr/bin/docker", "pull", image]
    files = containers.PullFiles(tmp_path / "t.pull-state", tmp_path / "t.pull")
    script = containers.launch_script(
        PODMAN, _task(), cdi=False, pull=files, pull_timeout=60, log=tmp_path / "t.log", auth=auth
    )
    pull, after = script.splitlines()[:2]
    forget = f"rm -rf {shlex.quote(str(auth.parent))};"
    assert f"--authfile {shlex.quote(str(auth))}" in pull
    assert forget in pull.split("||", 1)[1]  # after a failed pull
    assert after.startswith(forget)  # and after one that worked
    assert "p@ss" not in script


def test_docker_s_command_lines_exactly() -> None:
    """docker is not running here: its argv is checked word for word instead (no --pidfile:
    docker has none, so a docker container job has no usage figures)."""
    task = _task(gpus=(1, 3), pid_file=Path("/data/logs/1/job1-worker-0.cpid"))
    assert containers.run_command(DOCKER, task, cdi=False) == [
        "/usr/bin/docker",
        "run",
        "--rm",
        "--name",
        "jobyard-job1-worker-0-abcd1234",
        "--init",
        "--network",
        "host",
        "--pull",
        "never",
        "--label",
        "jobyard.job-id=1",
        "--label",
        "jobyard.task=job1-worker-0",
        "--env-file",
        "/data/logs/1/job1-worker-0.env",
        "--mount",
        "type=bind,source=/data/jobs/1,destination=/data/jobs/1",
        "--workdir",
        "/data/jobs/1",
        "--gpus",
        '"device=1,3"',
        "127.0.0.1:5000/x/busybox:1",
        "/bin/sh",
        "-c",
        "echo hi",
    ]
    cdi = containers.run_command(DOCKER, task, cdi=True)
    assert cdi[cdi.index("/data/jobs/1", cdi.index("--workdir")) + 1 :][:4] == [
        "--device",
        "nvidia.com/gpu=1",
        "--device",
        "nvidia.com/gpu=3",
    ]
    podman = containers.run_command(PODMAN, task, cdi=True)
    assert "--gpus" not in podman and podman.count("--device") == 2
    assert "--pidfile /data/logs/1/job1-worker-0.cpid" in " ".join(podman)
    assert containers.exec_command(DOCKER, "c", "/w", None)[2].count("exec /usr/bin/docker exec")


@pytest.mark.parametrize(
    ("name", "pulled"), [("podman", True), ("docker", True), ("podman", False)]
)
def test_a_node_s_pull_uses_its_task_s_auth_file_then_removes_it(
    tmp_path: Path, name: str, pulled: bool
) -> None:
    """The script run by a shell, with a stand-in runtime (a shell script) that records its
    arguments and, for the pull, the auth file it was given."""
    fake, record = tmp_path / name, tmp_path / "record"
    fake.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$*" >>{record}\n'
        'case "$*" in\n'
        f"  image*) exit {0 if not pulled else 1} ;;\n"
        f'  *"--authfile "*) cat "$3" >>{record} ;;\n'
        f'  *"--config "*) cat "$2/config.json" >>{record} ;;\n'
        "esac\n"
        "exit 0\n"
    )
    fake.chmod(0o755)
    files = tmp_path / "logs" / "9"
    files.mkdir(parents=True)
    runtime = containers.Runtime(name, (str(fake),))
    task = containers.NodeTask(
        image="127.0.0.1:5000/x/y:1",
        job_id=9,
        home=tmp_path,
        files_dir=files,
        cwd=tmp_path,
        env_file=files / "container.env",
        argv=("true",),
        grace=1,
    )
    containers.write_auth(files / "job9-worker-0.auth", runtime, _login())
    script = containers.node_script(runtime, task, pull_timeout=30, auth=True)
    env = {"PATH": os.environ["PATH"], "JOBYARD_TASK_NAME": "job9-worker-0"}
    done = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    said = record.read_text()
    assert ('"auths"' in said) is pulled  # the pull read the auth file
    if pulled and name == "podman":
        assert f"pull --authfile {files}/job9-worker-0.auth/config.json 127.0.0.1:5000" in said
    if pulled and name == "docker":
        assert f"--config {files}/job9-worker-0.auth pull 127.0.0.1:5000" in said
    assert not (files / "job9-worker-0.auth").exists()  # gone, pulled or not


def test_a_plain_word_no_entry_is_called_says_what_image_takes(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    for kind in ("local", "slurm", "ray"):
        with pytest.raises(ExecutorRefused) as info:
            catalog_entry(settings, JobSpec(entrypoint="true", image="busybox"), kind=kind)
        said = info.value.message
        assert info.value.field == "image"
        assert said.startswith("'busybox' is not an environment of the catalog")
        assert "1 (host), 2 (py)" in said and "'busybox:latest'" in said
        assert "runs jobs as processes" not in said  # what it said before, wrongly
    with pytest.raises(ExecutorRefused) as info:  # not a valid name: no example made of it
        catalog_entry(settings, JobSpec(entrypoint="true", image="Py_Torch"), kind="local")
    assert "'Py_Torch:latest'" not in info.value.message
    with pytest.raises(ExecutorRefused) as info:  # a real image, on a process-only executor
        catalog_entry(settings, JobSpec(entrypoint="true", image="py"), kind="ray")
    assert "ray executor runs jobs as processes" in info.value.message
    assert catalog_entry(settings, JobSpec(entrypoint="true", image="host"), kind="ray") is not None


def test_a_container_s_processes_are_those_its_pid_file_names_under_conmon(
    tmp_path: Path,
) -> None:
    """No pid file yet, a pid that is gone, a pid whose parent is not conmon (the container
    ended and the pid is another's now): none. The conmon case runs in the podman tests."""
    handle = {"pid_file": str(tmp_path / "t.cpid")}
    assert containers.container_pids(handle) == []
    (tmp_path / "t.cpid").write_text(f"{os.getpid()}\n")  # its parent: pytest's, not conmon
    assert containers.container_pids(handle) == []
    (tmp_path / "t.cpid").write_text("999999999\n")
    assert containers.container_pids(handle) == []
    assert containers.container_pids({}) == []
