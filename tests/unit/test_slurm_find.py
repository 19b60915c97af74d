"""The pure parts of finding a Slurm job whose id a crash kept from being stored: reading the
listing squeue gives, and reading an array's script back to the job each index runs."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from jobyard.executors.slurm.parse import parse_listing
from jobyard.executors.slurm.script import ArrayMember, array_logs, build_array_submission


def test_an_array_script_says_which_log_each_index_writes() -> None:
    logs = [Path("/data/logs/12/abc-worker-0.log"), Path("/data/my logs/'13'/x-worker-0.log")]
    members = [
        ArrayMember(launch=f"exec true {i}", cwd=Path(f"/w/{i}"), log=log)
        for i, log in enumerate(logs)
    ]
    script = build_array_submission(
        name="jobyard-array-12-abc", members=members, resources=[], chdir=Path("/")
    ).script
    assert array_logs(script) == {0: logs[0], 1: logs[1]}
    assert array_logs("#!/bin/sh\ntrue\n") == {}


def test_the_listing_reads_ids_states_submit_times_and_whole_names() -> None:
    text = "12_3|PENDING|2026-01-02T03:04:05|jobyard-array-12-abc\n7|RUNNING|N/A|a|b\n\n"
    first, second = parse_listing(text)
    assert (first.job_id, first.state, first.name) == ("12_3", "PENDING", "jobyard-array-12-abc")
    assert first.submitted == datetime(2026, 1, 2, 3, 4, 5).timestamp()  # local time
    assert (second.job_id, second.submitted, second.name) == ("7", 0.0, "a|b")
