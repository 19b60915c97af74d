"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright).

First render: a signed-in browser navigates to the jobs page of a server holding 10,000 stored
jobs; the time until the first row is drawn, median of 5 loads.
Log memory: the job page follows a job's log while the job writes 100,000 lines; once the last
line is shown, the memory of the page's renderer process (USS, the tab itself), its JS heap,
how many line elements the log keeps, and the whole browser's USS (its own processes included:
a fixed cost of Chromium, not of the page). Skipped, with a row saying why, without Chromium.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil

from bench import fill
from bench.report import Result, at_most, info

if TYPE_CHECKING:
    from bench.scenarios import Options
    from bench.server import Server

LINES = 100_000
MB = 1024 * 1024


def _chromium() -> str | None:
    return os.environ.get("JOBYARD_CHROMIUM") or shutil.which("chromium")


@contextlib.contextmanager
def _browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright  # the test extra; checked by the caller

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def _signed_in(browser: Any, server: Server) -> Any:
    url = f"http://{server.target.host}:{server.target.port}"
    context = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.goto("/login")
    page.fill("#token", server.target.token)
    page.click("button[type=submit]")
    page.wait_for_selector("#jobs-total")
    return page


def _first_render(page: Any, loads: int) -> list[float]:
    times = []
    for _ in range(loads):
        page.goto("about:blank")
        started = time.perf_counter()
        page.goto("/")
        page.wait_for_selector("tr[data-job]")
        times.append(time.perf_counter() - started)
    return times


def _chromium_processes() -> list[psutil.Process]:
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "chrom" in proc.name().lower():
                found.append(proc)
    return found


def _uss(proc: psutil.Process) -> float:
    try:
        return float(proc.memory_full_info().uss) / MB
    except psutil.Error:
        return 0.0


def _follow(page: Any, server: Server, gate: Path) -> dict[str, float]:
    from playwright.sync_api import expect

    command = f"while [ ! -e {gate} ]; do sleep 0.05; done; seq 1 {LINES}; exec sleep 600"
    http = httpx.Client(
        base_url=f"http://{server.target.host}:{server.target.port}",
        headers={"Authorization": f"Bearer {server.target.token}"},
        timeout=30,
    )
    with http:
        job = http.post("/api/v1/jobs", json={"entrypoint": command, "name": "bench-log"})
        job.raise_for_status()
        display_id = job.json()["display_id"]
        try:
            page.goto(f"/#/jobs/{display_id}")
            expect(page.locator("#job-state")).to_have_text("RUNNING", timeout=30_000)
            started = time.perf_counter()
            gate.touch()
            expect(page.locator("#log div").last).to_have_text(str(LINES), timeout=120_000)
            shown = time.perf_counter() - started
            time.sleep(1)  # let the page settle (and collect) before reading its memory
            cdp = page.context.new_cdp_session(page)
            cdp.send("HeapProfiler.collectGarbage")
            cdp.send("Performance.enable")
            metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            lines = page.locator("#log div").count()
            nodes = page.locator("*").count()
            processes = _chromium_processes()
            renderers = [p for p in processes if "--type=renderer" in " ".join(p.cmdline())]
            return {
                "shown": shown,
                "lines": lines,
                "nodes": nodes,
                "heap": metrics.get("JSHeapUsedSize", 0.0) / MB,
                "renderer": max((_uss(p) for p in renderers), default=0.0),
                "browser": sum(_uss(p) for p in processes),
            }
        finally:
            http.post(f"/api/v1/jobs/{display_id}/stop")


def _why_not() -> str | None:
    if _chromium() is None:
        return "no chromium (apt-get install chromium; .ci/run does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


def dashboard(options: Options) -> list[Result]:
    """Jobs page first render at 10,000 jobs; browser memory after following 100,000 lines."""
    why = _why_not()
    if why is not None:
        return [info("dashboard", f"skipped: {why}", 0, "")]
    count = 10_000
    with (
        fill.filled_home(count) as (home, _took),
        options.server("dashboard", home) as server,
        _browser() as browser,
        tempfile.TemporaryDirectory(prefix="jobyard-bench-web-") as scratch,
    ):
        page = _signed_in(browser, server)
        times = _first_render(page, loads=5)
        log = _follow(page, server, Path(scratch) / "gate")
    note = (
        f"{count} jobs stored; median of {len(times)} loads ({min(times):.2f}-{max(times):.2f} s)"
    )
    follow = f"after following {LINES:,} new lines (log tail: default 1,000)"
    return [
        at_most("dashboard", "jobs page, first row drawn", statistics.median(times), "s", 1, note),
        info(
            "dashboard",
            "log: line 100,000 shown, from the job's first line",
            log["shown"],
            "s",
            follow,
        ),
        info("dashboard", "log: line elements kept", log["lines"], "", follow),
        info("dashboard", "log: DOM nodes in the page", log["nodes"], "", follow),
        info("dashboard", "log: JS heap used", log["heap"], "MiB", follow),
        at_most(
            "dashboard",
            "log: the page's renderer process (USS)",
            log["renderer"],
            "MiB",
            200,
            follow,
        ),
        info(
            "dashboard",
            "whole Chromium, all its processes (USS)",
            log["browser"],
            "MiB",
            "browser, GPU and utility processes as well as the tab: mostly Chromium's own",
        ),
    ]
