"""How SDK results look in a terminal (Rich) and as JSON. Colour lives here and nowhere else."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import typer
from rich.console import Console, JustifyMethod, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from jobyard.client import Event, Job, JobState, Task
from jobyard.client.models import Pool, Queue, RegistryCredential, Token, UserInfo

_STATE_STYLES = {
    JobState.QUEUED: "yellow",
    JobState.SCHEDULED: "yellow",
    JobState.STARTING: "cyan",
    JobState.RUNNING: "blue",
    JobState.STOPPING: "magenta",
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "bold red",
    JobState.STOPPED: "magenta",
}


def _console() -> Console:
    # A Console per use: it looks up the current sys.stdout (and its width) each time.
    return Console(highlight=False, soft_wrap=False)


def show(*renderables: RenderableType) -> None:
    _console().print(*renderables)


@contextlib.contextmanager
def redrawing() -> Iterator[Callable[[RenderableType], None]]:
    """A function that draws a frame: over the last one on a terminal (Rich Live), else after
    it with a blank line between, flushed, so that a pipe sees every frame as it comes."""
    console = _console()
    if not console.is_terminal:

        def append(frame: RenderableType) -> None:
            console.print(frame, "")
            console.file.flush()

        yield append
        return
    with Live(console=console, auto_refresh=False, redirect_stdout=False) as live:
        yield lambda frame: live.update(frame, refresh=True)


def watch(frame: Callable[[], RenderableType], interval: float) -> None:
    """Draw `frame()` every `interval` s until Ctrl-C, which ends the command with status 130."""
    try:
        with redrawing() as draw:
            while True:
                draw(frame())
                time.sleep(interval)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def show_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def write_raw(text: str) -> None:
    """Log output exactly as received: no markup, no wrapping, flushed at once."""
    sys.stdout.write(text)
    sys.stdout.flush()


def note(message: str) -> None:
    """A line about what happened, on stderr (stdout stays the data)."""
    print(message, file=sys.stderr)


def state(value: JobState) -> Text:
    return Text(value.value, style=_STATE_STYLES.get(value, ""))


def when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def clock() -> str:
    return datetime.now().astimezone().strftime("%H:%M:%S")


def ago(value: datetime, now: datetime) -> str:
    """How long before `now`, in its largest unit: 5s ago, 3m ago, 2h ago, 4d ago."""
    seconds = max(int((now - _aware(value)).total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def duration(seconds: float) -> str:
    """squeue's TIME: M:SS, H:MM:SS, then D-HH:MM:SS."""
    minutes, secs = divmod(max(int(seconds), 0), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}-{hours:02}:{minutes:02}:{secs:02}"
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def elapsed(job: Job, now: datetime) -> str:
    """How long the job has run (ran, once it ended); 0:00 before it starts."""
    if job.started_at is None:
        return duration(0)
    end = job.finished_at or (job.updated_at if job.is_terminal() else None) or now
    return duration((_aware(end) - _aware(job.started_at)).total_seconds())


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _text(value: object) -> Text:
    # Text, not str: user data (names, messages) must never be read as Rich markup.
    return Text("" if value is None else str(value))


def _table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


# The job table's columns: (header, shrinks). Each row stays one line: where the terminal is
# too narrow, the columns that shrink lose their ends (…) and the others keep their width.
_JOB_COLUMNS = (
    ("ID", False),
    ("DISPLAY", False),
    ("NAME", True),
    ("STATE", False),
    ("QUEUE", True),
    ("OWNER", True),
    ("CREATED", False),
    ("TIME", False),
    ("EXIT", False),
    ("WAITING", True),
)


def jobs_table(jobs: Iterable[Job], now: datetime | None = None) -> Table:
    """One line per job; CREATED is relative and TIME the run time (squeue's TIME)."""
    now = now or datetime.now(UTC)
    # One space between columns, as squeue: 80 columns leave the names room.
    table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0), header_style="bold")
    for header, shrinks in _JOB_COLUMNS:
        justify: JustifyMethod = "right" if header in ("ID", "TIME", "EXIT") else "left"
        table.add_column(header, no_wrap=not shrinks, overflow="ellipsis", justify=justify)
    for job in jobs:
        table.add_row(
            _text(job.id),
            _text(job.display_id),
            _one_line(job.name),
            state(job.state),
            _one_line(job.queue),
            _one_line(job.owner),
            _text(ago(job.created_at, now)),
            _text(elapsed(job, now)),
            _text(job.exit_code),
            _one_line(waiting(job)),
        )
    return table


def _one_line(value: str) -> Text:
    """A cell that is cut short (…) rather than wrapped when its column shrinks."""
    return Text(value, no_wrap=True, overflow="ellipsis")


def waiting(job: Job) -> str:
    """A queued job's place in its queue and the code of why it waits."""
    if job.state is not JobState.QUEUED:
        return ""
    place = f"#{job.queue_position} " if job.queue_position else ""
    return f"{place}{job.pending_reason or ''}".strip()


def _gpus_by_model(pool: Pool) -> str:
    models: dict[str, list[int]] = {}
    for gpu in pool.gpus:
        counts = models.setdefault(gpu.model, [0, 0])
        counts[0] += gpu.in_use
        counts[1] += 1
    return ", ".join(f"{used}/{total} {model}" for model, (used, total) in models.items())


def users_table(users: list[UserInfo]) -> Table:
    table = _table("NAME", "ADMIN", "TOKENS", "CREATED")
    for user in users:
        table.add_row(
            Text(user.name),
            "yes" if user.admin else "",
            str(user.tokens),
            when(user.created_at),
        )
    return table


def _token_state(token: Token) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= datetime.now(UTC):
        return "expired"
    return "active"


def tokens_table(tokens: list[Token]) -> Table:
    table = _table("ID", "USER", "NAME", "STATE", "CREATED", "EXPIRES")
    for token in tokens:
        table.add_row(
            str(token.id),
            Text(token.user),
            Text(token.name),
            _token_state(token),
            when(token.created_at),
            when(token.expires_at),
        )
    return table


def registries_table(logins: Iterable[RegistryCredential]) -> Table:
    table = _table("REGISTRY", "USERNAME", "CREATED", "UPDATED")
    for login in logins:
        table.add_row(
            Text(login.registry),
            Text(login.username),
            when(login.created_at),
            when(login.updated_at),
        )
    return table


def pools_table(pools: Iterable[Pool]) -> Table:
    table = _table("POOL", "EXECUTOR", "CPUS", "MEMORY MiB", "GPUS", "RUNNING", "QUEUED")
    for pool in pools:
        table.add_row(
            _text(pool.name),
            _text(pool.executor),
            _text(f"{pool.in_use.cpus:g}/{pool.capacity.cpus:g}"),
            _text(f"{pool.in_use.memory_mib}/{pool.capacity.memory_mib}"),
            _text(_gpus_by_model(pool) or "-"),
            _text(pool.running_jobs),
            _text(pool.queued_jobs),
        )
    return table


def queues_table(queues: Iterable[Queue]) -> Table:
    table = _table("QUEUE", "POOL", "PRIORITY", "RUNNING", "QUEUED", "GPUS", "CPUS", "LIMITS")
    for queue in queues:
        limits = ", ".join(f"{k}={v:g}" for k, v in queue.limits.items() if v is not None)
        table.add_row(
            _text(queue.name),
            _text(queue.pool),
            _text(queue.priority),
            _text(queue.running_jobs),
            _text(queue.queued_jobs),
            _text(queue.in_use.gpus),
            _text(f"{queue.in_use.cpus:g}"),
            _text(limits or "-"),
        )
    return table


def events_table(events: Sequence[Event]) -> Table:
    table = _table("TIME", "TYPE", "REASON", "MESSAGE")
    for event in events:
        style = "red" if event.type == "Warning" else ""
        table.add_row(
            _text(when(event.timestamp)),
            Text(event.type, style=style),
            _text(event.reason),
            _text(event.message),
        )
    return table


def job_details(job: Job) -> list[RenderableType]:
    """`status`: the job's facts, its state log and its tasks."""
    return [
        Text(f"Job {job.id} ({job.display_id})", style="bold"),
        _facts(job),
        Text("\nState log", style="bold"),
        _state_log(job),
        Text("\nTasks", style="bold"),
        _tasks(job.tasks),
    ]


def _facts(job: Job) -> Table:
    entrypoint = job.spec.entrypoint
    facts: list[tuple[str, Text]] = [
        ("Name", _text(job.name)),
        ("Submission", _text(job.submission_id)),
        ("Owner", _text(job.owner)),
        ("Queue", _text(f"{job.queue} (priority {job.priority})")),
        ("State", state(job.state)),
        ("Waiting", _text(f"{waiting(job)} {job.pending_message}".strip())),
        ("Attempt", _text(f"{job.attempt + 1} of {job.spec.max_retries + 1}")),
        ("Reason", _text(job.reason)),
        ("Message", _text(job.message)),
        ("Exit code", _text(job.exit_code)),
        (
            "Entrypoint",
            _text(entrypoint if isinstance(entrypoint, str) else json.dumps(entrypoint)),
        ),
        ("Labels", _text(", ".join(f"{k}={v}" for k, v in job.labels.items()))),
        ("Created", _text(when(job.created_at))),
        ("Started", _text(when(job.started_at))),
        ("Finished", _text(when(job.finished_at))),
    ]
    grid = Table.grid(padding=(0, 2))
    for label, value in facts:
        grid.add_row(Text(label, style="dim"), value)
    return grid


def _state_log(job: Job) -> Table:
    table = _table("STATE", "SINCE")
    for change in job.state_log:
        table.add_row(state(change.state), _text(when(change.timestamp)))
    return table


def _tasks(tasks: Sequence[Task]) -> Table:
    table = _table("INDEX", "NAME", "STATE", "NODE", "PID", "GPUS", "EXIT")
    for task in tasks:
        table.add_row(
            _text(task.index),
            _text(task.name),
            _text(task.state),
            _text(task.node),
            _text(task.pid),
            _text(",".join(map(str, task.gpus))),
            _text(task.exit_code),
        )
    return table
