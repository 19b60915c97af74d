"""The job page's usage charts in a real headless Chromium (Debian's `chromium`, Playwright),
against a real server sampling real processes, with a scripted GPU source: uPlot from npm
draws CPU, memory and GPU charts with units on their axes, keeps drawing while the job runs,
keeps its samples after it ends, and says where GPU figures are not measured.

Screenshots go to $JOBYARD_SCREENSHOTS (default: pytest's temp dir); never committed.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobyard.config import GpuSpec
from jobyard.web import assets
from tests.helpers import LiveServer, make_settings, running_server, wait_for
from tests.usage_support import ScriptedGpus

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = os.environ.get("JOBYARD_CHROMIUM") or shutil.which("chromium") or ""
pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM, reason="no system chromium (apt-get install -y chromium; .ci/run does)"
    ),
    pytest.mark.skipif(
        assets.vendor_file("uPlot.iife.min.js") is None, reason="uPlot not installed (make assets)"
    ),
]
TIMEOUT_MS = 15_000
sync_api.expect.set_options(timeout=TIMEOUT_MS)
BURN = "import time\nx = bytearray(48 * 2**20)\nwhile True: pass\n"


@pytest.fixture(scope="module")
def gpus() -> ScriptedGpus:
    return ScriptedGpus(count=2)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, gpus: ScriptedGpus) -> Iterator[LiveServer]:
    settings = make_settings(
        tmp_path_factory.mktemp("usage-web") / "home",
        usage_interval_seconds=0.25,
        gpus=[GpuSpec(index=0, model="Scripted"), GpuSpec(index=1, model="Scripted")],
    )
    with running_server(settings, gpus=gpus) as live:
        yield live


@pytest.fixture(scope="module")
def page(server: LiveServer) -> Iterator[Any]:
    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = chromium.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        tab = context.new_page()
        tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        tab.on(
            "console",
            lambda m: (
                problems.append(m.text) if m.type == "error" or "Security" in m.text else None
            ),
        )
        tab.goto("/")
        tab.fill("#token", server.token)
        tab.click("button[type=submit]")
        tab.wait_for_selector("#jobs-total")
        yield tab
        chromium.close()
    assert problems == []


def _submit(server: LiveServer, **body: Any) -> dict[str, Any]:
    with server.client() as http:
        reply = http.post("/api/v1/jobs", json=body)
        assert reply.status_code == 201, reply.text
        job: dict[str, Any] = reply.json()
        return job


def _points(page: Any, chart: str) -> int:
    return int(page.locator(f"#usage-{chart}").get_attribute("data-points") or 0)


def test_a_gpu_jobs_page_charts_cpu_memory_and_its_gpu_with_units(
    page: Any, server: LiveServer, gpus: ScriptedGpus, shots: Path
) -> None:
    gpus.set(0, 73, used_gib=20)
    gpus.set(1, 73, used_gib=20)
    job = _submit(server, entrypoint=[sys.executable, "-c", BURN], resources={"gpus": 1})
    running = server.wait_state(job["id"], "RUNNING")
    (mine,) = running["tasks"][0]["gpus"]
    page.goto(f"/#/jobs/{job['display_id']}")
    charts = page.locator("#usage .uplot")
    sync_api.expect(charts).to_have_count(4)
    titles = page.locator("#usage .u-title").all_inner_texts()
    assert titles == ["CPU", "Memory (RSS)", "GPU utilisation", "GPU memory"]
    # each chart's summary (its y axis too: drawn on the canvas) speaks in units
    cpu = page.locator("#usage-cpu")
    sync_api.expect(cpu).to_have_attribute("aria-label", _contains("cores"))
    sync_api.expect(page.locator("#usage-memory")).to_have_attribute("aria-label", _contains("MiB"))
    util = page.locator("#usage-gpu-util")
    sync_api.expect(util).to_have_attribute("aria-label", _contains(f"GPU {mine} 73 %"))
    sync_api.expect(util).to_have_attribute("data-series", "1")  # its own GPU only
    drawn = _points(page, "cpu")
    wait_for(lambda: _points(page, "cpu") > drawn + 2, timeout=15)  # drawn while it runs
    gpus.set(mine, 12)
    sync_api.expect(util).to_have_attribute("aria-label", _contains(f"GPU {mine} 12 %"))
    page.screenshot(path=shots / "job-usage-charts.png", full_page=True)
    with server.client() as http:
        http.post(f"/api/v1/jobs/{job['id']}/stop")
    server.wait_state(job["id"], "STOPPED", timeout=30)
    sync_api.expect(page.locator("#job-state")).to_have_text("STOPPED")
    ended = _points(page, "cpu")
    assert ended >= drawn + 2
    page.reload()  # after the end: the kept samples, drawn once
    sync_api.expect(page.locator("#usage .uplot")).to_have_count(4)
    assert _points(page, "cpu") >= ended


def test_a_job_without_gpus_has_no_gpu_charts(page: Any, server: LiveServer) -> None:
    job = _submit(server, entrypoint="sleep 30")
    server.wait_state(job["id"], "RUNNING")
    page.goto(f"/#/jobs/{job['display_id']}")
    sync_api.expect(page.locator("#usage .uplot")).to_have_count(2)
    sync_api.expect(page.locator("#usage-note")).to_contain_text("no GPUs")
    legend = page.locator("#usage-cpu .u-legend .u-series .u-label")
    sync_api.expect(legend.last).to_have_text(f"{job['display_id']}-worker-0")
    with server.client() as http:
        http.post(f"/api/v1/jobs/{job['id']}/stop")


def _contains(text: str) -> Any:
    return re.compile(re.escape(text))


def test_the_log_view_shows_when_each_line_arrived(page: Any, server: LiveServer) -> None:
    job = _submit(server, entrypoint="echo first; sleep 1; echo second; sleep 30")
    server.wait_state(job["id"], "RUNNING")
    page.goto(f"/#/jobs/{job['display_id']}")
    log = page.locator("#log")
    sync_api.expect(log).to_contain_text("second")
    assert not re.match(r"\d{4}-", log.locator("div").first.inner_text())  # plain by default
    page.check("#log-timestamps")
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z "
    sync_api.expect(log.locator("div").first).to_have_text(re.compile(stamp + "first$"))
    sync_api.expect(log.locator("div").last).to_have_text(re.compile(stamp + "second$"))
    sync_api.expect(page.locator("#log-status")).to_have_text("with timestamps, read every 2 s")
    page.uncheck("#log-timestamps")
    sync_api.expect(log.locator("div").first).to_have_text("first")
    with server.client() as http:
        http.post(f"/api/v1/jobs/{job['id']}/stop")
