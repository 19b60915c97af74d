"""Results: one row per figure, printed as a table and written as JSON with machine info."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class Result:
    scenario: str
    metric: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None
    note: str = ""


def at_least(
    scenario: str, metric: str, value: float, unit: str, goal: float, note: str = ""
) -> Result:
    return Result(scenario, metric, round(value, 2), unit, f">= {goal:g}", value >= goal, note)


def at_most(
    scenario: str, metric: str, value: float, unit: str, goal: float, note: str = ""
) -> Result:
    return Result(scenario, metric, round(value, 2), unit, f"<= {goal:g}", value <= goal, note)


def info(scenario: str, metric: str, value: float, unit: str, note: str = "") -> Result:
    return Result(scenario, metric, round(value, 2), unit, note=note)


def median_of(runs: list[list[Result]]) -> list[Result]:
    """One row per metric of repeated runs of a scenario: the median, checked against the
    target again, with the range of the runs in front of the first run's note."""
    rows: dict[tuple[str, str], list[Result]] = {}
    for run in runs:
        for result in run:
            rows.setdefault((result.scenario, result.metric), []).append(result)
    combined = []
    for results in rows.values():
        first = results[0]
        if len(results) == 1:
            combined.append(first)
            continue
        values = sorted(r.value for r in results)
        value = round(statistics.median(values), 2)
        spread = f"median of {len(values)} runs ({values[0]:g} to {values[-1]:g})"
        note = f"{spread}; {first.note}" if first.note else spread
        combined.append(replace(first, value=value, ok=_meets(first, value), note=note))
    return combined


def _meets(result: Result, value: float) -> bool | None:
    kind, _, goal = result.target.partition(" ")
    if kind == ">=":
        return value >= float(goal)
    if kind == "<=":
        return value <= float(goal)
    return result.ok


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 200 samples is the 198th smallest)."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * fraction)) - 1]


@dataclass
class Machine:
    cpus: int | None = field(default_factory=os.cpu_count)
    platform: str = field(default_factory=platform.platform)
    python: str = field(default_factory=lambda: sys.version.split()[0])
    date: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    )
    load_average_before: tuple[float, ...] = field(default_factory=os.getloadavg)
    load_average_after: tuple[float, ...] = ()

    def finish(self) -> None:
        self.load_average_after = os.getloadavg()


def show(results: list[Result]) -> None:
    table = Table(title="jobyard benchmarks")
    for column in ("metric", "value", "unit", "target", "ok", "note"):
        table.add_column(column, overflow="fold")
    for r in results:
        ok = "" if r.ok is None else ("[green]yes[/]" if r.ok else "[red]NO[/]")
        table.add_row(r.metric, f"{r.value:g}", r.unit, r.target, ok, r.note)
    Console(width=max(Console().width, 150)).print(table)


def write(results: list[Result], machine: Machine, path: Path, settings: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": asdict(machine),
        "settings": settings,
        "results": [asdict(r) for r in results],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
