"""Repeated benchmark runs are reported as one row per figure: the median, checked again."""

from __future__ import annotations

from bench.report import at_least, at_most, info, median_of
from bench.server import CpuSnapshot


def test_each_figure_is_the_median_of_its_runs_with_the_range() -> None:
    runs = [
        [at_least("s", "rate", 900, "jobs/s", 1000, "8 clients"), info("s", "one", 1, "x")],
        [at_least("s", "rate", 1200, "jobs/s", 1000, "8 clients"), info("s", "one", 3, "x")],
        [at_least("s", "rate", 1100, "jobs/s", 1000, "8 clients"), info("s", "one", 2, "x")],
    ]
    rate, one = median_of(runs)
    assert (rate.metric, rate.value, rate.ok) == ("rate", 1100, True)  # 900 alone was NO
    assert rate.note == "median of 3 runs (900 to 1200); 8 clients"
    assert (one.value, one.ok, one.note) == (2, None, "median of 3 runs (1 to 3)")


def test_an_upper_bound_is_checked_on_the_median_and_one_run_is_left_as_it_is() -> None:
    slow, fast = at_most("s", "p99", 30, "ms", 20), at_most("s", "p99", 10, "ms", 20)
    (row,) = median_of([[slow], [fast], [slow]])
    assert (row.value, row.ok) == (30, False)
    assert median_of([[fast]]) == [fast]


def test_cpu_per_job_is_the_servers_per_submit_and_the_jobs_per_finished_one() -> None:
    before = CpuSnapshot(server=10.0, jobs=5.0, machine=0.0, at=100.0)
    after = CpuSnapshot(server=11.5, jobs=6.4, machine=0.0, at=102.0)
    text = after.describe_since(before, submitted=1000, finished=700)
    assert "server 75% of a core" in text
    assert text.endswith("(per job: server 1.50 ms, the job's own processes 2.00 ms)")
    assert "per job" not in after.describe_since(before)  # without counts, shares only
    assert "per job" not in after.describe_since(before, submitted=10, finished=-1)
