"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright),
against a real server: sign-in, live jobs table, followed logs, submit form, stop, terminal,
users kept apart, CSRF and no token in pages or URLs.

Screenshots of each page go to $JOBYARD_SCREENSHOTS (default: pytest's temp dir); never committed.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import LiveServer, make_settings, running_server, wait_for

ws_client = pytest.importorskip("websockets.sync.client")
ws_exceptions = pytest.importorskip("websockets.exceptions")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = os.environ.get("JOBYARD_CHROMIUM") or shutil.which("chromium") or ""
pytestmark = pytest.mark.skipif(
    not CHROMIUM, reason="no system chromium (apt-get install -y chromium; .ci/run does)"
)
TIMEOUT_MS = 15_000
sync_api.expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with running_server(make_settings(tmp_path_factory.mktemp("web") / "home")) as live:
        yield live


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Seen:
    """Everything a page sent and every script error or CSP violation it reported."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.problems: list[str] = []
        self.html: list[str] = []

    def watch(self, page: Any) -> None:
        page.on("request", lambda request: self.urls.append(request.url))
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if (
            "Content Security Policy" in message.text
            or message.type == "error"
            and ("Failed to load resource" not in message.text)
        ):
            self.problems.append(f"console: {message.text}")


@pytest.fixture(scope="module")
def seen() -> Seen:
    return Seen()


def sign_in(browser: Any, server: LiveServer, token: str, seen: Seen) -> Any:
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    seen.watch(page)
    page.goto("/")
    assert page.url.endswith("/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_selector("#jobs-total")
    return page


@pytest.fixture(scope="module")
def admin(browser: Any, server: LiveServer, seen: Seen) -> Iterator[Any]:
    page = sign_in(browser, server, server.token, seen)
    yield page
    page.context.close()


def submit(server: LiveServer, command: str, name: str, token: str | None = None) -> dict[str, Any]:
    with server.client(token) as http:
        response = http.post("/api/v1/jobs", json={"entrypoint": command, "name": name})
        assert response.status_code == 201, response.text
        job: dict[str, Any] = response.json()
        return job


def gated(gate: Path, before: str = "echo started", after: str = "echo finished") -> str:
    """A shell command that runs `before`, waits for `gate` to exist, then runs `after`."""
    return f"{before}; while [ ! -e {gate} ]; do sleep 0.05; done; {after}"


def row_state(page: Any, display_id: str) -> Any:
    return page.locator(f'tr[data-job="{display_id}"] .state')


def test_session_cookie_is_httponly_strict_and_pages_carry_a_csp(admin: Any, server: LiveServer):
    cookies = {c["name"]: c for c in admin.context.cookies()}
    session = cookies["jobyard_session"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert cookies["jobyard_csrf"]["httpOnly"] is False
    assert admin.evaluate("document.cookie").find("jobyard_session") == -1
    page = httpx.get(server.url + "/login")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_job_turns_running_then_succeeded_without_reload(
    admin: Any, server: LiveServer, tmp_path: Path, shots: Path, seen: Seen
):
    gate = tmp_path / "gate"
    job = submit(server, gated(gate), "live-table")
    admin.goto("/#/jobs")
    admin.evaluate("window.notReloaded = true")
    sync_api.expect(row_state(admin, job["display_id"])).to_have_text("RUNNING")
    admin.screenshot(path=shots / "jobs-running.png", full_page=True)
    gate.touch()
    sync_api.expect(row_state(admin, job["display_id"])).to_have_text("SUCCEEDED")
    assert admin.evaluate("window.notReloaded") is True
    # Pushed by server-sent events: one stream for the table, no polling of the list.
    table_requests = [u for u in seen.urls if "/ui/api/jobs?" in u or "/ui/api/jobs/events" in u]
    assert table_requests and all("/ui/api/jobs/events?" in u for u in table_requests)
    admin.screenshot(path=shots / "jobs-succeeded.png", full_page=True)


def test_job_page_follows_the_log_live_keeping_only_the_tail(
    admin: Any, server: LiveServer, tmp_path: Path, shots: Path
):
    gate = tmp_path / "gate"
    lines = "for i in $(seq 1 300); do echo line-$i; done"
    job = submit(server, gated(gate, before=lines, after="echo after-the-gate"), "follow-me")
    server.wait_state(job["id"], "RUNNING")
    admin.goto(f"/#/jobs/{job['display_id']}")
    log = admin.locator("#log")
    sync_api.expect(log).to_contain_text("line-300")
    admin.fill("#log-tail", "20")
    admin.press("#log-tail", "Enter")
    sync_api.expect(log.locator("div").first).to_have_text("line-281")
    assert log.locator("div").count() == 20
    gate.touch()
    sync_api.expect(log).to_contain_text("after-the-gate")
    assert log.locator("div").count() <= 20
    sync_api.expect(admin.locator("#job-state")).to_have_text("SUCCEEDED")
    sync_api.expect(admin.locator("#tasks .exit-code")).to_have_text("0")
    sync_api.expect(admin.locator("#timeline")).to_contain_text("RUNNING")
    sync_api.expect(admin.locator("#events")).to_contain_text("Started")
    admin.fill("#log-search", "line-29")
    sync_api.expect(admin.locator("#log-status")).to_have_text("10 matching lines")
    admin.screenshot(path=shots / "job-detail.png", full_page=True)


def test_submit_form_shows_the_api_field_error_then_submits(
    admin: Any, server: LiveServer, shots: Path
):
    admin.goto("/#/submit")
    admin.fill("#s-entrypoint", "echo from-the-form")
    admin.fill("#s-name", "form-job")
    admin.fill("#s-resources-cpus", "lots")
    admin.click("#submit")
    sync_api.expect(admin.locator("#s-resources-cpus-error")).to_contain_text("number")
    sync_api.expect(admin.locator("#s-entrypoint-error")).to_have_text("")
    admin.screenshot(path=shots / "submit-error.png", full_page=True)
    admin.fill("#s-resources-cpus", "0.5")
    admin.fill("#s-env", "GREETING=hello")
    admin.click("#submit")
    sync_api.expect(admin.locator("#job-state")).to_have_text("SUCCEEDED")
    sync_api.expect(admin.locator("#log")).to_contain_text("from-the-form")
    admin.click("#clone")  # re-submit: the form again, filled from this job
    sync_api.expect(admin.locator("#s-entrypoint")).to_have_value("echo from-the-form")
    sync_api.expect(admin.locator("#s-env")).to_have_value("GREETING=hello")
    sync_api.expect(admin.locator("#s-resources-cpus")).to_have_value("0.5")
    with server.client() as http:
        found = http.get("/api/v1/jobs", params={"q": "form-job"}).json()["items"]
    assert [j["spec"]["env"]["GREETING"] for j in found] == ["hello"]
    assert found[0]["spec"]["resources"]["cpus"] == 0.5


def test_stop_button_stops_a_running_job_after_confirmation(admin: Any, server: LiveServer):
    ports = [{"port": 8080, "protocol": "http"}]
    with server.client() as http:
        body = {"entrypoint": "echo up; sleep 600", "name": "stop-me", "ports": ports}
        job = http.post("/api/v1/jobs", json=body).json()
    server.wait_state(job["id"], "RUNNING")
    admin.goto(f"/#/jobs/{job['display_id']}")
    sync_api.expect(admin.locator("#job-state")).to_have_text("RUNNING")
    sync_api.expect(admin.locator("#ports")).to_contain_text("8080/http")
    sync_api.expect(admin.locator("#ports a")).to_have_text(re.compile(r"^http://.+:\d+/$"))
    admin.once("dialog", lambda dialog: dialog.dismiss())
    admin.click("#stop")
    sync_api.expect(admin.locator("#job-state")).to_have_text("RUNNING")
    admin.once("dialog", lambda dialog: dialog.accept())
    admin.click("#stop")
    sync_api.expect(admin.locator("#job-state")).to_have_text("STOPPED")
    sync_api.expect(admin.locator("#stop")).to_be_disabled()
    admin.once("dialog", lambda dialog: dialog.accept())
    admin.click("#delete")
    admin.wait_for_url("**/#/jobs")
    sync_api.expect(admin.locator("#jobs-total")).not_to_be_empty()
    assert admin.locator(f'tr[data-job="{job["display_id"]}"]').count() == 0
    with server.client() as http:
        assert http.get(f"/api/v1/jobs/{job['id']}").status_code == 404


def test_terminal_runs_a_command_in_a_running_task(admin: Any, server: LiveServer, shots: Path):
    if httpx.get(server.url + "/static/vendor/xterm.js").status_code != 200:
        pytest.skip("xterm.js is not installed (make assets runs npm ci in web/)")
    job = submit(server, "sleep 600", "shell-me")
    server.wait_state(job["id"], "RUNNING")
    admin.goto(f"/#/jobs/{job['display_id']}")
    sync_api.expect(admin.locator("#open-terminal")).to_be_enabled()
    admin.click("#open-terminal")
    admin.locator("#terminal .xterm-helper-textarea").wait_for(state="attached")
    admin.locator("#terminal").click()
    admin.keyboard.type("echo answer-$((6*7))\n")
    sync_api.expect(admin.locator("#terminal .xterm-rows")).to_contain_text("answer-42")
    admin.screenshot(path=shots / "terminal.png", full_page=True)
    admin.click("#close-terminal")
    with server.client() as http:
        http.post(f"/api/v1/jobs/{job['id']}/stop")


def test_second_user_sees_none_of_the_first_users_jobs(
    browser: Any, admin: Any, server: LiveServer, seen: Seen, shots: Path
):
    mine = submit(server, "echo admin-only", "admin-secret-job")
    token = _new_user_token(server, "bob")
    bob = sign_in(browser, server, token, seen)
    try:
        theirs = submit(server, "echo bobs", "bob-job", token=token)
        sync_api.expect(row_state(bob, theirs["display_id"])).to_be_visible()
        assert bob.locator(f'tr[data-job="{mine["display_id"]}"]').count() == 0
        assert "admin-secret-job" not in bob.content()
        bob.goto(f"/#/jobs/{mine['display_id']}")
        sync_api.expect(bob.locator("#job-error")).to_contain_text("not found")
        bob.screenshot(path=shots / "second-user.png", full_page=True)
        admin.goto("/#/jobs")
        sync_api.expect(row_state(admin, theirs["display_id"])).to_be_visible()  # admin sees all
        bob.click("#signout")
        bob.wait_for_url("**/login")
        bob.goto("/")
        assert bob.url.endswith("/login")
    finally:
        bob.context.close()


def _new_user_token(server: LiveServer, name: str) -> str:
    """Playwright's sync API runs an event loop in this thread: create the user in another."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, server.runtime.auth.create_user_token(name)).result()


def test_state_changes_need_the_csrf_header_and_same_origin(admin: Any, server: LiveServer):
    cookies = {c["name"]: c["value"] for c in admin.context.cookies()}
    with httpx.Client(base_url=server.url, cookies=cookies) as http:
        body = {"spec": {"entrypoint": "echo forged"}}
        assert http.post("/ui/api/jobs", json=body).status_code == 403
        wrong = {"X-CSRF-Token": "guess"}
        assert http.post("/ui/api/jobs", json=body, headers=wrong).status_code == 403
        right = {"X-CSRF-Token": cookies["jobyard_csrf"]}
        foreign = {**right, "Origin": "https://evil.example"}
        assert http.post("/ui/api/jobs", json=body, headers=foreign).status_code == 403
        assert http.post("/ui/api/jobs", json=body, headers=right).status_code == 201
        broken = http.post("/ui/api/jobs", content=b"{not json", headers=right)
        assert broken.status_code == 422 and broken.json()["error"]["field"] == "body"
    # The session cookie is not a bearer token for the API.
    with httpx.Client(base_url=server.url, cookies=cookies) as http:
        assert http.get("/api/v1/jobs").status_code == 401


def test_terminal_websocket_refuses_a_foreign_origin(admin: Any, server: LiveServer):
    job = submit(server, "sleep 600", "origin-check")
    server.wait_state(job["id"], "RUNNING")
    cookies = {c["name"]: c["value"] for c in admin.context.cookies()}
    headers = {"X-CSRF-Token": cookies["jobyard_csrf"]}
    with httpx.Client(base_url=server.url, cookies=cookies, headers=headers) as http:
        url = http.post(f"/ui/api/jobs/{job['id']}/terminal", json={}).json()["url"]
        with pytest.raises(ws_exceptions.InvalidStatus) as refused:
            ws_client.connect(url, origin="http://evil.example", open_timeout=10)
        assert refused.value.response.status_code == 403
        # Refused before the token was looked at: it still opens a shell from our own origin.
        with ws_client.connect(url, origin=server.url, open_timeout=10) as socket:
            socket.send(b"\x00echo same-origin-$((2*21))\n")
            seen_output = bytearray()

            def answered() -> bool:
                chunk = socket.recv(timeout=10)
                seen_output.extend(chunk if isinstance(chunk, bytes) else chunk.encode())
                return b"same-origin-42" in seen_output

            wait_for(answered, timeout=10)
        http.post(f"/ui/api/jobs/{job['id']}/stop")


def test_a_job_opens_by_keyboard_alone(admin: Any, server: LiveServer):
    job = submit(server, "echo keys", "by-keyboard")
    server.wait_state(job["id"], "SUCCEEDED")
    admin.goto("/#/jobs?q=by-keyboard")
    sync_api.expect(row_state(admin, job["display_id"])).to_have_text("SUCCEEDED")
    link = "tr[data-job] a"
    for _ in range(30):
        admin.keyboard.press("Tab")
        if admin.evaluate(f"document.activeElement.matches('{link}')"):
            break
    else:
        pytest.fail("no job link reachable with Tab")
    admin.keyboard.press("Enter")
    sync_api.expect(admin.locator("#job-state")).to_have_text("SUCCEEDED")
    assert admin.url.endswith(f"#/jobs/{job['display_id']}")


def test_no_token_in_pages_or_urls_and_no_script_errors(
    admin: Any, server: LiveServer, seen: Seen, shots: Path
):
    for route in ("#/jobs", "#/submit", "#/queues"):
        admin.goto(f"/{route}")
        admin.wait_for_load_state("networkidle")
        assert server.token not in admin.content()
    sync_api.expect(admin.locator("#pools")).to_contain_text("CPUs: 0 / 8")
    sync_api.expect(admin.locator("#pools")).to_contain_text("Memory: 0 / 16384 MiB")
    sync_api.expect(admin.locator("#queues")).to_contain_text("gpu")
    # Jobs of the earlier tests ran within the hour: the chart's peak counts them.
    summary = admin.locator("#activity-summary")
    sync_api.expect(summary).to_contain_text(
        re.compile(r"peak [1-9]\d* in a minute of the last hour")
    )
    assert admin.locator("#activity polyline").count() == 2
    admin.screenshot(path=shots / "queues.png", full_page=True)
    admin.set_viewport_size({"width": 390, "height": 800})  # a phone
    for route in ("#/jobs", "#/submit"):
        admin.goto(f"/{route}")
        admin.wait_for_load_state("networkidle")
        width = admin.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{route} scrolls sideways at phone width ({width}px)"
        admin.screenshot(path=shots / f"phone-{route[2:]}.png", full_page=True)
    admin.set_viewport_size({"width": 1280, "height": 900})
    assert seen.urls and not [u for u in seen.urls if server.token in u]
    assert seen.problems == []
