"""Results: one row per figure, printed as a table and written as JSON."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table


@dataclass
class Result:
    metric: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None
    note: str = ""


def at_least(metric: str, value: float, unit: str, goal: float, note: str = "") -> Result:
    return Result(metric, round(value, 2), unit, f">= {goal:g}", value >= goal, note)


def at_most(metric: str, value: float, unit: str, goal: float, note: str = "") -> Result:
    return Result(metric, round(value, 2), unit, f"<= {goal:g}", value <= goal, note)


def info(metric: str, value: float, unit: str, note: str = "") -> Result:
    return Result(metric, round(value, 2), unit, note=note)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def show(results: list[Result]) -> None:
    table = Table(title="jobyard benchmarks")
    for column in ("metric", "value", "unit", "target", "ok", "note"):
        table.add_column(column)
    for r in results:
        ok = "" if r.ok is None else ("yes" if r.ok else "NO")
        table.add_row(r.metric, f"{r.value:g}", r.unit, r.target, ok, r.note)
    Console(width=160).print(table)


def write(results: list[Result], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    path.write_text(
        json.dumps({"machine": machine, "results": [asdict(r) for r in results]}, indent=2)
    )
