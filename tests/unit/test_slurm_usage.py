"""The pure parts of Slurm usage: reading sstat's lines (as Slurm 22.05 prints them, taken from
the test cluster), its CPU times and sizes, and which step a task's figures come from."""

from __future__ import annotations

import pytest

from jobyard.executors.slurm.parse import cpu_seconds, parse_sstat, size_bytes
from jobyard.executors.slurm.usage import by_job, gather_type, task_figures
from jobyard.executors.usage import ReportedUsage

# sstat -n -P -a -j 2,4 --format JobID,NTasks,TRESUsageInAve: a one-task job (2) and a
# two-task job (4: its batch step runs srun, its tasks are step 0).
SSTAT = """\
2.batch|1|cpu=00:00:06,energy=0,fs/disk=1690155,mem=15000K,pages=0,vmem=19172K
4.0|2|cpu=00:00:04,energy=0,fs/disk=1685831,mem=167024K,pages=0,vmem=170172K
4.batch|1|cpu=00:00:00,energy=0,fs/disk=28338,mem=10612K,pages=2,vmem=219460K
4.extern|1|cpu=00:00:00,energy=0,mem=0,pages=0,vmem=0
"""


def test_sstat_lines_give_each_steps_cpu_time_and_memory_per_task() -> None:
    steps = parse_sstat(SSTAT)
    assert [(s.step, s.tasks, s.cpu_seconds, s.rss_bytes) for s in steps] == [
        ("2.batch", 1, 6.0, 15000 * 1024),
        ("4.0", 2, 4.0, 167024 * 1024),
        ("4.batch", 1, 0.0, 10612 * 1024),
        ("4.extern", 1, 0.0, 0),
    ]
    assert parse_sstat("sstat: error: couldn't get steps for job 9\n\nnot|a line\n") == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("00:00:06", 6.0),
        ("01:02:03", 3723.0),
        ("2-01:00:00", 2 * 86400 + 3600.0),
        ("01:02.500", 62.5),
        ("00.250", 0.25),
        ("", None),
        ("N/A", None),
        ("1:2:3:4", None),
    ],
)
def test_slurm_cpu_times_are_read_in_all_their_forms(text: str, seconds: float | None) -> None:
    assert cpu_seconds(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("15000K", 15000 * 1024),
        ("1.5G", 3 * 2**29),
        ("2048", 2048),
        ("0", 0),
        ("", None),
        ("xK", None),
        ("3Q", None),
    ],
)
def test_slurm_sizes_are_read_with_their_units(text: str, size: int | None) -> None:
    assert size_bytes(text) == size


def test_a_one_task_job_is_its_batch_step_and_a_multi_worker_job_its_srun_step() -> None:
    steps = by_job(parse_sstat(SSTAT))
    assert task_figures({"batch_log": None}, steps["2"]) == ReportedUsage(6.0, 15000 * 1024)
    # each task of a multi-worker job: the srun step's average per task
    assert task_figures({"batch_log": "/l/x-batch.log"}, steps["4"]) == ReportedUsage(
        4.0, 167024 * 1024
    )
    assert task_figures({"batch_log": "/l/x-batch.log"}, steps["2"]) is None  # srun not started
    assert task_figures({}, []) is None
    # a job completing: sstat still lists its batch step, with no figures
    assert task_figures({"batch_log": None}, parse_sstat("7.batch|1|\n")) is None


def test_the_gather_type_is_read_from_scontrol_show_config() -> None:
    config = (
        "Configuration data as of 2026-12-04T04:20:00\n"
        "JobAcctGatherType       = jobacct_gather/linux\n"
        "JobAcctGatherFrequency  = task=2\n"
    )
    assert gather_type(config) == "jobacct_gather/linux"
    assert gather_type("ClusterName = x\n") is None
