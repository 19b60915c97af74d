"""Job commands: submit · list · status · logs · stop · delete · wait · events (all via the SDK)."""

from __future__ import annotations

import enum
from typing import Annotated

import typer
from rich.console import Group, RenderableType
from rich.text import Text

from jobyard.cli import render
from jobyard.cli.follow import Follower
from jobyard.cli.options import IntervalOpt, JsonOpt, WatchOpt
from jobyard.cli.session import open_client
from jobyard.client import Client, Job, JobState, ListFilters, Resources, SubmitOptions

RefArg = Annotated[str, typer.Argument(help="job id, display id or submission id")]
ALL_PAGE_SIZE = 500  # the server's largest page


class Output(enum.StrEnum):
    TABLE = "table"
    JSON = "json"


# ---- arguments --------------------------------------------------------------------------------


def _parse_pairs(items: list[str] | None, option: str) -> dict[str, str] | None:
    """['K=V', ...] as a dict; a usage error (exit 2) names the option of a malformed item."""
    pairs: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        pairs[key] = value
    return pairs or None


def _parse_label_filters(items: list[str] | None) -> dict[str, str | None] | None:
    """`key=value` matches that value; a bare `key` matches any value."""
    labels = {
        key: value if sep else None for key, sep, value in (i.partition("=") for i in items or ())
    }
    return labels or None


def _entrypoint_of(command: list[str]) -> str | list[str]:
    """One argument with spaces is a shell string; anything else is an argv list."""
    if len(command) == 1 and any(c.isspace() for c in command[0]):
        return command[0]
    return command


def _resources_of(cpus: float | None, memory: str | None, gpus: int | None) -> Resources | None:
    given = {"cpus": cpus, "memory": memory, "gpus": gpus}
    chosen = {key: value for key, value in given.items() if value is not None}
    return Resources.model_validate(chosen) if chosen else None


def _exit_status(job: Job) -> int:
    """The job's exit code as a shell reports it; 1 for a failure that has none."""
    code = job.exit_code
    if job.state is JobState.SUCCEEDED:
        return 0
    if code is not None and 0 < code < 256:
        return code
    return 1


def _summary(job: Job) -> str:
    line = f"job {job.id} ({job.display_id}) {job.state.value}"
    if job.exit_code is not None:
        line += f", exit code {job.exit_code}"
    return f"{line}: {job.message}" if job.message and job.state is not JobState.SUCCEEDED else line


def _fetch(
    client: Client, filters: ListFilters, all_pages: bool
) -> tuple[list[Job], int, str | None]:
    """The jobs, how many match, and the cursor of the next page (None: no more)."""
    if all_pages:
        jobs = list(client.iter_jobs(**filters))
        return jobs, len(jobs), None
    page = client.list(**filters)
    return page.items, page.total, page.next_cursor


def _frame(client: Client, filters: ListFilters, all_pages: bool, interval: float) -> Group:
    """One screen of `list --watch`: when and how often, the table, and how many are shown."""
    jobs, total, _cursor = _fetch(client, filters, all_pages)
    lines: list[RenderableType] = [
        Text(f"every {interval:g}s: jobyard list   {render.clock()}", style="dim"),
        render.jobs_table(jobs),
    ]
    if total > len(jobs):
        lines.append(Text(f"showing {len(jobs)} of {total} jobs", style="dim"))
    return Group(*lines)


def _watch(client: Client, filters: ListFilters, all_pages: bool, interval: float) -> None:
    """Redraw the listing every `interval` s until Ctrl-C, which ends it with status 130."""
    render.watch(lambda: _frame(client, filters, all_pages, interval), interval)


# ---- commands ---------------------------------------------------------------------------------


def submit(
    ctx: typer.Context,
    command: Annotated[
        list[str],
        typer.Argument(help="the command and its arguments, after --", metavar="COMMAND"),
    ],
    name: Annotated[str | None, typer.Option(help="job name")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="K=V; repeatable")] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs per replica")] = None,
    cpus: Annotated[float | None, typer.Option(help="CPUs per replica")] = None,
    memory: Annotated[str | None, typer.Option(help="per replica: MiB, or e.g. 4GiB")] = None,
    replicas: Annotated[int | None, typer.Option(help="number of workers")] = None,
    queue: Annotated[str | None, typer.Option(help="queue name")] = None,
    priority: Annotated[int | None, typer.Option(help="higher runs first")] = None,
    label: Annotated[list[str] | None, typer.Option(help="k=v; repeatable")] = None,
    submission_id: Annotated[str | None, typer.Option(help="idempotency key")] = None,
    max_runtime: Annotated[float | None, typer.Option(help="seconds before it is failed")] = None,
    workdir: Annotated[str | None, typer.Option(help="working directory of the job")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="stream the logs, then exit with the job's exit code")
    ] = False,
    parsable: Annotated[
        bool,
        typer.Option(
            "--parsable", "--quiet", "-q", help="print only the job id (with --wait: no notes)"
        ),
    ] = False,
) -> None:
    """Submit a job: `jobyard submit [OPTIONS] -- COMMAND [ARGS]...`.

    One argument containing spaces runs as a shell string (`-- "make && make test"`).
    With --wait, stdout carries only the job's output (the first task's).
    With --parsable (or -q), stdout is the job id alone, as sbatch --parsable prints it."""
    options: SubmitOptions = {
        "name": name,
        "env": _parse_pairs(env, "--env"),
        "working_dir": workdir,
        "resources": _resources_of(cpus, memory, gpus),
        "replicas": replicas,
        "queue": queue,
        "priority": priority,
        "labels": _parse_pairs(label, "--label"),
        "submission_id": submission_id,
        "max_runtime": max_runtime,
    }
    client = open_client(ctx)
    job = client.submit(_entrypoint_of(command), **options)
    submitted = str(job.id) if parsable else f"submitted job {job.id} ({job.display_id})"
    if not wait:
        print(submitted)
        return
    if not parsable:
        render.note(submitted)
    Follower(client, job.id).run()
    done = client.wait(job.id)
    if not parsable:
        render.note(_summary(done))
    raise typer.Exit(_exit_status(done))


def list_jobs(
    ctx: typer.Context,
    state: Annotated[
        list[str] | None, typer.Option(help="QUEUED, RUNNING, ...; repeatable or a,b")
    ] = None,
    queue: Annotated[str | None, typer.Option(help="only this queue")] = None,
    owner: Annotated[str | None, typer.Option(help="only this owner (admins)")] = None,
    query: Annotated[str | None, typer.Option("--query", "-q", help="name contains")] = None,
    label: Annotated[list[str] | None, typer.Option(help="k=v or k; repeatable")] = None,
    limit: Annotated[int, typer.Option(min=1, max=ALL_PAGE_SIZE, help="jobs to show")] = 50,
    all_pages: Annotated[bool, typer.Option("--all", help="page through every job")] = False,
    as_json: JsonOpt = False,
    output: Annotated[
        Output, typer.Option("--output", "-o", help="json: the API's answer, as --json")
    ] = Output.TABLE,
    watch: WatchOpt = False,
    interval: IntervalOpt = 2.0,
) -> None:
    """List jobs, newest first. TIME is how long each has run, as squeue shows it."""
    filters: ListFilters = {
        "state": state,
        "queue": queue,
        "owner": owner,
        "q": query,
        "labels": _parse_label_filters(label),
        "limit": ALL_PAGE_SIZE if all_pages else limit,
    }
    as_json = as_json or output is Output.JSON
    if watch and as_json:
        raise typer.BadParameter("--watch draws a table; not with JSON", param_hint="--watch")
    client = open_client(ctx)
    if watch:
        return _watch(client, filters, all_pages, interval)
    jobs, total, next_cursor = _fetch(client, filters, all_pages)
    if as_json:
        items = [job.model_dump(mode="json") for job in jobs]
        render.show_json({"items": items, "next_cursor": next_cursor, "total": total})
        return
    render.show(render.jobs_table(jobs))
    if total > len(jobs):
        render.note(f"showing {len(jobs)} of {total} jobs (use --all or --limit)")


def status(ctx: typer.Context, ref: RefArg, as_json: JsonOpt = False) -> None:
    """A job's details, state log and tasks."""
    job = open_client(ctx).get(ref)
    if as_json:
        render.show_json(job.model_dump(mode="json"))
    else:
        render.show(*render.job_details(job))


def logs(
    ctx: typer.Context,
    ref: RefArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="stream until it ends")] = False,
    tail: Annotated[int | None, typer.Option(min=0, help="only the last N lines")] = None,
    task: Annotated[str | None, typer.Option(help="task index or name (default: first)")] = None,
    timestamps: Annotated[
        bool, typer.Option(help="each line behind the time the server first saw it")
    ] = False,
) -> None:
    """A task's output, as written. With -f, a lost connection (e.g. the server restarting)
    is taken up again where it broke off, for up to a minute."""
    client = open_client(ctx)
    if follow:
        Follower(client, ref, task, timestamps=timestamps).run(tail)
    else:
        render.write_raw(client.logs(ref, task=task, tail=tail, timestamps=timestamps))


def stop(ctx: typer.Context, ref: RefArg) -> None:
    """Stop a job (SIGTERM, then SIGKILL after the server's grace period)."""
    job = open_client(ctx).stop(ref)
    print(f"job {job.id} ({job.display_id}) {job.state.value}")


def delete(
    ctx: typer.Context,
    ref: RefArg,
    force: Annotated[bool, typer.Option("--force", help="also stop it if it is live")] = False,
) -> None:
    """Delete a finished job and its logs."""
    open_client(ctx).delete(ref, force=force)
    print(f"deleted job {ref}")


def wait(
    ctx: typer.Context,
    ref: RefArg,
    timeout: Annotated[float | None, typer.Option(min=0, help="give up after S seconds")] = None,
) -> None:
    """Wait until a job ends; exit with its exit code."""
    job = open_client(ctx).wait(ref, timeout=timeout)
    print(_summary(job))
    raise typer.Exit(_exit_status(job))


def events(ctx: typer.Context, ref: RefArg, as_json: JsonOpt = False) -> None:
    """A job's events, oldest first."""
    found = open_client(ctx).events(ref)
    if as_json:
        render.show_json([event.model_dump(mode="json") for event in found])
    else:
        render.show(render.events_table(found))
