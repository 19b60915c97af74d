"""Usage sampling without I/O: /proc stat lines, process trees, CPU cores, idle GPU spells,
and the job spec's idle_gpu_* fields."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from jobyard.executors.usage import CpuMeter, ProcessTable, ProcStat, TreeUsage, parse_stat
from jobyard.model.job import IdleGpuAction, JobSpec
from jobyard.model.usage import GpuUsage
from jobyard.service.usage import IdleGpus
from jobyard.store.usage import IdleSpell

# pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
# cutime cstime priority nice threads itrealvalue starttime vsize rss ...
_STAT = b"4242 (my (odd) name) S 17 4242 4242 0 -1 4194560 1 2 3 4 150 50 7 3 20 0 1 0 9000 1 321 x"


def test_a_stat_line_is_read_after_the_last_parenthesis_of_the_command_name() -> None:
    stat = parse_stat(_STAT)
    assert stat == ProcStat(ppid=17, session=4242, cpu_ticks=210, rss_pages=321, start_ticks=9000)


@pytest.mark.parametrize("line", [b"", b"12 (x) S", b"garbage without a paren"])
def test_a_line_that_is_not_a_stat_line_is_none(line: bytes) -> None:
    assert parse_stat(line) is None


def _stat(ppid: int, session: int, ticks: int = 100, rss: int = 10) -> ProcStat:
    return ProcStat(ppid=ppid, session=session, cpu_ticks=ticks, rss_pages=rss, start_ticks=5)


def _table() -> ProcessTable:
    """10 leads a session (the supervisor); 11 is its child, 12 a grandchild that made its own
    session (still a descendant); 13 was reparented to init but kept 10's session; 20 is
    someone else's, 21 its child."""
    return ProcessTable(
        {
            1: _stat(0, 1),
            10: _stat(1, 10),
            11: _stat(10, 10),
            12: _stat(11, 12),
            13: _stat(1, 10),
            20: _stat(1, 20),
            21: _stat(20, 20),
        }
    )


def test_a_task_is_its_roots_their_descendants_and_their_sessions_members() -> None:
    assert _table().members([10]) == {10, 11, 12, 13}


def test_a_root_that_does_not_lead_a_session_brings_only_its_descendants() -> None:
    assert _table().members([11]) == {11, 12}


def test_roots_that_are_gone_have_no_usage() -> None:
    table = _table()
    assert table.members([99]) == set()
    assert table.usage([99]) is None


def test_usage_sums_cpu_and_memory_of_the_whole_tree() -> None:
    usage = _table().usage([10])
    assert usage is not None
    assert usage.processes == 4
    assert usage.rss_bytes == 4 * 10 * os.sysconf("SC_PAGE_SIZE")
    assert usage.cpu_seconds == pytest.approx(4 * 100 / os.sysconf("SC_CLK_TCK"))


def _tree(cpu: float, started: float = 100.0) -> TreeUsage:
    return TreeUsage(cpu_seconds=cpu, rss_bytes=0, started_at=started, processes=1)


def test_the_first_reading_of_a_task_averages_since_it_started() -> None:
    meter = CpuMeter()
    assert meter.cores("t", _tree(5.0, started=100.0), now=110.0) == pytest.approx(0.5)


def test_later_readings_are_the_growth_over_the_time_between() -> None:
    meter = CpuMeter()
    meter.cores("t", _tree(5.0), now=110.0)
    assert meter.cores("t", _tree(8.0), now=112.0) == pytest.approx(1.5)
    assert meter.cores("t", _tree(8.0), now=114.0) == 0.0


def test_cpu_time_that_left_with_an_ended_process_counts_as_zero_not_negative() -> None:
    meter = CpuMeter()
    meter.cores("t", _tree(9.0), now=110.0)
    assert meter.cores("t", _tree(4.0), now=115.0) == 0.0
    assert meter.cores("t", _tree(6.0), now=116.0) == pytest.approx(2.0)


def test_a_forgotten_task_starts_again_from_its_process_start() -> None:
    meter = CpuMeter()
    meter.cores("t", _tree(5.0), now=110.0)
    meter.keep_only([])
    assert meter.cores("t", _tree(6.0, started=100.0), now=120.0) == pytest.approx(0.3)


def test_no_time_passed_gives_no_figure() -> None:
    assert CpuMeter().cores("t", _tree(1.0, started=110.0), now=110.0) is None


# ---- idle GPU spells --------------------------------------------------------------------------


def _gpus(*utilizations: float) -> list[GpuUsage]:
    return [
        GpuUsage(index=i, utilization_percent=u, memory_used_bytes=0, memory_total_bytes=1)
        for i, u in enumerate(utilizations)
    ]


def test_a_job_idle_for_its_timeout_is_told_once_and_stopped_when_it_asked() -> None:
    idle = IdleGpus(threshold_percent=5)
    stop = IdleGpuAction.STOP
    assert idle.observe(1, 10, stop, _gpus(1, 2), 2, now=100) is None
    assert idle.observe(1, 10, stop, _gpus(0, 4.9), 2, now=105) is None
    verdict = idle.observe(1, 10, stop, _gpus(0, 0), 2, now=110)
    assert verdict is not None and verdict.stop and verdict.measurable
    assert "GPU 0, 1 below 5% busy for 10 s (idle_gpu_timeout 10 s)" in verdict.message
    assert idle.observe(1, 10, stop, _gpus(0, 0), 2, now=120) is None  # once per spell


def test_one_busy_gpu_starts_the_count_again_and_a_new_spell_warns_again() -> None:
    idle = IdleGpus(threshold_percent=5)
    warn = IdleGpuAction.WARN
    idle.observe(1, 10, warn, _gpus(0, 0), 2, now=100)
    assert idle.observe(1, 10, warn, _gpus(0, 5), 2, now=109) is None  # 5 is not below 5
    assert idle.observe(1, 10, warn, _gpus(0, 0), 2, now=110) is None
    first = idle.observe(1, 10, warn, _gpus(0, 0), 2, now=120)
    assert first is not None and not first.stop
    idle.observe(1, 10, warn, _gpus(50, 0), 2, now=121)
    idle.observe(1, 10, warn, _gpus(0, 0), 2, now=122)
    assert idle.observe(1, 10, warn, _gpus(0, 0), 2, now=132) is not None


def test_gpus_without_figures_are_no_evidence_and_are_said_once() -> None:
    idle = IdleGpus(threshold_percent=5)
    warn = IdleGpuAction.WARN
    idle.observe(1, 10, warn, _gpus(0, 0), 2, now=100)
    verdict = idle.observe(1, 10, warn, None, 2, now=105)
    assert verdict is not None and not verdict.measurable and not verdict.stop
    assert idle.observe(1, 10, warn, _gpus(0), 2, now=111) is None  # one of two: not measured
    assert idle.observe(1, 10, warn, _gpus(0, 0), 2, now=112) is None  # counting from 112
    assert idle.observe(1, 10, warn, _gpus(0, 0), 2, now=121) is None
    assert idle.observe(1, 10, warn, _gpus(0, 0), 2, now=122) is not None


def test_jobs_no_longer_watched_are_forgotten() -> None:
    idle = IdleGpus(threshold_percent=5)
    idle.observe(1, 10, IdleGpuAction.WARN, _gpus(0), 1, now=100)
    idle.keep_only([])
    assert idle.observe(1, 10, IdleGpuAction.WARN, _gpus(0), 1, now=105) is None
    assert idle.observe(1, 10, IdleGpuAction.WARN, _gpus(0), 1, now=114) is None


def test_what_changed_is_handed_over_once_and_a_new_instance_goes_on_from_it() -> None:
    idle, warn = IdleGpus(threshold_percent=5), IdleGpuAction.WARN
    assert idle.changes() == ([], [])
    idle.observe(1, 10, warn, _gpus(0), 1, now=100)  # a spell begins
    idle.observe(2, 10, warn, None, 1, now=100)  # told: unmeasured
    assert idle.changes() == ([IdleSpell(1, since=100), IdleSpell(2, unmeasured=True)], [])
    idle.observe(1, 10, warn, _gpus(0), 1, now=105)
    assert idle.changes() == ([], [])  # nothing new: nothing to store
    restarted = IdleGpus(threshold_percent=5)
    restarted.load([IdleSpell(1, since=100), IdleSpell(2, unmeasured=True)])
    assert restarted.loaded
    assert restarted.observe(2, 10, warn, None, 1, now=106) is None  # told already
    verdict = restarted.observe(1, 10, warn, _gpus(0), 1, now=110)  # 10 s since 100
    assert verdict is not None and "for 10 s" in verdict.message
    assert restarted.changes() == ([IdleSpell(1, since=100, acted=True)], [])
    restarted.observe(1, 10, warn, _gpus(50), 1, now=111)  # the spell ends
    restarted.keep_only([1])  # job 2 ended
    assert restarted.changes() == ([], [1, 2])


# ---- the job spec -----------------------------------------------------------------------------


def test_a_spec_may_ask_to_stop_a_job_whose_gpus_idle() -> None:
    spec = JobSpec(
        entrypoint="train", resources={"gpus": 1}, idle_gpu_timeout=600, idle_gpu_action="stop"
    )
    assert spec.idle_gpu_timeout == 600 and spec.idle_gpu_action == IdleGpuAction.STOP
    assert JobSpec(entrypoint="x").idle_gpu_action == IdleGpuAction.WARN


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"idle_gpu_timeout": -1, "resources": {"gpus": 1}}, "idle_gpu_timeout", "greater than 0"),
        ({"idle_gpu_timeout": 0, "resources": {"gpus": 1}}, "idle_gpu_timeout", "greater than 0"),
        ({"idle_gpu_timeout": float("nan"), "resources": {"gpus": 1}}, "idle_gpu_timeout", ""),
        ({"idle_gpu_timeout": 1e12, "resources": {"gpus": 1}}, "idle_gpu_timeout", "less than"),
        ({"idle_gpu_timeout": 60}, "idle_gpu_timeout", "resources.gpus"),
        ({"idle_gpu_action": "stop", "resources": {"gpus": 1}}, "idle_gpu_action", "timeout"),
        ({"idle_gpu_action": "kill"}, "idle_gpu_action", "'warn' or 'stop'"),
    ],
)
def test_bad_idle_gpu_fields_are_refused_naming_the_field(
    fields: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec(entrypoint="x", **fields)  # type: ignore[arg-type]
    problems = caught.value.errors()
    assert [p["loc"] for p in problems] == [(field,)]
    assert words in problems[0]["msg"]


# ---- log timestamps ---------------------------------------------------------------------------


def _at(seconds: float) -> bytes:
    from datetime import UTC, datetime

    return (
        datetime.fromtimestamp(seconds, UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
        .encode()
    )


def test_each_line_gets_the_time_of_the_first_mark_that_covers_its_last_byte() -> None:
    from jobyard.service.usage import stamp_lines

    marks = [(6, 100.0), (4, 150.0), (12, 200.0)]  # the shrunken mark is not believed
    data = b"a\nbb\nccc\ndd\nlate"
    stamped = stamp_lines(data, 0, marks, late=300.0).split(b"\n")
    assert stamped == [
        _at(100) + b" a",
        _at(100) + b" bb",  # ends at byte 5, within the first 6
        _at(200) + b" ccc",
        _at(200) + b" dd",  # ends exactly at 12
        _at(300) + b" late",  # no pass saw it yet
    ]


def test_stamping_starts_at_the_offset_the_bytes_were_read_from() -> None:
    from jobyard.service.usage import stamp_lines

    assert stamp_lines(b"x\ny\n", 10, [(12, 1.0), (14, 2.0)], 9.0) == (
        _at(1) + b" x\n" + _at(2) + b" y\n"
    )
    assert stamp_lines(b"", 0, [], 1.0) == b""
    assert stamp_lines(b"no marks\n", 0, [], 5.0) == _at(5) + b" no marks\n"
