"""Usage of jobs on the real single-machine Slurm cluster (.ci/slurm-setup.sh): sstat's figures
of the running step, through the executor and through a whole server's sampler and its
`GET /api/v1/jobs/{ref}/metrics`; kept after the job ends; GPUs absent, not zero."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobyard.executors.slurm.executor import SlurmExecutor
from jobyard.executors.usage import ReportedUsage
from jobyard.model import TaskState
from tests.helpers import make_settings, running_server, wait_for, wait_report
from tests.integration.slurm_support import NO_USAGE_REASON, holding_the_cluster, slurm_settings
from tests.integration.test_executor_contract import placement

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(NO_USAGE_REASON is not None, reason=str(NO_USAGE_REASON)),
]

MIB = 2**20
# Busy on one core for `seconds`, holding `mib` MiB (more for each higher rank), then exit.
BURN = (
    "import os, time\nx = bytearray(({mib} + {mib} * int(os.environ.get('RANK', '0'))) * 2**20)"
    "\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"
)


@pytest.fixture(autouse=True)
def shared_cluster(tmp_path: Path) -> Iterator[None]:
    with holding_the_cluster(tmp_path):
        yield


@pytest.fixture
async def executor(home: Path) -> AsyncIterator[SlurmExecutor]:
    ex = SlurmExecutor(make_settings(home, executor="slurm", slurm=slurm_settings()))
    yield ex
    await ex.close()


async def _figures_until(
    executor: SlurmExecutor, handle: dict[str, Any], mib: int, timeout: float = 30
) -> ReportedUsage:
    """sstat's figures once they show the task's memory and a second of its CPU time."""
    deadline = time.monotonic() + timeout
    while True:
        await executor.poll([handle])
        (figures,) = await executor.task_usage([handle])
        if figures and (figures.rss_bytes or 0) >= mib * MIB and (figures.cpu_seconds or 0) >= 1:
            return figures
        assert time.monotonic() < deadline, f"sstat said {figures}"
        await asyncio.sleep(0.5)


async def test_a_running_tasks_figures_come_from_sstat_and_end_with_it(
    executor: SlurmExecutor,
) -> None:
    p = placement(entrypoint=[sys.executable, "-c", BURN.format(mib=96, seconds=6)])
    (task,) = await executor.start(p)
    await wait_report(executor, task.handle, until={TaskState.RUNNING})
    figures = await _figures_until(executor, task.handle, mib=96)
    assert (figures.rss_bytes or 0) < 1024 * MIB and (figures.cpu_seconds or 0) <= 10
    assert (await wait_report(executor, task.handle)).exit_code == 0
    assert await executor.task_usage([task.handle]) == [None]  # ended: sstat knows it no more


async def test_each_task_of_a_multi_worker_job_shows_its_srun_steps_average(
    executor: SlurmExecutor,
) -> None:
    p = placement(entrypoint=[sys.executable, "-c", BURN.format(mib=64, seconds=6)], replicas=2)
    tasks = await executor.start(p)
    await wait_report(executor, tasks[0].handle, until={TaskState.RUNNING})
    # the tasks hold 64 and 128 MiB: each shows the step's average, above 96 MiB
    await _figures_until(executor, tasks[0].handle, mib=96)
    first, second = await executor.task_usage([t.handle for t in tasks])
    assert first is not None and first == second
    for task in tasks:
        assert (await wait_report(executor, task.handle)).exit_code == 0


def test_the_server_samples_a_slurm_job_and_keeps_its_last_samples(home: Path) -> None:
    settings = make_settings(
        home, executor="slurm", slurm=slurm_settings(), usage_interval_seconds=1.0
    )
    with running_server(settings) as server, server.client() as http:
        job = http.post(
            "/api/v1/jobs",
            json={"entrypoint": [sys.executable, "-c", BURN.format(mib=80, seconds=8)]},
        ).json()

        def samples() -> list[dict[str, Any]]:
            reply = http.get(f"/api/v1/jobs/{job['id']}/metrics").json()
            return list(reply["tasks"][0]["samples"])

        busy = wait_for(
            lambda: [
                s
                for s in samples()
                if (s["memory_rss_bytes"] or 0) >= 80 * MIB and (s["cpu_cores"] or 0) > 0.2
            ],
            timeout=40,
        )
        assert busy[0]["gpus"] is None  # the nodes' GPUs are not measured: absent, not zero
        done = server.wait_state(job["id"], "SUCCEEDED", "FAILED", timeout=40)
        assert done["state"] == "SUCCEEDED"
        kept = samples()
    assert busy[0] in kept
    assert kept[0]["cpu_cores"] is None  # the first: sstat says CPU time, not since when
    assert all(s["cpu_cores"] is None or 0 <= s["cpu_cores"] <= 16 for s in kept)
