"""The executor contract: start, poll, stop, capacity, logs. Handles are plain JSON data."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from jobyard.config import ExecutorSettings, Settings
from jobyard.errors import ExecutorRefused, JobyardError
from jobyard.executors.shells import Shell, ShellCommand, TerminalSize, open_local_shell
from jobyard.executors.usage import ReportedUsage
from jobyard.model import PendingReason, Placement, TaskState, TerminationReason
from jobyard.model.capacity import Capacity, GpuInfo

Handle = Mapping[str, Any]  # each executor's own TypedDict; stored as JSON
__all__ = [
    "Capacity",
    "Executor",
    "GpuInfo",
    "Handle",
    "InterruptedStart",
    "Shell",
    "ShellCommand",
    "StartFailed",
    "StartedTask",
    "TaskReport",
    "TerminalSize",
]


class StartFailed(JobyardError):
    """A task could not be started (missing program, bad working_dir, fork failure)."""

    code = "start_failed"


@dataclass(frozen=True)
class StartedTask:
    index: int
    pid: int | None
    node: str
    handle: Handle
    # Handed to a scheduler of the executor's own (Slurm) that has not started it yet: the job
    # stays STARTING, with poll()'s PENDING message as its pending reason, until a report
    # says the task runs (or ended). Why it waits until the first poll says: EXECUTOR (its own
    # queue) unless `pending_reason` says otherwise (PULLING: its image is being pulled).
    waiting: bool = False
    pending_reason: PendingReason | None = None
    pending_message: str = ""


@dataclass(frozen=True)
class InterruptedStart:
    """A start() a crash cut short: the server died after the job became STARTING and before
    its tasks' handles were stored. `since` is when this attempt began starting; anything an
    earlier attempt of the job left (an exit file, an ended Slurm job) is older."""

    placement: Placement
    since: float


@dataclass(frozen=True)
class TaskReport:
    state: TaskState
    exit_code: int | None = None
    message: str = ""
    # PENDING: why the task waits; None is EXECUTOR (the executor's own queue, e.g. Slurm's).
    pending_reason: PendingReason | None = None
    # EXITED: why it ended where that is not its exit code's to say (IMAGE_PULL_FAILED), with
    # `message` saying what happened (the container runtime's own words).
    reason: TerminationReason | None = None


class Executor(ABC):
    """Runs placements on one kind of infrastructure. It is built with its own slice of the
    server's settings (`settings_type`, made from Settings by `from_settings`), not the whole
    Settings."""

    kind: ClassVar[str]
    settings_type: ClassVar[type[ExecutorSettings]] = ExecutorSettings
    # What else this executor can do for a running task: "shell" (terminals, SSH), "ports"
    # (the job's declared ports reachable from this server) and "usage" (its processes are
    # on this machine: task_pids, and the GPU indices it hands out are this machine's).
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, settings: ExecutorSettings) -> None:
        self._settings = settings

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """This executor, with its slice of `settings` (the one place that makes it)."""
        return cls(cls.settings_type.of(settings))

    def set_wakeup(self, callback: Callable[[], None]) -> None:
        """Give the executor a callback to call when a task changes (e.g. exits)."""
        self._wakeup = callback

    def wakeup(self) -> None:
        callback = getattr(self, "_wakeup", None)
        if callback is not None:
            callback()

    @abstractmethod
    async def start(self, placement: Placement) -> list[StartedTask]:
        """Start every task and return promptly; never wait for completion.
        All or nothing: if one task cannot start, stop the others and raise StartFailed.
        Raise ExecutorRefused for a spec this executor cannot run (e.g. an image)."""

    async def find_started(
        self, starts: Sequence[InterruptedStart]
    ) -> list[list[StartedTask | None]]:
        """After a restart: what each interrupted start left, task by task (in the order of its
        placement's tasks): a StartedTask whose handle poll() then follows (running, ended with
        its exit code, or leftovers to kill before it reports LOST), or None where nothing of
        the task exists. An executor finds everything such a start may have made through a
        marker it sets before making it; this default, for one that cannot, finds nothing.
        May raise when the infrastructure cannot say now: the caller asks again later."""
        return [[None] * len(start.placement.tasks) for start in starts]

    @abstractmethod
    async def poll(self, handles: Sequence[Handle]) -> list[TaskReport]:
        """State and exit code per handle, in order. An unknown handle reports LOST; never raise."""

    @abstractmethod
    async def stop(self, handle: Handle, grace: float) -> None:
        """Terminate, then kill after `grace` seconds. Idempotent; unknown or finished is fine."""

    @abstractmethod
    def capacity(self) -> Capacity: ...

    @abstractmethod
    def check_spec_supported(self, placement_spec: Any) -> None:
        """Raise ExecutorRefused (naming the field) for a spec this executor can never run."""

    def read_log(self, handle: Handle, offset: int, limit: int) -> bytes:
        """Up to `limit` bytes of the task's log from byte `offset` (b"" at the end). By
        default from the file the handle names as "log" (b"" when there is none)."""
        try:
            with open(handle["log"], "rb") as f:
                f.seek(max(offset, 0))
                return f.read(limit)
        except (OSError, KeyError):
            return b""

    def log_size(self, handle: Handle) -> int:
        """The log's size in bytes; by default that of the handle's "log" file (0: none)."""
        try:
            return os.stat(handle["log"]).st_size
        except (OSError, KeyError):
            return 0

    def task_pids(self, handle: Handle) -> Sequence[int]:  # noqa: ARG002 - unused by default
        """The processes on this machine that a running task's usage is measured from (with
        their descendants and the sessions they lead: executors/usage.py); () where the
        executor cannot say (the task runs elsewhere, or has ended)."""
        return ()

    async def task_usage(self, handles: Sequence[Handle]) -> list[ReportedUsage | None]:
        """What running tasks use, as measured where they run, for tasks with no `task_pids`
        here (one answer per handle, None where there is none); by default none."""
        return [None] * len(handles)

    @abstractmethod
    def release(self, handle: Handle, *, remove_files: bool) -> None:
        """Forget a finished task; with remove_files, delete its log and files too."""

    def shell_command(
        self,
        placement: Placement,  # noqa: ARG002 - the contract's arguments, unused by default
        task_index: int,  # noqa: ARG002
        handle: Handle,  # noqa: ARG002
        command: str | None = None,  # noqa: ARG002
    ) -> ShellCommand:
        """An interactive login shell (command None), or the shell running the command line
        `command`, in the running task's environment: its cwd, env and node.
        Executors without the "shell" capability refuse."""
        raise ExecutorRefused(f"the {self.kind} executor cannot open a shell into a task")

    async def open_shell(
        self,
        placement: Placement,
        task_index: int,
        handle: Handle,
        *,
        command: str | None = None,
        size: TerminalSize | None = None,
        term: str | None = None,
    ) -> Shell:
        """Start an interactive login shell (command None), or the command line `command`,
        inside the running task the handle names: under a new pseudo-terminal of `size` (its
        TERM `term` when given), or with plain pipes when size is None (`ssh host command`).
        Returns promptly with the running Shell; the caller relays its bytes and ends it.
        Raises ExecutorRefused where this executor has no "shell" capability (or the task is
        not running), StartFailed where the shell cannot be started.

        By default, `shell_command()` spawned on this server (the local executor's own shell,
        Slurm's `srun --overlap --pty`); an executor that reaches its tasks another way (a
        container's `podman exec -it`) overrides either."""
        shell = self.shell_command(placement, task_index, handle, command)
        try:
            return await open_local_shell(shell, size, term)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise StartFailed(f"cannot start the shell {shell.argv[0]!r}: {reason}") from exc

    async def close(self) -> None:  # noqa: B027 - optional hook with a do-nothing default
        """Stop watching tasks. Running tasks are left running (they outlive the server)."""
