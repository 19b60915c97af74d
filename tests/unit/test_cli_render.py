"""How the CLI shows jobs: squeue's TIME, relative creation times, a table that keeps to the
terminal's width without wrapping a row."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console

from jobyard.cli import render
from jobyard.client import Job

NOW = datetime(2025, 3, 4, 12, 0, 0, tzinfo=UTC)


def make_job(**fields: Any) -> Job:
    base: dict[str, Any] = {
        "id": 7,
        "display_id": "AbCdEf",
        "submission_id": "s-7",
        "name": "train",
        "owner": "admin",
        "queue": "default",
        "spec": {"entrypoint": "true"},
        "state": "RUNNING",
        "created_at": NOW - timedelta(minutes=3),
    }
    return Job.model_validate({**base, **fields})


def rendered(width: int, *jobs: Job) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=width, highlight=False, soft_wrap=False, color_system=None)
    console.print(render.jobs_table(jobs, NOW))
    return [line.rstrip() for line in out.getvalue().splitlines()]


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0:00"),
        (5, "0:05"),
        (65, "1:05"),
        (3599, "59:59"),
        (3723, "1:02:03"),
        (86399, "23:59:59"),
        (93784, "1-02:03:04"),
        (12 * 86400, "12-00:00:00"),
        (-3, "0:00"),  # a clock behind the server's never shows a negative time
    ],
)
def test_duration_is_squeue_time(seconds: float, shown: str) -> None:
    assert render.duration(seconds) == shown


@pytest.mark.parametrize(
    ("before", "shown"),
    [
        (timedelta(0), "0s ago"),
        (timedelta(seconds=59), "59s ago"),
        (timedelta(minutes=3, seconds=59), "3m ago"),
        (timedelta(hours=2, minutes=59), "2h ago"),
        (timedelta(days=4, hours=23), "4d ago"),
        (timedelta(seconds=-30), "0s ago"),
    ],
)
def test_ago_names_the_largest_unit(before: timedelta, shown: str) -> None:
    assert render.ago(NOW - before, NOW) == shown


def test_a_naive_time_is_read_as_utc() -> None:
    assert render.ago((NOW - timedelta(hours=1)).replace(tzinfo=None), NOW) == "1h ago"


def test_elapsed_runs_from_start_to_now_or_to_the_end() -> None:
    assert render.elapsed(make_job(state="QUEUED"), NOW) == "0:00"
    running = make_job(started_at=NOW - timedelta(seconds=65))
    assert render.elapsed(running, NOW) == "1:05"
    done = make_job(
        state="SUCCEEDED",
        started_at=NOW - timedelta(hours=3),
        finished_at=NOW - timedelta(hours=2),
    )
    assert render.elapsed(done, NOW) == "1:00:00"


def test_the_table_keeps_each_job_on_one_line_at_80_columns() -> None:
    jobs = [
        make_job(
            id=123456,
            name="a very long name for a training run that goes on " * 2,
            owner="someone-with-a-long-name",
            queue="a-queue-with-a-long-name",
            state="SUCCEEDED",
            started_at=NOW - timedelta(days=1, hours=2, minutes=3, seconds=4),
            finished_at=NOW,
            exit_code=0,
            created_at=NOW - timedelta(days=2),
        ),
        make_job(
            id=2,
            state="QUEUED",
            pending_reason="WAITING_FOR_CAPACITY",
            queue_position=12,
            created_at=NOW - timedelta(seconds=9),
        ),
    ]
    lines = rendered(80, *jobs)
    assert len(lines) == 3 and all(len(line) <= 80 for line in lines), lines
    header, first, second = (line.split() for line in lines)
    assert header == [
        "ID", "DISPLAY", "NAME", "STATE", "QUEUE", "OWNER", "CREATED", "TIME", "EXIT", "WAITING",
    ]  # fmt: skip
    assert first[:2] == ["123456", "AbCdEf"] and "SUCCEEDED" in first
    assert first[-4:] == ["2d", "ago", "1-02:03:04", "0"]  # WAITING is empty
    assert second[3:10] == ["QUEUED", "default", "admin", "9s", "ago", "0:00", "#12"]
    assert second[10].startswith("WA") and second[10].endswith("…")
    assert "…" in lines[1]  # the long name lost its end instead of wrapping


def test_a_wide_terminal_shows_every_cell_whole() -> None:
    job = make_job(name="a name with spaces", pending_reason=None)
    assert rendered(200, job)[1].split() == [
        "7", "AbCdEf", "a", "name", "with", "spaces", "RUNNING", "default", "admin", "3m", "ago",
        "0:00",
    ]  # fmt: skip


def test_user_text_is_never_rich_markup() -> None:
    assert "[red]x[/red]" in rendered(120, make_job(name="[red]x[/red]"))[1]
