"""Tasks as real processes on this machine.

Each task runs under a tiny /bin/sh supervisor that leads a new session and process group,
runs the task in the foreground, and writes the task's exit code to a file. The server is the
supervisor's parent and is told of its exit through a pidfd; after a server restart the
supervisor is no longer our child, so poll() reads the exit file instead (or finds the task
still running, identified by pid and start time). Stop is SIGTERM to the group, then SIGKILL.

A crash can fall between a spawn and the write that stores its handle: find_started() then
finds the supervisor by the exit file its argv names, the exit file itself, or any process
with the task in its environment (processes.py). A task that was not our child is reported
ended only once no process of it is left: poll() kills what it left first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import psutil

from jobyard.config import EnvironmentSpec, LocalExecutorSettings
from jobyard.errors import ExecutorRefused
from jobyard.executors import containers
from jobyard.executors.base import (
    Capacity,
    Executor,
    Handle,
    InterruptedStart,
    ShellCommand,
    StartedTask,
    StartFailed,
    TaskReport,
)
from jobyard.executors.environment import catalog_entry, task_environment
from jobyard.executors.handles import LocalHandle
from jobyard.executors.local import processes
from jobyard.executors.local.gpus import discover_gpus
from jobyard.executors.spawn import descendants, exit_code, signal_group, spawn_session
from jobyard.model import JobSpec, PendingReason, Placement, TaskState
from jobyard.model.job import TaskPlacement
from jobyard.model.registry import login_for

log = logging.getLogger(__name__)

# $1 is the exit file, $2 the working directory, the rest the task's argv. The trap keeps the
# supervisor alive through SIGTERM/SIGINT/SIGHUP sent to the group; the task itself gets the
# default dispositions back on exec. The supervisor's own stderr is /dev/null and the task's is
# the log (fd 3), redirected inside the subshell: so dash's "Terminated" notice about a killed
# task never lands in the task's log. It sets no shell variable: the task inherits the
# supervisor's environment, where a job's own `x` or `rc` must keep the job's value.
_SUPERVISOR = (
    'cd "$2" || exit 126; trap : TERM INT HUP; exec 3>&2 2>/dev/null; '
    '(shift 2; exec "$@" 2>&3 3>&-); set -- "$1" "$?"; printf "%s\\n" "$2" > "$1"; exit "$2"'
)
# How every supervisor's argv begins; the exit file comes next (how a restarted server finds it).
_SUPERVISOR_ARGV = ("/bin/sh", "-c", _SUPERVISOR, "jobyard-task")
# An exit file older than the start it is asked about (by more than this, in seconds: file
# times lag the clock by a tick) is an earlier attempt's.
_EXIT_FILE_SLACK = 1.0


class LocalExecutor(Executor):
    kind: ClassVar[str] = "local"
    settings_type: ClassVar[type[LocalExecutorSettings]] = LocalExecutorSettings
    capabilities: ClassVar[frozenset[str]] = frozenset({"shell", "ports", "usage"})

    def __init__(self, settings: LocalExecutorSettings) -> None:
        self._settings = settings
        self._logs_dir = settings.logs_dir.resolve()
        self._jobs_dir = settings.jobs_dir.resolve()
        self._node = settings.node_name
        # The pool's declared capacity (config.LocalExecutorSettings.of); unset means discover.
        cpus = settings.cpus
        self._capacity = Capacity(
            node=settings.node_name,
            cpus=cpus if cpus is not None else float(os.cpu_count() or 1),
            memory_mib=settings.memory_mib or psutil.virtual_memory().total // 2**20,
            gpus=discover_gpus(settings.gpus),
            max_tasks=settings.max_tasks,
        )
        self._children: dict[int, int | None] = {}  # pid -> pidfd of the tasks we spawned
        self._exited: dict[int, int] = {}
        self._forgotten: set[int] = set()
        self._stopping: dict[int, asyncio.Task[None]] = {}
        self._spawner = concurrent.futures.ThreadPoolExecutor(2, "jobyard-spawn")
        # Containers (executors/containers.py): the runtime, once found; when each image was
        # last seen in its store (no check again for a minute); the watchers of pulls.
        self._runtime: containers.Runtime | None = None
        self._images: dict[str, float] = {}
        self._pulls: set[asyncio.Task[None]] = set()

    # ---- contract -----------------------------------------------------------------------------

    def capacity(self) -> Capacity:
        return self._capacity

    def check_spec_supported(self, placement_spec: Any) -> None:
        if not isinstance(placement_spec, JobSpec):
            return
        image = containers.container_image(self._settings, placement_spec)
        if image is not None:
            self._container_runtime(image)
            containers.check_env(placement_spec.env)
        elif placement_spec.image:
            self._environment_of(placement_spec)

    def _container_runtime(self, image: str) -> containers.Runtime:
        if self._runtime is None:
            self._runtime = containers.require_runtime(self._settings, self.kind, image)
        return self._runtime

    def _environment_of(self, spec: JobSpec) -> EnvironmentSpec | None:
        return catalog_entry(self._settings, spec, kind="local")

    async def start(self, placement: Placement) -> list[StartedTask]:
        self.check_spec_supported(placement.spec)
        if len(placement.tasks) > 1 and placement.master_port is None:
            placement = placement.model_copy(update={"master_port": _free_port()})
        started: list[StartedTask] = []
        loop = asyncio.get_running_loop()
        try:
            for task in placement.tasks:
                # Spawning waits for the exec (about a millisecond): off the event loop.
                spawned = await loop.run_in_executor(
                    self._spawner, self._start_task, placement, task
                )
                self._children[spawned.pid or 0] = self._watch(spawned.pid or 0)
                started.append(spawned)
                if spawned.waiting:  # its image is being pulled: the job runs once it is here
                    self._watch_pull(spawned.handle)
        except StartFailed:
            for done in started:  # all or nothing: the job fails with none of its tasks left
                await self.stop(done.handle, grace=0)
            pids = [t.pid or 0 for t in started]
            await asyncio.gather(*(self._stopping[p] for p in pids if p in self._stopping))
            raise
        return started

    async def find_started(
        self, starts: Sequence[InterruptedStart]
    ) -> list[list[StartedTask | None]]:
        return await asyncio.to_thread(self._find_started, starts)

    async def poll(self, handles: Sequence[Handle]) -> list[TaskReport]:
        reports, adopted_ends = [], []
        for handle in handles:
            adopted = not self._is_child(handle)
            reports.append(self._poll_one(handle))
            if containers.in_container(handle):
                timeout = self._settings.container_pull_timeout_seconds
                reports[-1] = containers.task_report(handle, reports[-1], timeout)
            if adopted and reports[-1].state.is_finished():
                adopted_ends.append(len(reports) - 1)
        if adopted_ends:  # not our child: what it left running was not killed when it ended
            left = await asyncio.to_thread(self._kill_leftovers, [handles[i] for i in adopted_ends])
            for i, count in zip(adopted_ends, left, strict=True):
                if count:
                    message = f"killing the {count} process(es) the task left running"
                    reports[i] = TaskReport(TaskState.RUNNING, message=message)
        return reports

    async def stop(self, handle: Handle, grace: float) -> None:
        pid = int(handle.get("pid", 0))
        if pid <= 0 or pid in self._exited or pid in self._stopping:
            return
        if not self._owns(handle):
            return
        if containers.in_container(handle):
            self._stopping[pid] = asyncio.create_task(self._stop_container(handle, grace))
            return
        escaped = descendants(pid)
        signal_group(pid, signal.SIGTERM)
        self._stopping[pid] = asyncio.create_task(self._kill_after(handle, grace, escaped))

    def shell_command(
        self,
        placement: Placement,
        task_index: int,
        handle: Handle,
        command: str | None = None,
    ) -> ShellCommand:
        task = next((t for t in placement.tasks if t.index == task_index), None)
        if task is None or not self._owns(handle):
            raise ExecutorRefused(f"task {task_index} of job {placement.job_id} is not running")
        if containers.in_container(handle):  # a shell inside its container: `exec -it`
            cwd = str(self._working_dir(placement))
            return containers.shell(handle, cwd, command, _server_environment())
        env = self._environment(placement, task)
        if placement.master_port is None:
            env.pop("MASTER_PORT", None)  # the task's own port is not known here: do not lie
        shell = _login_shell(env)
        env.setdefault("TERM", "xterm-256color")
        env["SHELL"] = shell
        argv = [shell, "-c", command] if command is not None else [shell, "-i"]
        return ShellCommand(argv=argv, env=env, cwd=str(self._working_dir(placement)))

    def task_pids(self, handle: Handle) -> Sequence[int]:
        """The supervisor (it leads the task's session, and the task is its child); for a
        container, the container's first process instead (containers.container_pids)."""
        pid = int(handle.get("pid", 0))
        if pid <= 0 or not self._owns(handle):
            return []
        return containers.container_pids(handle) if containers.in_container(handle) else [pid]

    def release(self, handle: Handle, *, remove_files: bool) -> None:
        pid = int(handle.get("pid", 0))
        self._exited.pop(pid, None)
        if pid in self._children:
            self._forgotten.add(pid)  # still running: reap it when it exits, then forget it
        containers.forget_auth(handle)
        if remove_files:
            for key in ("log", "exit", "env_file", "pull_state", "pull_log", "pid_file"):
                with contextlib.suppress(OSError, KeyError):
                    os.unlink(handle[key])
            with contextlib.suppress(OSError, KeyError):
                Path(handle["log"]).parent.rmdir()

    async def close(self) -> None:
        self._spawner.shutdown(wait=True)
        pending = [*self._pulls, *self._stopping.values()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)  # each ends what it started
        loop = asyncio.get_running_loop()
        for pidfd in self._children.values():
            if pidfd is not None:
                loop.remove_reader(pidfd)
                os.close(pidfd)
        self._children.clear()

    # ---- starting -----------------------------------------------------------------------------

    def _start_task(self, placement: Placement, task: TaskPlacement) -> StartedTask:
        try:
            return self._prepare_and_spawn(placement, task)
        except OSError as exc:  # no room for its log, an unwritable data directory, ...
            raise StartFailed(f"cannot prepare {task.name}: {exc}") from exc
        except ValueError as exc:  # an argument or env value the C library cannot take
            raise StartFailed(f"cannot start {task.name}: {exc}") from exc

    def _prepare_and_spawn(self, placement: Placement, task: TaskPlacement) -> StartedTask:
        spec = placement.spec
        env = self._environment(placement, task)
        cwd = self._working_dir(placement)
        argv = spec.argv()
        handle = self._handle(placement, task)
        log_path, exit_path = Path(handle["log"]), Path(handle["exit"])
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            exit_path.unlink()  # a retried task: the earlier attempt's exit code is not this one's
        pulling = False
        if containers.in_container(handle):  # the program is the image's: checked in there
            argv, env, pulling = self._in_container(placement, task, handle, env, cwd)
        else:
            _check_program(argv[0], env.get("PATH", os.defpath), cwd)
        pid = self._spawn(argv, env, cwd, log_path, exit_path)
        handle["pid"], handle["start_ticks"] = pid, (_proc_stat(pid) or ("", 0))[1]
        started = StartedTask(index=task.index, pid=pid, node=self._node, handle=handle)
        if not pulling:
            return started
        said = f"pulling image {handle['image']}"
        return replace(
            started, waiting=True, pending_reason=PendingReason.PULLING, pending_message=said
        )

    def _in_container(
        self,
        placement: Placement,
        task: TaskPlacement,
        handle: Handle,
        variables: dict[str, str],
        cwd: Path,
    ) -> tuple[list[str], dict[str, str], bool]:
        """The supervisor's argv and env for a task in a container, and whether its image is
        to be pulled first: the launch script, run with this server's environment (the task's
        own variables go to the container in its env file)."""
        runtime, image = self._container_runtime(handle["image"]), handle["image"]
        env_file, files = Path(handle["env_file"]), containers.pull_files(handle)
        Path(handle["pid_file"]).unlink(missing_ok=True)  # an earlier attempt's is not this one's
        containers.write_env_file(env_file, containers.container_env(variables, task.gpus))
        seen = self._images.get(image)
        pull = (seen is None or time.monotonic() - seen > 60) and not containers.image_present(
            runtime, image
        )
        auth = None
        if pull:
            files.state.write_text("pulling\n")
            login = login_for(image, placement.registry_logins)
            if login is not None:  # for this pull alone: the script removes it once it ends
                auth = containers.write_auth(Path(handle["auth_dir"]), runtime, login)
        else:
            self._images[image] = time.monotonic()
        container = containers.ContainerTask(
            name=handle["container"],
            image=image,
            labels=handle["labels"],
            cwd=cwd,
            env_file=env_file,
            gpus=tuple(task.gpus),
            argv=tuple(placement.spec.argv()),
            pid_file=Path(handle["pid_file"]),
        )
        script = containers.launch_script(
            runtime,
            container,
            cdi=containers.cdi_specs_exist(),
            pull=files if pull else None,
            pull_timeout=self._settings.container_pull_timeout_seconds,
            log=Path(handle["log"]),
            auth=auth,
        )
        env = _server_environment()
        env.update({k: variables[k] for k in _KEY_VARIABLES})  # how a restart finds the task
        return ["/bin/sh", "-c", script, "jobyard-container"], env, pull

    def _watch_pull(self, handle: Handle) -> None:
        watcher = asyncio.create_task(
            containers.watch_pull(handle, alive=lambda: self._owns(handle), then=self.wakeup)
        )
        self._pulls.add(watcher)
        watcher.add_done_callback(self._pulls.discard)

    async def _stop_container(self, handle: Handle, grace: float) -> None:
        try:
            await containers.stop_task(handle, grace, alive=lambda: self._owns(handle))
        finally:
            self._stopping.pop(int(handle["pid"]), None)
            self.wakeup()

    def _handle(self, placement: Placement, task: TaskPlacement) -> LocalHandle:
        """A task's handle before its spawn: every path in it follows from the job and task
        (so a restarted server finds them again), and its key is the one in the task's env."""
        log_dir = self._logs_dir / str(placement.job_id)
        handle: LocalHandle = {
            "pid": 0,
            "start_ticks": 0,
            "log": str(log_dir / f"{task.name}.log"),
            "exit": str(log_dir / f"{task.name}.exit"),
            "node": self._node,
            "key": [str(placement.job_id), placement.display_id, task.name],
        }
        image = containers.container_image(self._settings, placement.spec)
        if image is not None:
            runtime = self._runtime or containers.find_runtime(self._settings)
            home, files = self._logs_dir.parent, log_dir / task.name
            fields = containers.handle_fields(
                runtime, image, placement.job_id, task.name, home, files
            )
            return {**handle, **fields}
        return handle

    def _spawn(
        self, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path, exit_path: Path
    ) -> int:
        """posix_spawn the supervisor in a new session (without holding the GIL: spawn.py);
        output appended to the log file."""
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        supervisor = [*_SUPERVISOR_ARGV, str(exit_path), str(cwd)]
        try:
            pid = spawn_session("/bin/sh", [*supervisor, *argv], env, output_fd=log_fd)
        except OSError as exc:
            raise StartFailed(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from exc
        finally:
            os.close(log_fd)
        return pid

    # ---- finding what a crash left ------------------------------------------------------------

    def _find_started(self, starts: Sequence[InterruptedStart]) -> list[list[StartedTask | None]]:
        found = processes.scan([os.fsencode(a) for a in _SUPERVISOR_ARGV])
        return [
            [self._found_task(start, task, found) for task in start.placement.tasks]
            for start in starts
        ]

    def _found_task(
        self, start: InterruptedStart, task: TaskPlacement, found: processes.Scan
    ) -> StartedTask | None:
        """The task's supervisor (adopted), else its exit file (it ran and ended), else any
        process of it (to be killed: poll() does so, then reports it LOST); else None."""
        handle = self._handle(start.placement, task)
        supervisor = found.supervisors.get(os.fsencode(handle["exit"])) or _started_elsewhere(
            handle, found
        )
        if supervisor is not None:
            handle["pid"], handle["start_ticks"] = supervisor[0], supervisor[1]
        elif not (
            _modified_since(handle["exit"], start.since - _EXIT_FILE_SLACK)
            or found.members.get(_key(handle) or ("", "", ""))
        ):
            return None
        pid = int(handle["pid"]) or None
        waiting = containers.handle_pulling(handle)  # its image still being pulled
        return StartedTask(
            index=task.index, pid=pid, node=self._node, handle=handle, waiting=waiting
        )

    def _kill_leftovers(self, handles: Sequence[Handle]) -> list[int]:
        """For each handle, how many processes of its task were still alive (each now sent
        SIGKILL); 0 when none is left, or the handle carries no key (stored before keys)."""
        keyed = [_key(handle) for handle in handles]
        if not any(keyed):
            return [0] * len(handles)
        members = processes.scan(()).members
        counts = []
        for key, handle in zip(keyed, handles, strict=True):
            pids = members.get(key, []) if key else []
            if key and pids:
                processes.kill(pids, key)
            left = containers.remove_leftovers(handle) if containers.in_container(handle) else 0
            counts.append(len(pids) + left)
        return counts

    def _watch(self, pid: int) -> int | None:
        """Be told when `pid` exits (pidfd); without pidfd, poll() reaps it on the next pass."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return None
        asyncio.get_running_loop().add_reader(pidfd, self._on_exit, pid)
        return pidfd

    def _on_exit(self, pid: int) -> None:
        signal_group(pid, signal.SIGKILL)  # a zombie leader still holds its group: clean it out
        self._reap(pid)
        self.wakeup()

    def _reap(self, pid: int) -> int | None:
        try:
            waited, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            waited, status = pid, 255 << 8  # reaped elsewhere: the exit code is unknowable
        if waited == 0:
            return None
        code = exit_code(status)  # killed by signal N -> 128+N, as a shell says
        if pid in self._forgotten:
            self._forgotten.discard(pid)
        else:
            self._exited[pid] = code
        pidfd = self._children.pop(pid, None)
        if pidfd is not None:
            asyncio.get_running_loop().remove_reader(pidfd)
            os.close(pidfd)
        return code

    def _working_dir(self, placement: Placement) -> Path:
        if placement.spec.working_dir:
            path = Path(placement.spec.working_dir)
            if not path.is_dir():
                raise StartFailed(f"working_dir {str(path)!r} does not exist or is not a directory")
            return path
        path = self._jobs_dir / str(placement.job_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _environment(self, placement: Placement, task: TaskPlacement) -> dict[str, str]:
        image = containers.container_image(self._settings, placement.spec)
        if image is not None:  # the image's environment, not this server's, plus the task's
            entry = self._settings.find_environment(placement.spec.image or image)
            env = dict(entry.env) if entry is not None and entry.image else {}
            env.update(task_environment(placement, task, None, ""))
        else:
            env = _server_environment()
            entry = self._environment_of(placement.spec)
            env.update(task_environment(placement, task, entry, env.get("PATH", os.defpath)))
        if task.gpus or self._capacity.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in task.gpus)
        replicas = len(placement.tasks)
        if replicas > 1:
            dist = {
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(placement.master_port or _free_port()),
                "WORLD_SIZE": str(replicas),
                "RANK": str(task.index),
                "NODE_RANK": str(task.index),
                "LOCAL_RANK": "0",
                "NNODES": str(replicas),
                "NPROC_PER_NODE": "1",
            }
            env.update(dist)
            env.update({f"JOBYARD_{key}": value for key, value in dist.items()})
        return env

    # ---- watching and stopping ----------------------------------------------------------------

    def _poll_one(self, handle: Handle) -> TaskReport:
        pid = int(handle.get("pid", 0))
        if pid in self._exited:
            return TaskReport(TaskState.EXITED, self._exited[pid])
        if pid in self._children:
            code = self._reap(pid)
            if code is None:
                return TaskReport(TaskState.RUNNING)
            return TaskReport(TaskState.EXITED, code)
        return self._poll_adopted(handle)

    def _poll_adopted(self, handle: Handle) -> TaskReport:
        """A task started by an earlier server process: not our child any more."""
        if self._owns(handle):
            return TaskReport(TaskState.RUNNING)
        code = _read_exit_file(handle.get("exit"))
        if code is not None:
            return TaskReport(TaskState.EXITED, code)
        return TaskReport(
            TaskState.LOST, message="the task's process is gone and left no exit code"
        )

    def _is_child(self, handle: Handle) -> bool:
        pid = int(handle.get("pid", 0))
        return pid > 0 and (pid in self._children or pid in self._exited)

    def _owns(self, handle: Handle) -> bool:
        """Is the handle's process alive and still the one we started (not a reused pid)?"""
        pid = int(handle.get("pid", 0))
        if pid in self._children:
            return True
        stat = _proc_stat(pid)
        return stat is not None and stat[0] != "Z" and stat[1] == handle.get("start_ticks")

    async def _kill_after(
        self, handle: Handle, grace: float, escaped: list[psutil.Process]
    ) -> None:
        pid = int(handle["pid"])
        deadline = time.monotonic() + grace
        try:
            while time.monotonic() < deadline and self._owns(handle):
                await asyncio.sleep(min(0.05, max(deadline - time.monotonic(), 0)))
            if self._owns(handle):
                signal_group(pid, signal.SIGKILL)
            for proc in escaped:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        finally:
            self._stopping.pop(pid, None)
            self.wakeup()


_KEY_VARIABLES = ("JOBYARD_JOB_ID", "JOBYARD_DISPLAY_ID", "JOBYARD_TASK_NAME", "JOBYARD_TASK_INDEX")


def _server_environment() -> dict[str, str]:
    """This server's environment without its own JOBYARD_* settings (tokens, database URLs),
    which never reach a job."""
    return {k: v for k, v in os.environ.items() if not k.startswith("JOBYARD_")}


def _check_program(program: str, path: str, cwd: Path) -> None:
    if "/" in program:
        candidate = cwd / program
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            raise StartFailed(f"program {program!r} does not exist or is not executable")
    elif shutil.which(program, path=path) is None:
        raise StartFailed(f"program {program!r} not found in PATH")


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process: with the pid, its identity.
    Read straight from /proc/<pid>/stat (psutil re-reads /proc/stat for the boot time on
    every call, which costs more than the spawn it follows)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _key(handle: Handle) -> processes.TaskKey | None:
    key = handle.get("key")
    if not isinstance(key, list) or len(key) != 3:
        return None
    return str(key[0]), str(key[1]), str(key[2])


def _started_elsewhere(handle: LocalHandle, found: processes.Scan) -> tuple[int, int] | None:
    """The supervisor of this task started by another server of the database on this machine
    (whose leadership this one took over: PostgreSQL): its exit file lies in that server's
    data directory, and its process carries this task's key. The handle takes its paths."""
    key = _key(handle)
    if key is None or containers.in_container(handle):
        return None  # a container's files are named by the server that made them
    members = set(found.members.get(key, ()))
    exit_path = Path(handle["exit"])
    tail = os.fsencode(f"/{exit_path.parent.name}/{exit_path.name}")
    for path, supervisor in found.supervisors.items():
        if supervisor[0] in members and path.endswith(tail):
            log_dir = Path(os.fsdecode(path)).parent
            handle["exit"] = os.fsdecode(path)
            handle["log"] = str(log_dir / Path(handle["log"]).name)
            return supervisor
    return None


def _modified_since(path: str, since: float) -> bool:
    try:
        return os.stat(path).st_mtime >= since
    except OSError:
        return False


def _read_exit_file(path: str | None) -> int | None:
    if not path:
        return None
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def _login_shell(env: dict[str, str]) -> str:
    """bash where the machine has it (what users expect in a terminal), else sh."""
    for candidate in (env.get("SHELL", ""), "/bin/bash", "/bin/sh"):
        if candidate and os.path.isabs(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return "/bin/sh"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
