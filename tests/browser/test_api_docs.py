"""The OpenAPI pages, /docs (Swagger UI) and /redoc (ReDoc), in a real headless Chromium with
every request that leaves the server refused: they must render the API's operations from the
scripts jobyard serves itself (npm packages in web/node_modules), never from a CDN."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import LiveServer, make_settings, running_server

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = os.environ.get("JOBYARD_CHROMIUM") or shutil.which("chromium") or ""
pytestmark = pytest.mark.skipif(
    not CHROMIUM, reason="no system chromium (apt-get install -y chromium; make test does)"
)
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with running_server(make_settings(tmp_path_factory.mktemp("docs") / "home")) as live:
        yield live


@pytest.fixture(scope="module")
def offline(server: LiveServer) -> Iterator[tuple[Any, list[str]]]:
    """A browser context where only the server's own origin answers; the rest is aborted, and
    recorded unless it is an image (ReDoc's "powered by" logo comes from its CDN: the page
    works without it)."""
    refused: list[str] = []

    def only_the_server(route: Any) -> None:
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            if route.request.resource_type != "image":  # ReDoc's footer logo is decorative
                refused.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(base_url=server.url)
        context.set_default_timeout(TIMEOUT_MS)
        context.route("**/*", only_the_server)
        yield context, refused
        browser.close()


def _vendor_missing(server: LiveServer, path: str) -> None:
    import httpx

    if httpx.get(f"{server.url}{path}", timeout=10).status_code == 503:
        pytest.skip("the API docs' npm packages are not installed (make assets)")


def test_swagger_ui_lists_the_operations_offline(
    offline: tuple[Any, list[str]], server: LiveServer
):
    context, refused = offline
    _vendor_missing(server, "/docs")
    page = context.new_page()
    page.goto("/docs")
    page.wait_for_selector(".opblock-summary-path")
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/api/v1/jobs" in p for p in paths), paths
    assert refused == []
    page.close()


def test_redoc_lists_the_operations_offline(offline: tuple[Any, list[str]], server: LiveServer):
    context, refused = offline
    _vendor_missing(server, "/redoc")
    page = context.new_page()
    page.goto("/redoc")
    page.wait_for_selector("[data-section-id^='operation/']")
    assert "jobyard" in page.title()
    assert page.locator("[data-section-id^='operation/']").count() > 10
    assert "/api/v1/jobs" in page.inner_text("body")
    assert refused == []
    page.close()
