"""`jobyard metrics REF`: a job's usage samples as a table (or JSON), redrawn with --watch."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer
from rich.console import Group, JustifyMethod, RenderableType
from rich.table import Table
from rich.text import Text

from jobyard.cli import render
from jobyard.cli.options import IntervalOpt, WatchOpt
from jobyard.cli.session import open_client
from jobyard.client import Client
from jobyard.client.usage import GpuUsage, JobUsage, UsageSample

_ABSENT = "-"  # a figure the server could not measure (never shown as 0)


def _size(value: int | None) -> str:
    if value is None:
        return _ABSENT
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"


def _cores(value: float | None) -> str:
    return _ABSENT if value is None else f"{value:.2f}"


def _gpus(gpus: list[GpuUsage] | None) -> tuple[str, str]:
    """(utilisation, memory) of each GPU, one per line, each with its index."""
    if gpus is None:
        return _ABSENT, _ABSENT
    if not gpus:
        return "none", ""
    util = "\n".join(f"{g.index}: {g.utilization_percent:.0f}%" for g in gpus)
    memory = "\n".join(
        f"{g.index}: {_size(g.memory_used_bytes)} / {_size(g.memory_total_bytes)}" for g in gpus
    )
    return util, memory


def _time(value: datetime) -> str:
    """The local time of day; with the date, for a sample of another day."""
    local = value.astimezone()
    today = datetime.now().astimezone().date()
    return local.strftime("%H:%M:%S" if local.date() == today else "%Y-%m-%d %H:%M:%S")


def _row(task: str, sample: UsageSample) -> list[RenderableType]:
    util, memory = _gpus(sample.gpus)
    return [
        Text(task),
        Text(_time(sample.timestamp)),
        Text(_cores(sample.cpu_cores), justify="right"),
        Text(_size(sample.memory_rss_bytes), justify="right"),
        Text(util),
        Text(memory),
    ]


def usage_table(usage: JobUsage) -> Table:
    """One line per sample, each task's oldest first."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for header in ("TASK", "TIME", "CPU (cores)", "RSS", "GPU UTIL", "GPU MEMORY"):
        justify: JustifyMethod = "right" if header in ("CPU (cores)", "RSS") else "left"
        table.add_column(header, justify=justify)
    for task in usage.tasks:
        for sample in task.samples:
            table.add_row(*_row(task.name, sample))
        if not task.samples:
            table.add_row(Text(task.name), Text("no samples (not running yet?)", style="dim"))
    return table


def _frame(client: Client, ref: str, task: str | None, last: int, interval: float) -> Group:
    usage = client.metrics(ref, task=task, last=last)
    heading = f"every {interval:g}s: jobyard metrics {ref}   {render.clock()}"
    sampled = f"sampled every {usage.interval_seconds:g}s by the server"
    return Group(Text(heading, style="dim"), usage_table(usage), Text(sampled, style="dim"))


def metrics(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="job id, display id or submission id")],
    task: Annotated[str | None, typer.Option(help="task index or name (default: all)")] = None,
    last: Annotated[
        int, typer.Option(min=1, max=100_000, help="the latest N samples of each task")
    ] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="print the API's answer")] = False,
    watch: WatchOpt = False,
    interval: IntervalOpt = 2.0,
) -> None:
    """A job's CPU (cores), resident memory and GPUs, sampled by the server while it runs and
    kept after it ends; '-' is a figure the server cannot measure (no NVML, say)."""
    if watch and as_json:
        raise typer.BadParameter("--watch draws a table; not with --json", param_hint="--watch")
    client = open_client(ctx)
    if as_json:
        render.show_json(client.metrics(ref, task=task, last=last).model_dump(mode="json"))
        return
    if not watch:
        render.show(usage_table(client.metrics(ref, task=task, last=last)))
        return
    render.watch(lambda: _frame(client, ref, task, last, interval), interval)
