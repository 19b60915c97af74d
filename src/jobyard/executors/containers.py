"""OCI containers for jobs with an image, on the local and Slurm executors.

Which runtime (podman, daemonless, or docker: their CLIs, never an API socket), which image a
spec runs in (a catalog entry's, or a reference of its own), and the command lines: the pull
(its progress and error in a file beside the log, its state in another), the `run` of one task
(its env from a file, its working directory mounted at the same path, `--init`, host
networking, labels naming the job, the GPUs it was given), `stop -t <grace>`, `rm -f`, finding
a task's containers by label, and `exec -it` for a shell inside one.

A task runs `<runtime> run` in the foreground under the executor's own supervisor, so its exit
code, stop and restart are those of a process task; podman's `--log-driver passthrough` hands
the container the supervisor's stdout and stderr (the task's log) as they are, and the
container lives under conmon, outside the supervisor's session.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from jobyard.config import ExecutorSettings
from jobyard.errors import ExecutorRefused
from jobyard.executors.base import Handle, ShellCommand, StartFailed, TaskReport
from jobyard.executors.handles import ContainerFields, SavedRuntime
from jobyard.model import JobSpec, PendingReason, TaskState, TerminationReason
from jobyard.model.registry import DOCKER_HUB, RegistryLogin

RUNTIMES = ("podman", "docker")
LABEL_JOB = "jobyard.job-id"
LABEL_TASK = "jobyard.task"
LABEL_HOME = "jobyard.home"
CDI_DIRS = (Path("/etc/cdi"), Path("/var/run/cdi"))
PULL_FAILED_CODE = 125  # what the runtimes exit with when they cannot run a container
_COMMAND_TIMEOUT = 60.0  # seconds for a ps, rm or image check
_MESSAGE_BYTES = 2000  # of the runtime's words in a pull failure's message

# An image reference, as distribution/reference parses one: [domain[:port]/]path[:tag][@digest],
# path components lowercase, a tag of word characters, a digest algorithm:hex.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_REFERENCE = re.compile(
    rf"(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")


# ---- which image, which runtime ---------------------------------------------------------------


def looks_like_reference(ref: str) -> bool:
    """A '/', ':' or '@' makes `image` a reference; a plain word names a catalog entry only
    (so a mistyped catalog name is refused, not pulled from a registry)."""
    return any(mark in ref for mark in "/:@")


def reference_problem(ref: str) -> str | None:
    """Why `ref` is not an image reference a runtime can pull; None when it is one."""
    match = _REFERENCE.fullmatch(ref)
    if match is None:
        return (
            f"{ref!r} is not an image reference ([registry[:port]/]name[:tag][@digest], the "
            "name in lowercase letters, digits and . _ - separators)"
        )
    if len(match.group("path")) + len(match.group("domain") or "") > 255:
        return f"{ref[:40]!r}...: an image name is at most 255 characters"
    return None


def container_image(settings: ExecutorSettings, spec: JobSpec) -> str | None:
    """The image reference the spec's job runs in; None for a process job (the host or an
    environment of the catalog). `image`, else the `default_image` setting, names a catalog
    entry by id or name (whose `image` it is), or is a reference of its own."""
    ref = spec.image or settings.default_image
    if not ref:
        return None
    entry = settings.find_environment(ref)
    if entry is not None:
        return entry.image
    return ref if looks_like_reference(ref) else None


@dataclass(frozen=True)
class Runtime:
    """A container runtime's CLI: its name ("podman" or "docker") and its command lines."""

    name: str
    argv: tuple[str, ...]  # the program and the global arguments
    run_args: tuple[str, ...] = ()
    pull_args: tuple[str, ...] = ()

    def command(self, *words: str) -> list[str]:
        return [*self.argv, *words]


def find_runtime(settings: ExecutorSettings) -> Runtime | None:
    """The configured runtime, or the first of podman and docker on PATH; None: none."""
    wanted = settings.container_runtime
    if wanted == "none":
        return None
    for name in (wanted,) if wanted else RUNTIMES:
        path = shutil.which(name)
        if path is not None:
            args = settings.container_runtime_args
            return Runtime(
                name, (path, *args.global_args), tuple(args.run_args), tuple(args.pull_args)
            )
    return None


def missing_runtime(settings: ExecutorSettings) -> str:
    """What is missing, in words, where find_runtime() found nothing."""
    wanted = settings.container_runtime
    if wanted == "none":
        return "containers are turned off (container_runtime = 'none')"
    if wanted:
        return f"container_runtime is {wanted!r}, and {wanted} is not on PATH (install {wanted})"
    return "no container runtime: neither podman nor docker is on PATH (install podman)"


def require_runtime(settings: ExecutorSettings, kind: str, image: str) -> Runtime:
    """The runtime for a job in `image`; else ExecutorRefused naming `image` and what is missing."""
    runtime = find_runtime(settings)
    if runtime is None:
        known = ", ".join(f"{e.id} ({e.name})" for e in settings.environments if e.image is None)
        raise ExecutorRefused(
            f"the {kind} executor cannot run the container image {image!r}: "
            f"{missing_runtime(settings)}; or use an environment of the catalog: "
            f"{known or 'none'}",
            field="image",
        )
    return runtime


def check_env(env: Mapping[str, str]) -> None:
    """A container's variables go through an env file, one line each: a value with a line
    break would be cut there. Raise ExecutorRefused naming `env` for one."""
    for key, value in env.items():
        if "\n" in value or "\r" in value:
            raise ExecutorRefused(
                f"env value of {key!r} has a line break, which a container's environment "
                "cannot carry (jobyard passes it in an env file, one variable a line)",
                field="env",
            )


# ---- names and labels -------------------------------------------------------------------------


def home_tag(home: Path) -> str:
    """A short tag of a server's data directory, so two servers on one machine never share a
    container name (their task names repeat)."""
    return hashlib.sha256(str(home).encode()).hexdigest()[:8]


def container_name(task_name: str, home: Path) -> str:
    return f"jobyard-{_NAME_UNSAFE.sub('-', task_name)}-{home_tag(home)}"


def labels(job_id: int, task_name: str, home: Path) -> dict[str, str]:
    return {LABEL_JOB: str(job_id), LABEL_TASK: task_name, LABEL_HOME: str(home)}


# ---- running one task -------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerTask:
    """One task in a container: what `run` needs to know of it."""

    name: str
    image: str
    labels: Mapping[str, str]
    cwd: Path
    env_file: Path
    gpus: tuple[int, ...]
    argv: tuple[str, ...]
    pid_file: Path | None = None  # where podman writes the container's first process's pid


def env_file_text(env: Mapping[str, str]) -> str:
    """The env file `--env-file` reads: KEY=VALUE lines, taken literally (no quotes, no $)."""
    check_env(env)
    return "".join(f"{key}={value}\n" for key, value in env.items())


def container_env(variables: Mapping[str, str], gpus: Sequence[int]) -> dict[str, str]:
    """A task's variables as its container sees them: the GPUs it was given are the only ones
    the container has, numbered from 0 there (CUDA_VISIBLE_DEVICES says so)."""
    env = dict(variables)
    if "CUDA_VISIBLE_DEVICES" in env:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(gpus)))
    return env


def cdi_specs_exist(dirs: Sequence[Path] = CDI_DIRS) -> bool:
    """Are there CDI specs (nvidia-ctk cdi generate) for runtimes to pass GPUs by?"""
    for folder in dirs:
        with contextlib.suppress(OSError):
            if any(p.suffix in (".yaml", ".yml", ".json") for p in folder.iterdir()):
                return True
    return False


def gpu_args(runtime: Runtime, gpus: Sequence[int], *, cdi: bool) -> list[str]:
    """The options that pass exactly these GPUs (the scheduler's indices) into a container:
    CDI devices where CDI specs exist, else docker's --gpus; podman has no other way."""
    if not gpus:
        return []
    if cdi:
        return [word for index in gpus for word in ("--device", f"nvidia.com/gpu={index}")]
    if runtime.name == "docker":
        return ["--gpus", '"device=' + ",".join(str(i) for i in gpus) + '"']
    raise StartFailed(
        "GPUs in a podman container need the NVIDIA CDI specs, and none are in "
        f"{' or '.join(str(d) for d in CDI_DIRS)}: run "
        "`nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml` on this machine"
    )


def run_command(runtime: Runtime, task: ContainerTask, *, cdi: bool) -> list[str]:
    """`<runtime> run` for one task, in the foreground, removed when it ends."""
    cwd = str(task.cwd)
    if "," in cwd or "\n" in cwd:
        raise StartFailed(f"a container cannot mount the working directory {cwd!r} (a comma)")
    words = ["run", "--rm", "--name", task.name, "--init", "--network", "host", "--pull", "never"]
    for key, value in task.labels.items():
        words += ["--label", f"{key}={value}"]
    if runtime.name == "podman":  # the log file itself as the container's stdout and stderr
        words += ["--replace", "--log-driver", "passthrough"]
        if task.pid_file is not None:  # its processes, for the usage sampler (container_pids)
            words += ["--pidfile", str(task.pid_file)]
    words += ["--env-file", str(task.env_file)]
    words += ["--mount", f"type=bind,source={cwd},destination={cwd}", "--workdir", cwd]
    words += gpu_args(runtime, task.gpus, cdi=cdi)
    return runtime.command(*words, *runtime.run_args, task.image, *task.argv)


# ---- a pull's registry login -------------------------------------------------------------------
# The job owner's login to the image's registry goes to an auth file for that pull alone: in a
# directory of its own (mode 0700) beside the task's log, the file mode 0600, in the format
# both runtimes read (containers-auth.json(5), docker's config.json), passed by `--authfile`
# (podman) or `--config <dir>` (docker), and removed by the launch script once the pull ends
# (by a stop or a release where the pull never ended). Never in an argv, an env or a log.

AUTH_FILE = "config.json"  # the name docker looks for in its --config directory
_DOCKER_HUB_KEY = "https://index.docker.io/v1/"  # where docker looks for Docker Hub's login


def auth_file_text(runtime: Runtime, login: RegistryLogin) -> str:
    """The auth file of one login: {"auths": {<registry>: {"auth": base64(user:password)}}}."""
    pair = f"{login.username}:{login.password.get_secret_value()}".encode()
    key = login.registry
    if runtime.name == "docker" and key == DOCKER_HUB:
        key = _DOCKER_HUB_KEY
    return json.dumps({"auths": {key: {"auth": base64.b64encode(pair).decode()}}})


def write_auth(folder: Path, runtime: Runtime, login: RegistryLogin) -> Path:
    """Write the login's auth file in a fresh private `folder`; the file's path."""
    remove_auth(folder)
    folder.mkdir(mode=0o700)
    path = folder / AUTH_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(auth_file_text(runtime, login))
    return path


def remove_auth(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def pull_command(runtime: Runtime, image: str, auth: Path | None) -> list[str]:
    """`<runtime> pull`, with the auth file of the pull's login where there is one."""
    if auth is None:
        return runtime.command("pull", *runtime.pull_args, image)
    if runtime.name == "docker":  # a global option: the directory that holds config.json
        return [*runtime.argv, "--config", str(auth.parent), "pull", *runtime.pull_args, image]
    return runtime.command("pull", "--authfile", str(auth), *runtime.pull_args, image)


@dataclass(frozen=True)
class PullFiles:
    """Beside a task's log: `state` holds "pulling" while its image is pulled (written before
    the task starts) and "failed" after a failed pull; `log` the pull's output."""

    state: Path
    log: Path


def launch_script(
    runtime: Runtime,
    task: ContainerTask,
    *,
    cdi: bool,
    pull: PullFiles | None,
    pull_timeout: float,
    log: Path,
    auth: Path | None = None,
) -> str:
    """The shell script a container task runs under its supervisor (its output goes to the
    task's `log`): the pull (when the image is not here), then `<runtime> run`. A failed pull
    writes "failed" to the state file and exits 125; the run's own exit code is the task's.
    `auth`: the pull's auth file (write_auth), whose directory goes once the pull ends."""
    lines = []
    if pull is not None:
        state, output = shlex.quote(str(pull.state)), shlex.quote(str(pull.log))
        limit = ""
        if shutil.which("timeout"):
            limit = f"timeout --foreground -k 10 {math.ceil(pull_timeout)} "
        pulling = _words(pull_command(runtime, task.image, auth))
        forget = f"rm -rf {shlex.quote(str(auth.parent))}; " if auth is not None else ""
        lines += [
            f"{limit}{pulling} >{output} 2>&1 </dev/null || {{ "
            f"printf 'jobyard: the pull exited with code %s\\n' \"$?\" >>{output}; {forget}"
            f"printf 'failed\\n' >{state}; exit {PULL_FAILED_CODE}; }}",
            f"{forget}rm -f {state} {output}",
        ]
    if runtime.name == "docker":  # podman has --replace: a container a crash left goes first
        lines.append(f"{_words(runtime.command('rm', '-f', task.name))} >/dev/null 2>&1")
    run = _words(run_command(runtime, task, cdi=cdi))
    if runtime.name != "podman":
        return "\n".join([*lines, f"exec {run}"]) + "\n"
    # catatonit, podman's --init, says no more of a program it cannot run than "failed to exec
    # pid1", and exits 1: the log then names the program, and the code is a shell's 127 or 126.
    said, program = f"tail -c 1024 {shlex.quote(str(log))} 2>/dev/null | grep -q", task.argv[0]
    lines += [
        run,
        'set -- "$?"',
        f"if [ \"$1\" = 1 ] && {said} 'catatonit.*failed to exec pid1'; then",
        f"  if {said} 'failed to exec pid1: Permission denied'; then set -- 126",
        "  else set -- 127; fi",
        "  printf 'jobyard: cannot run %s in the image (not found, or not executable)\\n' "
        f"{shlex.quote(program)} >&2",
        "fi",
        'exit "$1"',
    ]
    return "\n".join(lines) + "\n"


def pull_failure(files: PullFiles, pull_timeout: float) -> str | None:
    """The message of a failed pull (the runtime's own words), or None if it did not fail."""
    try:
        if files.state.read_text().strip() != "failed":
            return None
    except OSError:
        return None
    try:
        said = files.log.read_text(errors="replace")
    except OSError:
        said = ""
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    if any(line.endswith("code 124") for line in lines):
        return f"pulling the image took longer than {pull_timeout:g} s (container_pull_timeout)"
    errors = [line for line in lines if line.lower().startswith("error")]
    message = "; ".join(errors or lines[-1:]) or "the image could not be pulled"
    return message[:_MESSAGE_BYTES]


def is_pulling(files: PullFiles) -> bool:
    try:
        return files.state.read_text().strip() == "pulling"
    except OSError:
        return False


# ---- asking the runtime -----------------------------------------------------------------------


def image_present(runtime: Runtime, image: str) -> bool:
    """Is the image in the runtime's local store? (False also where the runtime errs: the pull
    that follows then says why.)"""
    words = ("image", "exists", image) if runtime.name == "podman" else ("image", "inspect", image)
    return _run(runtime.command(*words)).returncode == 0


def find_containers(runtime: Runtime, **label: str) -> list[str]:
    """The names of the containers (running or not) that carry all these labels."""
    filters = [w for key, value in label.items() for w in ("--filter", f"label={key}={value}")]
    done = _run(runtime.command("ps", "-a", *filters, "--format", "{{.Names}}"))
    return done.stdout.split() if done.returncode == 0 else []


def remove_containers(runtime: Runtime, names: Sequence[str]) -> None:
    """Kill and remove them (SIGKILL to what is left); a name already gone is no error."""
    if names:
        _run(runtime.command("rm", "-f", *names))


async def stop_container(runtime: Runtime, name: str, grace: float) -> bool:
    """`stop -t <grace>`: the stop signal, then SIGKILL after the grace period (whole seconds,
    rounded up); returns when the container has stopped. False: no such container (yet)."""
    words = runtime.command("stop", "-t", str(math.ceil(max(grace, 0))), name)
    proc = await asyncio.create_subprocess_exec(
        *words,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        return await asyncio.wait_for(proc.wait(), grace + _COMMAND_TIMEOUT) == 0
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return False
    except asyncio.CancelledError:  # the executor closes: end the CLI (reaped), not the server
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise


def exec_command(runtime: Runtime, name: str, cwd: str, command: str | None) -> list[str]:
    """`exec` into a running container: an interactive login shell (bash where the image has
    it, else sh), or the command line `command` under /bin/sh -c. Run on this server: with a
    terminal (`-it`, TERM passed on) where its stdin is one, else with plain pipes (`-i`)."""
    script = command if command is not None else _LOGIN_SHELL
    tail = _words(["--workdir", cwd, name, "/bin/sh", "-c", script])
    pick = (
        'if [ -t 0 ]; then set -- -it --env "TERM=${TERM:-xterm-256color}"; else set -- -i; fi; '
        f'exec {_words(runtime.command("exec"))} "$@" {tail}'
    )
    return ["/bin/sh", "-c", pick, "jobyard-exec"]


_LOGIN_SHELL = "if command -v bash >/dev/null 2>&1; then exec bash -il; fi; exec sh -il"


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(  # noqa: S603 - the runtime's CLI, arguments as a list
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(list(argv), 125, "", str(exc))


def _words(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(word) for word in argv)


# ---- on a node of a cluster (Slurm) ----------------------------------------------------------
# There the task's script does itself what the local executor does from this server: it checks
# for the image and pulls it (the same state and output files beside the log, on the shared
# filesystem), runs the container in the background, and on the TERM of a stop (scancel) runs
# `stop -t <grace>`, so the container never outlives its Slurm job. Each task's own names (its
# rank's task name, so its container, labels and files) come from JOBYARD_TASK_NAME, and the
# GPUs Slurm gave the step (SLURM_STEP_GPUS, else SLURM_JOB_GPUS) become CDI devices.

# What a task's container gets from the node's environment (`--env NAME`): what Slurm and the
# supervisor set per task. The rest of its variables are in the env file.
NODE_VARIABLES = (
    "JOBYARD_JOB_ID",
    "JOBYARD_DISPLAY_ID",
    "JOBYARD_TASK_NAME",
    "JOBYARD_TASK_INDEX",
    "CUDA_VISIBLE_DEVICES",
    *(
        f"{prefix}{name}"
        for prefix in ("", "JOBYARD_")
        for name in (
            "MASTER_ADDR",
            "MASTER_PORT",
            "WORLD_SIZE",
            "RANK",
            "NODE_RANK",
            "LOCAL_RANK",
            "NNODES",
            "NPROC_PER_NODE",
        )
    ),
)


@dataclass(frozen=True)
class NodeTask:
    """A job's tasks in containers on a cluster's nodes: what every task's script shares."""

    image: str
    job_id: int
    home: Path
    files_dir: Path  # where each task's log, exit and pull files are: <dir>/<task name>.*
    cwd: Path
    env_file: Path
    argv: tuple[str, ...]
    grace: float


def node_script(
    runtime: Runtime, task: NodeTask, *, pull_timeout: float, auth: bool = False
) -> str:
    """The script each task of `task` runs on its node, under the Slurm supervisor. `auth`:
    each task has an auth file (write_auth) in <files_dir>/<task name>.auth, which its pull
    uses and which goes once the image is there (pulled or not), or the pull failed."""
    r = _words(runtime.command())
    image, files = shlex.quote(task.image), shlex.quote(str(task.files_dir))
    cwd = str(task.cwd)
    if "," in cwd or "\n" in cwd:
        raise StartFailed(f"a container cannot mount the working directory {cwd!r} (a comma)")
    exists = "image exists" if runtime.name == "podman" else "image inspect"
    limit = f"timeout --foreground -k 10 {math.ceil(pull_timeout)} "
    pull = _words(runtime.command("pull", *runtime.pull_args, task.image))
    forget = ""
    if auth:  # the path is the task's own, known on the node: a variable, not a word
        at = '"$_jobyard_a"'
        pulling = [*runtime.argv, "--config", at, "pull"] if runtime.name == "docker" else []
        pulling = pulling or [*runtime.argv, "pull", "--authfile", f"{at}/{AUTH_FILE}"]
        rest = _words([*runtime.pull_args, task.image])
        pull = " ".join(w if w.startswith(at) else shlex.quote(w) for w in pulling) + f" {rest}"
        forget = 'rm -rf "$_jobyard_a"; '
    marks = [
        f"--label {LABEL_JOB}={task.job_id}",
        f'--label {LABEL_TASK}="$JOBYARD_TASK_NAME"',
        f"--label {shlex.quote(f'{LABEL_HOME}={task.home}')}",
    ]
    own = "--replace --log-driver passthrough " if runtime.name == "podman" else ""
    mount = shlex.quote(f"type=bind,source={cwd},destination={cwd}")
    env = " ".join(f"--env {name}" for name in NODE_VARIABLES)
    tail = _words([*runtime.run_args, task.image, *task.argv])
    lines = [
        f'_jobyard_s={files}/"$JOBYARD_TASK_NAME".pull-state',
        f'_jobyard_o={files}/"$JOBYARD_TASK_NAME".pull',
        f'_jobyard_l={files}/"$JOBYARD_TASK_NAME".log',
        f'_jobyard_c=jobyard-"$JOBYARD_TASK_NAME"-{home_tag(task.home)}',
        f'_jobyard_a={files}/"$JOBYARD_TASK_NAME".auth',
        f"if ! {r} {exists} {image} >/dev/null 2>&1; then",
        "  printf 'pulling\\n' >\"$_jobyard_s\"",
        "  command -v timeout >/dev/null || _jobyard_t=; "
        f'{{ ${{_jobyard_t-{limit}}}{pull} >"$_jobyard_o" 2>&1 </dev/null || {{ '
        f'printf \'jobyard: the pull exited with code %s\\n\' "$?" >>"$_jobyard_o"; {forget}'
        f"printf 'failed\\n' >\"$_jobyard_s\"; exit {PULL_FAILED_CODE}; }}; }}",
        '  rm -f "$_jobyard_s" "$_jobyard_o"',
        "fi",
    ]
    if forget:
        lines.append(forget.rstrip("; "))
    if runtime.name == "docker":
        lines.append(f'{r} rm -f "$_jobyard_c" >/dev/null 2>&1')
    lines += [
        "set --; _jobyard_n=0; _jobyard_g=",
        '_jobyard_d="${SLURM_STEP_GPUS:-${SLURM_JOB_GPUS:-}}"',
        "for _jobyard_d in $(printf '%s' \"$_jobyard_d\" | tr , ' '); do",
        '  set -- "$@" --device "nvidia.com/gpu=$_jobyard_d"',
        '  _jobyard_g="${_jobyard_g:+$_jobyard_g,}$_jobyard_n"; _jobyard_n=$((_jobyard_n + 1))',
        "done",
        'export CUDA_VISIBLE_DEVICES="$_jobyard_g"',
        f"trap '{r} stop -t {math.ceil(max(task.grace, 0))} \"$_jobyard_c\" >/dev/null 2>&1' "
        "TERM INT HUP",
        # the TERM of a stop reaches `run` too, which passes it on (--sig-proxy) and lives on
        f'{r} run --rm --name "$_jobyard_c" --init --network host --pull never '
        f"{' '.join(marks)} {own}--env-file {shlex.quote(str(task.env_file))} {env} "
        f'--mount {mount} --workdir {shlex.quote(cwd)} "$@" {tail} &',
        "_jobyard_r=$!",  # a trap interrupts `wait`: again until `run` has ended, then its code
        'while kill -0 "$_jobyard_r" 2>/dev/null; do wait "$_jobyard_r"; done',
        'wait "$_jobyard_r"; _jobyard_rc=$?',
    ]
    if runtime.name == "podman":  # as launch_script: catatonit's "failed to exec pid1"
        said = 'tail -c 1024 "$_jobyard_l" 2>/dev/null | grep -q'
        lines += [
            f"if [ \"$_jobyard_rc\" = 1 ] && {said} 'catatonit.*failed to exec pid1'; then",
            f"  if {said} 'failed to exec pid1: Permission denied'; then _jobyard_rc=126",
            "  else _jobyard_rc=127; fi",
            "  printf 'jobyard: cannot run %s in the image (not found, or not executable)\\n' "
            f"{shlex.quote(task.argv[0])} >&2",
            "fi",
        ]
    lines.append('exit "$_jobyard_rc"')
    return "\n".join(lines) + "\n"


# ---- a task's handle --------------------------------------------------------------------------
# A container task's handle is a process task's (the supervisor's pid, its log and exit file)
# with "container" (its name), "image", "runtime" (the CLI and global arguments it was started
# with), "env_file", "pull_state" and "pull_log": every one follows from the job and the task,
# so a restarted server finds them again.


def handle_fields(
    runtime: Runtime | None, image: str, job_id: int, task_name: str, home: Path, files: Path
) -> ContainerFields:
    """The handle's container fields; `files` is the path prefix of the task's files."""
    saved: SavedRuntime | None = (
        {"name": runtime.name, "argv": list(runtime.argv)} if runtime else None
    )
    return {
        "container": container_name(task_name, home),
        "image": image,
        "labels": labels(job_id, task_name, home),
        "runtime": saved,
        "env_file": f"{files}.env",
        "pull_state": f"{files}.pull-state",
        "pull_log": f"{files}.pull",
        "auth_dir": f"{files}.auth",
        "pid_file": f"{files}.cpid",
    }


def in_container(handle: Handle) -> bool:
    return "container" in handle


def runtime_in(handle: Handle) -> Runtime | None:
    saved = handle.get("runtime")
    if not isinstance(saved, dict) or not saved.get("argv"):
        return None
    return Runtime(str(saved.get("name", "")), tuple(str(a) for a in saved["argv"]))


def pull_files(handle: Handle) -> PullFiles:
    return PullFiles(Path(handle["pull_state"]), Path(handle["pull_log"]))


def container_pids(handle: Handle) -> list[int]:
    """The container's first process (podman's --pidfile: catatonit, under `--init`), whose
    descendants are the job's processes; [] while there is none, or where the pid is no
    longer the container's (its parent is not conmon: the container ended, the pid reused).
    The usage sampler measures these, not the supervisor, whose tree is the launch script and
    the `podman run` client (the container runs under conmon, outside it)."""
    try:
        pid = int(Path(handle["pid_file"]).read_text().strip())
        with open(f"/proc/{pid}/stat", "rb") as f:
            ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        with open(f"/proc/{ppid}/comm", "rb") as f:
            parent = f.read().strip()
    except (OSError, KeyError, ValueError, IndexError):
        return []
    return [pid] if pid > 0 and parent == b"conmon" else []


def handle_pulling(handle: Handle) -> bool:
    return in_container(handle) and is_pulling(pull_files(handle))


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    """The container's variables, readable by this server's user only (they may be secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(env_file_text(env))


def task_report(handle: Handle, report: TaskReport, pull_timeout: float) -> TaskReport:
    """A process task's report, as its container says: PENDING (PULLING) while the image is
    pulled, IMAGE_PULL_FAILED with the runtime's words when the pull failed."""
    files = pull_files(handle)
    if report.state is TaskState.RUNNING and is_pulling(files):
        pulling = f"pulling image {handle.get('image')}"
        return TaskReport(TaskState.PENDING, message=pulling, pending_reason=PendingReason.PULLING)
    if report.state is TaskState.EXITED and report.exit_code == PULL_FAILED_CODE:
        message = pull_failure(files, pull_timeout)
        if message is not None:
            said = f"cannot pull image {handle.get('image')}: {message}"
            return replace(report, message=said, reason=TerminationReason.IMAGE_PULL_FAILED)
    return report


async def stop_task(handle: Handle, grace: float, *, alive: Callable[[], bool]) -> None:
    """Stop a container task: `stop -t <grace>` (the stop signal, then SIGKILL); where there is
    no container yet (its image is being pulled) SIGTERM to the supervisor's group instead,
    SIGKILL after the grace period. Then whatever is left: the group, the supervisor's
    descendants, and the container itself (`rm -f`), so nothing of the task remains."""
    pgid, runtime = int(handle["pid"]), runtime_in(handle)
    escaped = _descendants(pgid)
    stopped = runtime is not None and await stop_container(runtime, handle["container"], grace)
    if not stopped and alive():
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + (5.0 if stopped else grace)  # after a stop: `run` returns
    while alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if alive():
        _signal_group(pgid, signal.SIGKILL)
    for proc in escaped:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    forget_auth(handle)  # the pull is over: before `rm -f`, which may take a while
    if runtime is not None:
        await asyncio.to_thread(remove_containers, runtime, [handle["container"]])


def forget_auth(handle: Handle) -> None:
    """Remove the task's auth file, where a pull that never ended (a stop) left it."""
    if "auth_dir" in handle:
        remove_auth(Path(handle["auth_dir"]))


def remove_leftovers(handle: Handle) -> int:
    """Remove the containers of an ended task (by its labels): how many there were."""
    runtime, marks = runtime_in(handle), handle.get("labels") or {}
    if runtime is None or LABEL_TASK not in marks or LABEL_HOME not in marks:
        return 0
    names = find_containers(runtime, **{k: marks[k] for k in (LABEL_TASK, LABEL_HOME)})
    remove_containers(runtime, names)
    return len(names)


def shell(handle: Handle, cwd: str, command: str | None, env: Mapping[str, str]) -> ShellCommand:
    """A shell inside the task's container (`exec`), spawned on this server with `env`."""
    runtime = runtime_in(handle)
    if runtime is None or handle_pulling(handle):
        raise ExecutorRefused(f"the container of {handle['container']} is not running yet")
    argv = exec_command(runtime, handle["container"], cwd, command)
    return ShellCommand(argv=argv, env={"TERM": "xterm-256color", **env}, cwd=cwd)


async def watch_pull(
    handle: Handle, *, alive: Callable[[], bool], then: Callable[[], None]
) -> None:
    """Call `then` once the task's image is pulled (or the task ended): the job runs from then."""
    files = pull_files(handle)
    while is_pulling(files) and alive():
        await asyncio.sleep(0.05)
    then()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
