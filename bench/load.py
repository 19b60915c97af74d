"""Load generators: wrk (C, cheap: measures the server) when installed, else httpx processes."""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

_LUA = 'wrk.method = "POST"\nwrk.body = {body}\nwrk.headers["Content-Type"] = "application/json"\n'


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def wrk_post(url: str, token: str, body: dict[str, object], clients: int, seconds: float) -> float:
    """Requests/s of `clients` keep-alive connections POSTing `body` for `seconds`; checks 2xx."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(_LUA.format(body=json.dumps(json.dumps(body))))
        out = subprocess.run(
            [
                "wrk",
                f"-t{min(clients, 2)}",
                f"-c{clients}",
                f"-d{seconds}s",
                "-s",
                str(script),
                "-H",
                f"Authorization: Bearer {token}",
                url,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return float(match.group(1))


def _client_loop(args: tuple[str, str, dict[str, object], float]) -> float:
    url, token, body, seconds = args
    done = 0
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            http.post(url, json=body).raise_for_status()
            done += 1
        return done / (time.monotonic() - started)


def httpx_post(
    url: str, token: str, body: dict[str, object], clients: int, seconds: float
) -> float:
    """Requests/s of `clients` processes, each one httpx.Client POSTing in a loop."""
    with multiprocessing.get_context("spawn").Pool(clients) as pool:
        return sum(pool.map(_client_loop, [(url, token, body, seconds)] * clients))
