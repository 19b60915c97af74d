"""Contract fuzzing: schemathesis against the OpenAPI of a live server (the main app's faces,
and the Ray listener's), with a fixed seed and a bounded budget. No answer may be a 5xx, and
every answer, its status included, must conform to the schema the server publishes.

No fuzzed job ever runs: every queue holds its jobs (max_running_jobs = 0)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobyard.config import QueueSpec
from tests.helpers import LiveServer, make_settings, running_server

pytestmark = pytest.mark.slow
EXAMPLES = int(os.environ.get("JOBYARD_FUZZ_EXAMPLES", "8"))
# Every status answered must be declared (each face's routes declare their errors).
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "response_schema_conformance",
        "content_type_conformance",
    ]
)
# Revoking the fuzzer's own token would end the run's authentication: tested elsewhere.
EXCLUDE = ["--exclude-path-regex", r"^/api/v1/tokens/\{token_id\}$"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("fuzz") / "home"
    held = [QueueSpec(name=name, max_running_jobs=0) for name in ("default", "gpu", "batch")]
    with running_server(make_settings(home, queues=held), ray=True) as live:
        yield live


def _schemathesis(url: str, token: str, report: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert binary, "schemathesis is not installed (pip install -e '.[test]')"
    command = [
        binary,
        "run",
        f"{url}/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        CHECKS,
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        "8",
        "--request-timeout",
        "20",
        "--phases",
        "examples,coverage,fuzzing",
        "--suppress-health-check",
        "all",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
        *EXCLUDE,
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=400, env=env, cwd=report.parent
    )


@pytest.mark.timeout(480)
@pytest.mark.parametrize("listener", ["main", "ray"])
def test_fuzzing_finds_no_5xx_and_no_answer_off_the_schema(
    server: LiveServer, tmp_path: Path, listener: str
) -> None:
    url = server.ray_url if listener == "ray" else server.url
    result = _schemathesis(url, server.token, tmp_path / "junit.xml")
    output = result.stdout + result.stderr
    print(output[-1200:])
    assert result.returncode == 0, output[-6000:]
    assert "No issues found" in output or "passed" in output, output[-3000:]
