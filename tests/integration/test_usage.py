"""Per-job usage against real servers and real processes: samples of a task's whole process
tree, kept (a bounded ring) after the job ends and across a restart, deleted with the job, read
only by its owner and admins; idle_gpu_timeout with a scripted GPU source; the store's ring on
SQLite and PostgreSQL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobyard.config import GpuSpec
from jobyard.executors.usage import NvmlGpuSource
from jobyard.model.usage import UsageSample
from jobyard.store import usage as store_usage
from jobyard.store.db import Database, migrate
from jobyard.store.jobs import delete_job, insert_job
from tests.factories import new_job
from tests.helpers import (
    LiveServer,
    make_settings,
    running_server,
    wait_for,
    with_default_signals,
)
from tests.usage_support import GIB, ScriptedGpus

MIB = 2**20
FAST = {"usage_interval_seconds": 0.1}
# Busy on one core for `seconds`, holding `mib` MiB, then exit.
BURN = (
    "import time\nx = bytearray({mib} * 2**20)\nend = time.time() + {seconds}\n"
    "while time.time() < end: pass\n"
)
HOLD = "import time\nx = bytearray({mib} * 2**20)\ntime.sleep(60)\n"


def _nvml_present() -> bool:
    source = NvmlGpuSource()
    try:
        return source.read() is not None
    finally:
        source.close()


def _submit(http: httpx.Client, **body: Any) -> dict[str, Any]:
    reply = http.post("/api/v1/jobs", json=body)
    assert reply.status_code == 201, reply.text
    job: dict[str, Any] = reply.json()
    return job


def _samples(http: httpx.Client, ref: Any, **params: Any) -> list[dict[str, Any]]:
    reply = http.get(f"/api/v1/jobs/{ref}/metrics", params=params)
    assert reply.status_code == 200, reply.text
    samples: list[dict[str, Any]] = reply.json()["tasks"][0]["samples"]
    return samples


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _events(http: httpx.Client, ref: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = http.get(f"/api/v1/jobs/{ref}/events").json()["items"]
    return items


@pytest.fixture
def fast(home: Path) -> Iterator[LiveServer]:
    with running_server(make_settings(home, **FAST)) as server:
        yield server


# ---- sampling ---------------------------------------------------------------------------------


def test_a_running_task_is_sampled_and_its_samples_outlive_it(fast: LiveServer) -> None:
    with fast.client() as http:
        job = _submit(http, entrypoint=_python(BURN.format(mib=64, seconds=2.5)))
        busy = wait_for(
            lambda: [
                s
                for s in _samples(http, job["id"])
                if s["memory_rss_bytes"] >= 64 * MIB and (s["cpu_cores"] or 0) > 0.2
            ],
            timeout=30,
        )
        assert busy[0]["gpus"] is None  # no NVML and no GPU source here: absent, not zero
        fast.wait_state(job["id"], "SUCCEEDED", timeout=30)
        reply = http.get(f"/api/v1/jobs/{job['display_id']}/metrics").json()
    assert reply["interval_seconds"] == 0.1
    assert [t["name"] for t in reply["tasks"]] == [f"{job['display_id']}-worker-0"]
    kept = reply["tasks"][0]["samples"]
    times = [datetime.fromisoformat(s["timestamp"]) for s in kept]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert busy[0] in kept
    assert all(s["cpu_cores"] is None or 0 <= s["cpu_cores"] < 4 for s in kept)


def test_every_process_of_the_task_counts_also_one_in_a_session_of_its_own(
    fast: LiveServer,
) -> None:
    """Three holders of 40 MiB: two children of the job's shell, one started by setsid (it
    leaves the task's session and process group, but is still a descendant)."""
    hold = f"{sys.executable} -c '{HOLD.format(mib=40)}'"
    script = f"{hold} & {hold} & setsid {hold} & wait"
    with fast.client() as http:
        job = _submit(http, entrypoint=script)
        wait_for(
            lambda: any(
                s["memory_rss_bytes"] >= 3 * 40 * MIB for s in _samples(http, job["id"], last=1)
            ),
            timeout=30,
        )
        http.post(f"/api/v1/jobs/{job['id']}/stop")
        fast.wait_state(job["id"], "STOPPED", timeout=30)


def test_a_job_that_has_not_run_has_no_samples_and_a_server_with_sampling_off_takes_none(
    home: Path,
) -> None:
    settings = make_settings(home, usage_interval_seconds=0)
    with running_server(settings) as server, server.client() as http:
        job = _submit(http, entrypoint=_python(BURN.format(mib=1, seconds=1)))
        assert _samples(http, job["id"]) == []
        server.wait_state(job["id"], "SUCCEEDED", timeout=30)
        assert _samples(http, job["id"]) == []
        assert server.runtime.usage.passes == 0


# ---- who may read, and bad input --------------------------------------------------------------


def test_only_the_owner_and_admins_read_a_jobs_metrics(fast: LiveServer) -> None:
    with fast.client() as admin:
        tokens = {
            name: admin.post("/api/v1/users", json={"name": name}).json()["token"]
            for name in ("alice", "bob")
        }
        with fast.client(tokens["alice"]) as alice, fast.client(tokens["bob"]) as bob:
            job = _submit(alice, entrypoint=_python(BURN.format(mib=1, seconds=0.5)))
            fast.wait_state(job["id"], "SUCCEEDED", timeout=30)
            wait_for(lambda: _samples(alice, job["id"]), timeout=10)
            for ref in (job["id"], job["display_id"], job["submission_id"]):
                refused = bob.get(f"/api/v1/jobs/{ref}/metrics")
                assert refused.status_code == 404, refused.text
                assert refused.json()["error"]["field"] == "job"
            assert _samples(admin, job["id"]) == _samples(alice, job["id"])
            missing = alice.get(f"/api/v1/jobs/{job['id']}/metrics", params={"task": "7"})
            assert missing.status_code == 404 and missing.json()["error"]["field"] == "task"
            assert len(_samples(alice, job["id"], task="0", last=1)) == 1
            for last in ("0", "-3", "x", "100001"):
                bad = alice.get(f"/api/v1/jobs/{job['id']}/metrics", params={"last": last})
                assert bad.status_code == 422 and bad.json()["error"]["field"] == "last"
            nobody = httpx.get(f"{fast.url}/api/v1/jobs/{job['id']}/metrics")
            assert nobody.status_code == 401


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"idle_gpu_timeout": -1, "resources": {"gpus": 1}}, "idle_gpu_timeout"),
        ({"idle_gpu_timeout": "soon", "resources": {"gpus": 1}}, "idle_gpu_timeout"),
        ({"idle_gpu_timeout": 60}, "idle_gpu_timeout"),
        ({"idle_gpu_action": "stop", "resources": {"gpus": 1}}, "idle_gpu_action"),
        ({"idle_gpu_action": "reboot"}, "idle_gpu_action"),
    ],
)
def test_bad_idle_gpu_fields_are_a_4xx_naming_the_field(
    live_server: LiveServer, api: httpx.Client, spec: dict[str, Any], field: str
) -> None:
    reply = api.post("/api/v1/jobs", json={"entrypoint": "true", **spec})
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["field"] == field


# ---- kept, bounded, across a restart, deleted with the job ------------------------------------


def test_the_ring_keeps_the_latest_samples_across_a_restart_and_goes_with_the_job(
    home: Path,
) -> None:
    settings = make_settings(home, usage_interval_seconds=0.1, usage_samples=4)
    with running_server(settings) as first, first.client() as http:
        job = _submit(http, entrypoint="sleep 30")
        wait_for(lambda: len(_samples(http, job["id"])) == 4, timeout=30)
        time.sleep(0.5)  # several more passes: the ring still holds 4
        before = _samples(http, job["id"])
        assert len(before) == 4
    restarted = time.time()
    with running_server(settings) as second, second.client() as http:
        assert second.wait_state(job["id"], "RUNNING")

        def newer() -> list[dict[str, Any]]:
            found = _samples(http, job["id"])
            stamps = [datetime.fromisoformat(s["timestamp"]).timestamp() for s in found]
            return found if sum(t > restarted for t in stamps) >= 2 else []

        after = wait_for(newer, timeout=30)
        stamps = [datetime.fromisoformat(s["timestamp"]) for s in after]
        assert len(after) == 4 and stamps == sorted(stamps)  # the newest replaced the oldest
        assert after[0] in before or after[0]["timestamp"] > before[-1]["timestamp"]
        assert http.delete(f"/api/v1/jobs/{job['id']}", params={"force": "true"}).status_code == 204
        gone = http.get(f"/api/v1/jobs/{job['id']}/metrics")
        assert gone.status_code == 404
        stored = second.runtime.db.read_sync(partial(store_usage.job_samples, job_id=job["id"]))
        assert stored == {}


# ---- idle GPUs --------------------------------------------------------------------------------


def _gpu_settings(home: Path, **overrides: Any) -> Any:
    gpus = [GpuSpec(index=0, model="Scripted"), GpuSpec(index=1, model="Scripted")]
    return make_settings(home, gpus=gpus, idle_gpu_threshold_percent=5, **FAST, **overrides)


def _idle_events(http: httpx.Client, ref: Any, reason: str = "IdleGpu") -> list[dict[str, Any]]:
    return [e for e in _events(http, ref) if e["reason"] == reason]


def test_a_job_whose_gpu_stays_idle_is_warned_and_stopped_with_reason_idle_gpu(
    home: Path,
) -> None:
    gpus = ScriptedGpus(count=2)
    gpus.set(0, 90, used_gib=30)
    gpus.set(1, 90, used_gib=30)
    with running_server(_gpu_settings(home), gpus=gpus) as server, server.client() as http:
        job = _submit(
            http,
            entrypoint="sleep 60",
            resources={"gpus": 1},
            idle_gpu_timeout=1,
            idle_gpu_action="stop",
        )
        running = server.wait_state(job["id"], "RUNNING")
        (mine,) = running["tasks"][0]["gpus"]
        busy = wait_for(lambda: _samples(http, job["id"]), timeout=10)[-1]
        assert [g["index"] for g in busy["gpus"]] == [mine]  # its own GPU only
        assert busy["gpus"][0] == {
            "index": mine,
            "utilization_percent": 90.0,
            "memory_used_bytes": 30 * GIB,
            "memory_total_bytes": 80 * GIB,
        }
        time.sleep(1.5)  # busy for longer than the timeout: nothing happens
        assert _idle_events(http, job["id"]) == []
        gpus.set(mine, 0)
        gpus.set(1 - mine, 0)
        done = server.wait_state(job["id"], "FAILED", timeout=30)
        events = _events(http, job["id"])
    assert done["reason"] == "IDLE_GPU"
    assert done["message"] == "its GPUs stayed idle longer than idle_gpu_timeout (1 s)"
    reasons = [e["reason"] for e in events]
    idle = events[reasons.index("IdleGpu")]
    assert idle["type"] == "Warning"
    assert f"GPU {mine} below 5% busy" in idle["message"]
    assert "stopping the job" in idle["message"]
    assert reasons.index("IdleGpu") < reasons.index("Killing") < reasons.index("Failed")
    assert done["attempt"] == 0  # not retried


def test_idle_gpu_action_warn_only_warns_once_per_idle_spell(home: Path) -> None:
    gpus = ScriptedGpus(count=2)
    with running_server(_gpu_settings(home), gpus=gpus) as server, server.client() as http:
        job = _submit(
            http, entrypoint="sleep 60", resources={"gpus": 2}, idle_gpu_timeout=0.5, max_retries=2
        )
        server.wait_state(job["id"], "RUNNING")
        wait_for(lambda: len(_idle_events(http, job["id"])) == 1, timeout=15)
        time.sleep(1.0)
        assert len(_idle_events(http, job["id"])) == 1
        gpus.set(1, 50)  # one of its two GPUs busy: the spell ends
        wait_for(
            lambda: _samples(http, job["id"], last=1)[0]["gpus"][1]["utilization_percent"] == 50
        )
        gpus.set(1, 0)
        wait_for(lambda: len(_idle_events(http, job["id"])) == 2, timeout=15)
        assert http.get(f"/api/v1/jobs/{job['id']}").json()["state"] == "RUNNING"
        assert "stopping" not in _idle_events(http, job["id"])[0]["message"]
        http.post(f"/api/v1/jobs/{job['id']}/stop")
        server.wait_state(job["id"], "STOPPED", timeout=30)


def test_the_idle_clock_goes_on_across_a_server_restart(home: Path) -> None:
    settings = _gpu_settings(home)
    with running_server(settings, gpus=ScriptedGpus(count=2)) as first, first.client() as http:
        job = _submit(
            http,
            entrypoint="sleep 60",
            resources={"gpus": 1},
            idle_gpu_timeout=6,
            idle_gpu_action="stop",
        )
        first.wait_state(job["id"], "RUNNING")
        (spell,) = wait_for(lambda: first.runtime.db.read_sync(store_usage.idle_spells))
        assert (spell.job_id, spell.acted) == (job["id"], False)
        idle_since = spell.since
        assert idle_since is not None and abs(time.time() - idle_since) < 2
        time.sleep(max(idle_since + 4 - time.time(), 0))  # idle 4 of its 6 s
    with running_server(settings, gpus=ScriptedGpus(count=2)) as second, second.client() as http:
        done = second.wait_state(job["id"], "FAILED", timeout=30)
        (idle,) = _idle_events(http, job["id"])
        wait_for(lambda: second.runtime.db.read_sync(store_usage.idle_spells) == [])  # ended
    assert done["reason"] == "IDLE_GPU"
    # 6 s after the spell began before the restart (starting it again would take 6 s after)
    acted_at = datetime.fromisoformat(idle["timestamp"]).timestamp()
    assert 6 <= acted_at - idle_since < 8, idle
    seconds = int(re.search(r"busy for (\d+) s", idle["message"]).group(1))  # type: ignore[union-attr]
    assert 6 <= seconds < 8


@pytest.mark.skipif(_nvml_present(), reason="this machine has NVML: its GPUs are measured")
def test_a_job_whose_gpus_cannot_be_measured_is_told_so_once_and_left_running(
    home: Path,
) -> None:
    settings = _gpu_settings(home)  # GPUs declared, but no GPU source: NVML is not here
    with running_server(settings) as server, server.client() as http:
        job = _submit(
            http,
            entrypoint="sleep 60",
            resources={"gpus": 1},
            idle_gpu_timeout=0.3,
            idle_gpu_action="stop",
        )
        server.wait_state(job["id"], "RUNNING")
        wait_for(lambda: _idle_events(http, job["id"], "IdleGpuUnmeasured"), timeout=15)
        time.sleep(1.0)
        assert len(_idle_events(http, job["id"], "IdleGpuUnmeasured")) == 1
        assert _idle_events(http, job["id"]) == []
        assert all(s["gpus"] is None for s in _samples(http, job["id"]))
        assert http.get(f"/api/v1/jobs/{job['id']}").json()["state"] == "RUNNING"
        http.post(f"/api/v1/jobs/{job['id']}/stop")
        server.wait_state(job["id"], "STOPPED", timeout=30)


@pytest.mark.skipif(_nvml_present(), reason="this machine has NVML")
def test_nvml_where_it_is_not_there_gives_no_figures_not_zeros() -> None:
    source = NvmlGpuSource()
    assert source.read() is None
    assert source.read() is None  # asked once; the answer stays
    source.close()


def test_metrics_count_the_samplers_own_cost(fast: LiveServer) -> None:
    with fast.client() as http:
        job = _submit(http, entrypoint="sleep 30")
        wait_for(lambda: len(_samples(http, job["id"])) >= 3, timeout=30)
        text = http.get("/metrics").text
        http.post(f"/api/v1/jobs/{job['id']}/stop")
    figures = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("jobyard_usage_")
    }
    assert figures["jobyard_usage_samples_total"] >= 3
    assert figures["jobyard_usage_sampler_passes_total"] >= 3
    assert 0 < figures["jobyard_usage_sampler_cpu_seconds_total"] < 10


# ---- the store's ring, on both databases ------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    url = (
        f"sqlite:///{tmp_path}/jobyard.db"
        if request.param == "sqlite"
        else str(request.getfixturevalue("fresh_postgres_url"))
    )
    migrate(url)
    database = Database(url)
    try:
        yield database
    finally:
        database.close()


def _sample(at: float, rss: int) -> UsageSample:
    return UsageSample(
        timestamp=datetime.fromtimestamp(at, UTC), cpu_cores=0.5, memory_rss_bytes=rss, gpus=[]
    )


async def test_the_ring_holds_the_latest_samples_and_a_deleted_job_takes_its_own(
    db: Database,
) -> None:
    first = await db.write(partial(insert_job, new=new_job(), now=1.0))
    second = await db.write(partial(insert_job, new=new_job(), now=1.0))
    numbered = [
        store_usage.NumberedSample(job, task, seq, _sample(1000.0 + seq, 2**40 + seq))
        for seq in range(10)
        for job in (first, second)
        for task in (0, 1)
    ]
    for start in range(0, len(numbered), 4):
        await db.write(partial(store_usage.record, samples=numbered[start : start + 4], ring=3))
    kept = await db.read(partial(store_usage.job_samples, job_id=first))
    assert sorted(kept) == [0, 1]
    assert [s.memory_rss_bytes for s in kept[0]] == [2**40 + 7, 2**40 + 8, 2**40 + 9]
    assert await db.read(partial(store_usage.last_numbers, keys=[(first, 0), (first, 5)])) == {
        (first, 0): 9
    }
    latest = await db.read(partial(store_usage.job_samples, job_id=first, last=1))
    assert [s.memory_rss_bytes for s in latest[1]] == [2**40 + 9]

    await db.write(partial(delete_job, job_id=first))
    assert await db.read(partial(store_usage.job_samples, job_id=first)) == {}
    assert len((await db.read(partial(store_usage.job_samples, job_id=second)))[0]) == 3
    late = [store_usage.NumberedSample(first, 0, 10, _sample(2000.0, 1))]
    assert await db.write(partial(store_usage.record, samples=late, ring=3)) == 0  # dropped


async def test_idle_spells_are_stored_replaced_forgotten_and_go_with_their_job(
    db: Database,
) -> None:
    first = await db.write(partial(insert_job, new=new_job(), now=1.0))
    second = await db.write(partial(insert_job, new=new_job(), now=1.0))
    spells = [store_usage.IdleSpell(first, since=100.5), store_usage.IdleSpell(second, since=7.0)]
    save = partial(store_usage.save_idle_spells, forget=[])
    await db.write(partial(save, spells=spells))
    assert sorted(await db.read(store_usage.idle_spells), key=lambda s: s.job_id) == spells
    acted = store_usage.IdleSpell(first, since=100.5, acted=True)
    told = store_usage.IdleSpell(second, unmeasured=True)
    await db.write(partial(save, spells=[acted, told, store_usage.IdleSpell(999_999, 1.0)]))
    assert sorted(await db.read(store_usage.idle_spells), key=lambda s: s.job_id) == [acted, told]
    await db.write(partial(store_usage.save_idle_spells, spells=[], forget=[second]))
    assert await db.read(store_usage.idle_spells) == [acted]  # the unknown job's was dropped
    await db.write(partial(delete_job, job_id=first))
    assert await db.read(store_usage.idle_spells) == []


# ---- jobyard metrics ---------------------------------------------------------------------------


def test_jobyard_metrics_prints_a_table_json_and_redraws_with_watch(
    fast: LiveServer, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from jobyard.cli.app import app

    with fast.client() as http:
        job = _submit(http, entrypoint=_python(HOLD.format(mib=32)))
        wait_for(lambda: len(_samples(http, job["id"])) >= 3, timeout=30)
        options = ["--url", fast.url, "--token", fast.token]
        runner = CliRunner()
        table = runner.invoke(app, [*options, "metrics", str(job["id"]), "--last", "2"])
        assert table.exit_code == 0, table.output
        lines = table.output.splitlines()
        assert lines[0].split()[:4] == ["TASK", "TIME", "CPU", "(cores)"]
        rows = [line for line in lines[1:] if line.startswith(job["display_id"])]
        assert len(rows) == 2  # --last 2
        for row in rows:  # task, time, CPU, RSS, and no GPU figures: '-', never 0
            cells = re.split(r"\s{2,}", row.strip())
            assert cells[0] == f"{job['display_id']}-worker-0" and cells[3].endswith(" MiB")
            assert re.fullmatch(r"\d\d:\d\d:\d\d", cells[1]) and cells[4:] == ["-", "-"], cells
        as_json = runner.invoke(app, [*options, "metrics", job["display_id"], "--json"])
        assert as_json.exit_code == 0
        assert '"cpu_cores"' in as_json.output and '"gpus": null' in as_json.output
        both = runner.invoke(app, [*options, "metrics", "1", "--watch", "--json"])
        assert both.exit_code == 2 and "--watch" in both.output
        missing = runner.invoke(app, [*options, "metrics", "999999"])
        assert missing.exit_code == 1 and "not found" in missing.output

        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("JOBYARD_")},
            "JOBYARD_URL": fast.url,
            "JOBYARD_TOKEN": fast.token,
            "JOBYARD_HOME": str(tmp_path / "client-home"),
            "COLUMNS": "120",
        }
        argv = [
            sys.executable,
            "-m",
            "jobyard",
            "metrics",
            str(job["id"]),
            "-w",
            "--interval",
            "0.2",
        ]
        watcher = subprocess.Popen(
            with_default_signals(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        try:
            assert watcher.stdout is not None
            seen = b""
            deadline = time.monotonic() + 30
            while seen.count(b"every 0.2s") < 3 and time.monotonic() < deadline:
                seen += watcher.stdout.read1(65536)
            assert seen.count(b"every 0.2s") >= 3 and b"sampled every 0.1s" in seen, seen
            watcher.send_signal(signal.SIGINT)
            assert watcher.wait(timeout=15) == 130
        finally:
            if watcher.poll() is None:
                watcher.kill()
            watcher.wait()
            for stream in (watcher.stdout, watcher.stderr):
                if stream is not None:
                    stream.close()
        http.post(f"/api/v1/jobs/{job['id']}/stop")


def test_the_sdk_submits_the_idle_gpu_fields_and_reads_the_samples(
    home: Path,
) -> None:
    from jobyard.client import Client

    gpus = ScriptedGpus(count=2)
    gpus.set(0, 40)
    gpus.set(1, 40)
    with (
        running_server(_gpu_settings(home), gpus=gpus) as server,
        Client(server.url, server.token) as sdk,
    ):
        job = sdk.submit(
            "sleep 30", resources={"gpus": 2}, idle_gpu_timeout=600, idle_gpu_action="stop"
        )
        with server.client() as http:
            spec = http.get(f"/api/v1/jobs/{job.id}").json()["spec"]
        assert (spec["idle_gpu_timeout"], spec["idle_gpu_action"]) == (600, "stop")
        usage = wait_for(lambda: (u := sdk.metrics(job.id, last=1)).tasks[0].samples and u)
        (sample,) = usage.tasks[0].samples
        assert usage.display_id == job.display_id and usage.interval_seconds == 0.1
        assert sample.gpus is not None and sorted(g.index for g in sample.gpus) == [0, 1]
        assert {g.utilization_percent for g in sample.gpus} == {40.0}
        assert sample.memory_rss_bytes and sample.memory_rss_bytes > 0
        sdk.stop(job.id)


# ---- log timestamps ---------------------------------------------------------------------------


def test_logs_with_timestamps_say_when_each_line_arrived_without_changing_the_log(
    fast: LiveServer, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from jobyard.cli.app import app

    script = "echo one; sleep 1.5; echo two; echo three; sleep 1.5; printf 'four\\nfive\\n'"
    with fast.client() as admin:
        bob = admin.post("/api/v1/users", json={"name": "bob"}).json()["token"]
        job = _submit(admin, entrypoint=script)
        fast.wait_state(job["id"], "SUCCEEDED", timeout=30)
        plain = admin.get(f"/api/v1/jobs/{job['id']}/logs")
        stamped = admin.get(f"/api/v1/jobs/{job['id']}/logs", params={"timestamps": "true"})
        last = admin.get(
            f"/api/v1/jobs/{job['id']}/logs", params={"timestamps": "true", "tail": "1"}
        )
        streaming = admin.get(
            f"/api/v1/jobs/{job['id']}/logs", params={"timestamps": "true", "follow": "true"}
        )
        with fast.client(bob) as other:
            refused = other.get(f"/api/v1/jobs/{job['id']}/logs", params={"timestamps": "true"})
    assert plain.text == "one\ntwo\nthree\nfour\nfive\n"  # the stored bytes, as written
    lines = stamped.text.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["one", "two", "three", "four", "five"]
    times = [datetime.fromisoformat(line.split(" ", 1)[0]) for line in lines]
    assert lines[0].split(" ", 1)[0].endswith("Z")
    assert times == sorted(times)
    assert times[1] == times[2] and times[3] == times[4]  # written together, seen together
    assert 1.0 < (times[1] - times[0]).total_seconds() < 3.5
    assert 1.0 < (times[3] - times[1]).total_seconds() < 3.5
    assert last.text == lines[-1] + "\n"
    assert streaming.text == stamped.text  # followed after the end: the same stamps
    assert refused.status_code == 404

    options = ["--url", fast.url, "--token", fast.token]
    runner = CliRunner()
    shown = runner.invoke(app, [*options, "logs", str(job["id"]), "--timestamps"])
    assert shown.exit_code == 0 and shown.output == stamped.text
    both = runner.invoke(app, [*options, "logs", str(job["id"]), "--timestamps", "-f"])
    assert both.exit_code == 0 and both.output == stamped.text

    with fast.client() as admin:
        assert admin.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    read = partial(store_usage.task_marks, job_id=job["id"], task_index=0)
    assert fast.runtime.db.read_sync(read) == []


def test_a_followed_log_with_timestamps_stamps_each_line_as_it_arrives(fast: LiveServer) -> None:
    script = (
        "echo one; sleep 1.5; printf 'par'; sleep 1; echo tial; echo three; sleep 1.5; "
        "printf 'no newline'"
    )
    with fast.client() as http:
        job = _submit(http, entrypoint=script)
        received = []  # (when the client got it, the line)
        params = {"timestamps": "true", "follow": "true"}
        with http.stream("GET", f"/api/v1/jobs/{job['id']}/logs", params=params) as reply:
            assert reply.status_code == 200
            for line in reply.iter_lines():
                received.append((time.time(), line))
        plain = http.get(f"/api/v1/jobs/{job['id']}/logs").text
    assert [line.split(" ", 1)[1] for _, line in received] == [
        "one",
        "partial",  # its two pieces wait for the newline: one line, one stamp
        "three",
        "no newline",  # the last bytes, sent at the end
    ]
    assert "".join(line.split(" ", 1)[1] + "\n" for _, line in received)[:-1] == plain
    stamps = [datetime.fromisoformat(line.split(" ", 1)[0]).timestamp() for _, line in received]
    assert stamps == sorted(stamps)
    assert 2.0 < stamps[1] - stamps[0] < 4.0 and stamps[2] - stamps[1] < 0.5
    for (got, _), stamp in zip(received, stamps, strict=True):
        assert stamp <= got + 0.05  # stamped by the time it was sent, not later
        assert got - stamp < 1.0  # nor long before: as it arrived
