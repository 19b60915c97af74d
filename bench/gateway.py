"""Interactive access through the gateway (docs/access.md), against a direct connection.

One job declares an SSH port and an HTTP port, and serves a 100 MB file and a small one from
its directory with Python's threading HTTP/1.1 server on its declared port.

- SSH login-to-prompt: asyncssh connects with the job's password, opens a shell with a
  terminal, and waits for its first output (the prompt); p50 of 10 logins. Also `ssh job true`.
  The job's HOME has no .bashrc (a user's own, e.g. `pyenv init`, can add a second).
- HTTP throughput: the 100 MB file over one connection (a raw socket reader, so the client is
  cheap), through the proxy and directly, alternated 9 times; the best of each; goal: >= 80 %
  of direct.
- Added latency: p50 of 300 GETs of a 10-byte file on one keep-alive connection, through the
  proxy minus directly; goal: <= 2 ms. Also p50 with a new connection per request.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

import httpx

from bench.report import Result, at_least, at_most, info, percentile
from bench.server import free_port

if TYPE_CHECKING:
    from bench.scenarios import Options

BIG = 100 * 1000 * 1000
ROUNDS = 9  # downloads each way: a 100 MB one takes well under 0.1 s here, so the best of many
SERVE = f"""
import http.server, os
os.system("head -c {BIG} /dev/zero > big.bin; printf 0123456789 > small.txt")
class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def _api(server: Any) -> httpx.Client:
    target = server.target
    return httpx.Client(
        base_url=f"http://{target.host}:{target.port}",
        headers={"Authorization": f"Bearer {target.token}"},
        timeout=30,
    )


def _start_job(server: Any, http_port: int) -> dict[str, Any]:
    ports = [{"port": free_port(), "protocol": "ssh"}, {"port": http_port, "protocol": "http"}]
    with _api(server) as api:
        # HOME without a .bashrc: the figure is the gateway's, not this machine's shell setup.
        env = {"HOME": "/nonexistent-jobyard-bench-home"}
        body = {"entrypoint": [sys.executable, "-c", SERVE], "ports": ports, "env": env}
        job = api.post("/api/v1/jobs", json=body).json()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found: dict[str, Any] = api.get(f"/api/v1/jobs/{job['id']}/access").json()
            if len(found.get("urls", {})) == 2 and _fetch_ok(http_port, "/small.txt"):
                return found
            time.sleep(0.05)
    raise RuntimeError("the bench job did not come up with its two URLs in 60 s")


def _fetch_ok(port: int, path: str) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _download(port: int, headers: str) -> float:
    """Seconds to read the big file (HTTP/1.0, the server closes at the end)."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"GET /big.bin HTTP/1.0\r\nHost: x\r\n{headers}\r\n".encode())
        total = 0
        while n := sock.recv_into(view):
            total += n
    elapsed = time.perf_counter() - started
    if total < BIG:
        raise RuntimeError(f"download ended after {total} bytes")
    return elapsed


def _get_small(sock: socket.socket, headers: str) -> None:
    sock.sendall(f"GET /small.txt HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
    data = b""
    while not data.endswith(b"0123456789"):
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"GET /small.txt: connection closed after {data[:100]!r}")
        data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"GET /small.txt: {data[:100]!r}")


def _keepalive_p50(port: int, headers: str, requests: int) -> float:
    """p50 of GETs of the small file, one after another on one keep-alive connection."""
    times = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(20):
            _get_small(sock, headers)
        for _ in range(requests):
            started = time.perf_counter()
            _get_small(sock, headers)
            times.append(time.perf_counter() - started)
    return percentile(times, 0.5)


def _fresh_p50(port: int, headers: str, requests: int) -> float:
    """p50 of GETs of the small file with a new connection each (connect included)."""
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _get_small(sock, headers)
        times.append(time.perf_counter() - started)
    return percentile(times, 0.5)


async def _ssh_times(port: int, user: str, password: str, logins: int) -> tuple[float, float]:
    import asyncssh

    prompt, command = [], []
    for _ in range(logins):
        started = time.perf_counter()
        async with asyncssh.connect(
            "127.0.0.1", port, username=user, password=password, known_hosts=None,
            client_keys=None, agent_path=None,
        ) as conn:  # fmt: skip
            process = await conn.create_process(term_type="xterm", term_size=(80, 24))
            await asyncio.wait_for(process.stdout.read(1), 30)
            prompt.append(time.perf_counter() - started)
            process.stdin.write("exit\n")
            await process.wait()
        started = time.perf_counter()
        async with asyncssh.connect(
            "127.0.0.1", port, username=user, password=password, known_hosts=None,
            client_keys=None, agent_path=None,
        ) as conn:  # fmt: skip
            await conn.run("true", check=True)
        command.append(time.perf_counter() - started)
    return percentile(prompt, 0.5), percentile(command, 0.5)


def gateway(options: Options) -> list[Result]:
    low = random.randrange(30000, 59000)
    settings = {"gateway_port_range": f"{low}-{low + 99}", "gateway_sweep_seconds": "0.1"}
    http_port = free_port()
    requests, logins = (100, 5) if options.quick else (300, 10)
    with options.server("gateway", **settings) as server:
        found = _start_job(server, http_port)
        urls = {key: value[0] for key, value in found["urls"].items()}
        proxy = int(httpx.URL(urls[f"port_{http_port}"]).port or 0)
        ssh = int(httpx.URL(next(u for u in urls.values() if u.startswith("ssh"))).port or 0)
        bearer = f"Authorization: Bearer {found['token']}\r\n"
        # Alternated, so that the machine's other load falls on both alike.
        pairs = [(_download(http_port, ""), _download(proxy, bearer)) for _ in range(ROUNDS)]
        direct_s, proxied_s = min(p[0] for p in pairs), min(p[1] for p in pairs)
        direct_p50 = _keepalive_p50(http_port, "", requests)
        proxied_p50 = _keepalive_p50(proxy, bearer, requests)
        direct_new = _fresh_p50(http_port, "", requests // 3)
        proxied_new = _fresh_p50(proxy, bearer, requests // 3)
        prompt, command = asyncio.run(
            _ssh_times(ssh, found["ssh"]["user"], found["ssh"]["password"], logins)
        )
    direct_mb, proxied_mb = BIG / direct_s / 1e6, BIG / proxied_s / 1e6
    added = (proxied_p50 - direct_p50) * 1000
    fresh, direct_fresh = (proxied_new - direct_new) * 1000, f"direct {direct_new * 1000:.2f} ms"
    return [
        info("gateway", "SSH login to prompt p50", prompt * 1000, "ms", f"{logins} logins"),
        info("gateway", "SSH `true` (connect, auth, run) p50", command * 1000, "ms"),
        info("gateway", "HTTP 100 MB direct", direct_mb, "MB/s", f"best of {ROUNDS}, alternated"),
        info(
            "gateway",
            "HTTP 100 MB through the proxy",
            proxied_mb,
            "MB/s",
            f"best of {ROUNDS}, alternated",
        ),
        at_least("gateway", "proxy throughput / direct", proxied_mb / direct_mb * 100, "%", 80),
        info("gateway", "GET p50 direct (keep-alive)", direct_p50 * 1000, "ms", f"{requests}"),
        at_most("gateway", "GET p50 added by the proxy (keep-alive)", added, "ms", 2),
        info("gateway", "GET p50 added, new connection each", fresh, "ms", direct_fresh),
    ]


if __name__ == "__main__":  # python -m bench.gateway: this scenario alone, as JSON
    from bench.scenarios import Options as _Options

    print(json.dumps([r.__dict__ for r in gateway(_Options())], indent=2))
