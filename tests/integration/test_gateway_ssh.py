"""The SSH gateway with real clients (asyncssh; OpenSSH's ssh/scp when installed)."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest

from tests.helpers import LiveServer, wait_for
from tests.integration.gateway_support import (
    access_of,
    free_port,
    gateway_port,
    gateway_server,
    stop_and_wait_closed,
    submit,
)

PREPARE = "echo checkpoint-bytes > model.ckpt; mkdir -p out; echo nested > out/n.txt; sleep 120"


def _connect(port: int, user: str, **options: Any) -> Any:
    options.setdefault("known_hosts", None)
    return asyncssh.connect(
        "127.0.0.1", port, username=user, client_keys=options.pop("client_keys", None), **options
    )


def _job_with_ssh(server: LiveServer, extra: list[dict[str, Any]] | None = None) -> Any:
    with server.client() as http:
        job = submit(http, PREPARE, [{"port": free_port(), "protocol": "ssh"}, *(extra or [])])
    server.wait_state(job["id"], "RUNNING")
    found = access_of(server, job)
    ssh_url = next(u[0] for u in found["urls"].values() if u[0].startswith("ssh://"))
    return job, found, gateway_port(ssh_url)


def test_commands_shells_and_files_through_the_gateway(home: Path) -> None:
    with gateway_server(home) as server:
        job, found, port = _job_with_ssh(server)
        user, password = found["ssh"]["user"], found["ssh"]["password"]
        assert user == job["display_id"] and password

        async def session() -> None:
            known = asyncssh.import_known_hosts(f"[127.0.0.1]:{port} {found['ssh']['host_key']}")
            async with _connect(port, user, password=password, known_hosts=known) as conn:
                result = await conn.run("echo $JOBYARD_JOB_ID; pwd", check=False)
                job_id, cwd = str(result.stdout).split()
                assert (job_id, result.exit_status) == (str(job["id"]), 0)
                assert cwd.endswith(f"/jobs/{job['id']}")
                assert (await conn.run("exit 7", check=False)).exit_status == 7
                piped = await conn.run("wc -c", input="12345", check=False)
                assert str(piped.stdout).strip() == "5"

                # An interactive shell with a terminal: a prompt, then our command's output.
                proc = await conn.create_process(term_type="xterm", term_size=(100, 30))
                proc.stdin.write("stty size; echo answer=$((6*7)); exit 3\n")
                out = await asyncio.wait_for(proc.stdout.read(), 15)
                status = await asyncio.wait_for(proc.wait(), 15)
                assert "30 100" in out and "answer=42" in out
                assert status.exit_status == 3
                tty = await conn.run("tty", term_type="xterm", check=False)
                assert str(tty.stdout).startswith("/dev/pts/")
                lots = await conn.run("seq 1 200000", term_type="xterm", check=False)
                assert str(lots.stdout).split() == [str(i) for i in range(1, 200001)]

                async with conn.start_sftp_client() as sftp:
                    async with sftp.open("model.ckpt", "rb") as f:
                        assert await f.read() == b"checkpoint-bytes\n"
                    assert sorted(await sftp.listdir("/out")) == [".", "..", "n.txt"]
                    assert not await sftp.exists("/etc/passwd")  # chrooted to the job's dir

        asyncio.run(session())
        with server.client() as http:
            events = http.get(f"/api/v1/jobs/{job['id']}/events").json()["items"]
        sessions = [e for e in events if e["reason"] == "SSHSession"]
        assert sessions and f"as {user}" in sessions[0]["message"]
        assert all(password not in e["message"] for e in events)


def test_wrong_passwords_and_other_jobs_passwords_are_refused(home: Path) -> None:
    with gateway_server(home) as server:
        job, found, port = _job_with_ssh(server)
        other, other_found, other_port = _job_with_ssh(server)
        user = job["display_id"]

        async def refused(**login: Any) -> None:
            with pytest.raises(asyncssh.PermissionDenied):
                async with _connect(port, **login):
                    pass

        async def attempts() -> None:
            await refused(user=user, password="wrong")
            await refused(user=user, password=other_found["ssh"]["password"])
            await refused(user=other["display_id"], password=other_found["ssh"]["password"])
            await refused(user="root", password=found["ssh"]["password"])  # names no task
            await refused(user=user, client_keys=[asyncssh.generate_private_key("ssh-ed25519")])

        asyncio.run(attempts())
        with server.client() as http:
            events = http.get(f"/api/v1/jobs/{job['id']}/events").json()["items"]
        assert not [e for e in events if e["reason"] == "SSHSession"]  # no session was opened
        stop_and_wait_closed(server, other, [other_port])


def test_forwarding_reaches_only_the_jobs_own_ports(home: Path) -> None:
    with gateway_server(home) as server:
        target = free_port()
        script = f"python3 -m http.server {target} --bind 127.0.0.1"
        with server.client() as http:
            job = submit(
                http,
                script,
                [{"port": free_port(), "protocol": "ssh"}, {"port": target, "protocol": "http"}],
            )
        server.wait_state(job["id"], "RUNNING")
        found = access_of(server, job)
        port = gateway_port(found["urls"][f"port_{job['spec']['ports'][0]['port']}"][0])
        api_port = int(server.url.rsplit(":", 1)[1])

        async def forward() -> None:
            async with _connect(port, job["display_id"], password=found["ssh"]["password"]) as c:

                async def fetch() -> bytes:
                    reader, writer = await c.open_connection("127.0.0.1", target)
                    writer.write(b"GET / HTTP/1.0\r\n\r\n")
                    data: bytes = await reader.read()
                    writer.close()
                    return data

                data = b""
                for _ in range(100):  # the job's server may still be starting
                    try:
                        data = await fetch()
                        break
                    except asyncssh.ChannelOpenError:
                        await asyncio.sleep(0.1)
                assert data.startswith(b"HTTP/1.0 200")
                for host, other in (("127.0.0.1", api_port), ("10.0.0.1", target)):
                    with pytest.raises(asyncssh.ChannelOpenError):
                        await c.open_connection(host, other)

        asyncio.run(forward())


def test_registered_public_keys_open_the_owners_jobs(home: Path) -> None:
    with gateway_server(home) as server:
        key = asyncssh.generate_private_key("ssh-ed25519")
        public = key.export_public_key().decode()
        with server.client() as http:
            bad = http.post("/api/v1/keys", json={"name": "x", "public_key": "ssh-rsa nope"})
            assert bad.status_code in (400, 422) and "public_key" in bad.text
            added = http.post("/api/v1/keys", json={"name": "laptop", "public_key": public})
            assert added.status_code == 201, added.text
            assert added.json()["fingerprint"].startswith("SHA256:")
            assert [k["name"] for k in http.get("/api/v1/keys").json()["items"]] == ["laptop"]
        job, _, port = _job_with_ssh(server)

        async def login() -> str:
            async with _connect(port, f"{job['display_id']}-worker-0", client_keys=[key]) as c:
                return str((await c.run("echo $JOBYARD_TASK_NAME", check=True)).stdout).strip()

        assert asyncio.run(login()) == f"{job['display_id']}-worker-0"
        with server.client() as http:
            key_id = added.json()["id"]
            assert http.delete(f"/api/v1/keys/{key_id}").status_code == 204
            assert http.delete(f"/api/v1/keys/{key_id}").status_code == 404
        with pytest.raises(asyncssh.PermissionDenied):
            asyncio.run(login())


def test_sessions_end_when_the_job_ends(home: Path) -> None:
    with gateway_server(home) as server:
        job, found, port = _job_with_ssh(server)

        async def hold_then_stop() -> int | None:
            async with _connect(port, job["display_id"], password=found["ssh"]["password"]) as c:
                proc = await c.create_process("sleep 600")
                await asyncio.to_thread(stop_and_wait_closed, server, job, [port])
                await asyncio.wait_for(c.wait_closed(), 10)
                return proc.exit_status

        asyncio.run(hold_then_stop())
        with server.client() as http:
            assert http.get(f"/api/v1/jobs/{job['id']}/access").json()["urls"] == {}


@pytest.mark.skipif(
    not (shutil.which("ssh") and shutil.which("scp") and shutil.which("sshpass")),
    reason="needs OpenSSH ssh/scp and sshpass (apt-get install openssh-client sshpass)",
)
def test_openssh_clients_log_in_and_copy_files(home: Path, tmp_path: Path) -> None:
    with gateway_server(home) as server:
        job, found, port = _job_with_ssh(server)
        known = tmp_path / "known_hosts"
        known.write_text(f"[127.0.0.1]:{port} {found['ssh']['host_key']}\n")
        common = ["-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes"]
        common += ["-o", "PubkeyAuthentication=no", "-o", "BatchMode=no"]
        env = {**os.environ, "SSHPASS": found["ssh"]["password"]}
        user = job["display_id"]
        login = ["-p", str(port), f"{user}@127.0.0.1"]
        out = subprocess.run(
            ["sshpass", "-e", "ssh", *common, *login, "echo $JOBYARD_JOB_ID"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == str(job["id"])
        for mode in ([], ["-O"]):  # SFTP (OpenSSH 9's default), then the legacy scp protocol
            copy = tmp_path / f"copy{len(mode)}.ckpt"
            source = f"{user}@127.0.0.1:model.ckpt"
            scp = subprocess.run(
                ["sshpass", "-e", "scp", *mode, *common, "-P", str(port), source, str(copy)],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert scp.returncode == 0, scp.stderr
            assert copy.read_bytes() == b"checkpoint-bytes\n"


def _cli(server: LiveServer, *args: str, **options: Any) -> Any:
    env = {**os.environ, "JOBYARD_URL": server.url, "JOBYARD_TOKEN": server.token}
    command = [str(Path(sys.executable).parent / "jobyard"), *args]
    return subprocess.Popen(command, env=env, **options)


def test_cli_ssh_runs_commands_and_port_forward_reaches_the_jobs_port(home: Path) -> None:
    with gateway_server(home) as server:
        target = free_port()
        with server.client() as http:
            job = submit(
                http,
                f"echo served > page.txt; exec python3 -m http.server {target} --bind 127.0.0.1",
                [{"port": free_port(), "protocol": "ssh"}, {"port": target, "protocol": "http"}],
            )
        server.wait_state(job["id"], "RUNNING")
        access_of(server, job)
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        command = "echo $JOBYARD_JOB_ID; exit 4"
        run = _cli(
            server, "ssh", job["display_id"], "--", command, stdin=subprocess.DEVNULL, **pipes
        )
        out, err = run.communicate(timeout=60)
        assert (run.returncode, out.decode().strip()) == (4, str(job["id"])), err

        local = free_port()
        forward = _cli(
            server, "port-forward", str(job["id"]), str(target), "--local-port", str(local)
        )
        try:

            def fetched() -> str | None:
                try:
                    response = httpx.get(f"http://127.0.0.1:{local}/page.txt", timeout=2)
                except httpx.HTTPError:
                    return None
                return response.text if response.status_code == 200 else None

            assert wait_for(fetched, timeout=30) == "served\n"
        finally:
            forward.terminate()
            forward.wait(timeout=30)

        refused = _cli(server, "ssh", "no-such-job", "--", "true", **pipes)
        _, err = refused.communicate(timeout=60)
        assert refused.returncode == 1 and b"not found" in err


def test_the_user_name_names_the_task_of_a_multi_replica_job(home: Path) -> None:
    with gateway_server(home) as server:
        with server.client() as http:
            body = {
                "entrypoint": "sleep 120",
                "replicas": 2,
                "ports": [{"port": free_port(), "protocol": "ssh"}],
            }
            job = http.post("/api/v1/jobs", json=body).json()
        server.wait_state(job["id"], "RUNNING")
        found = access_of(server, job)
        port = gateway_port(next(iter(found["urls"].values()))[0])
        display, password = job["display_id"], found["ssh"]["password"]

        async def index_as(user: str) -> str:
            async with _connect(port, user, password=password) as conn:
                return str((await conn.run("echo $JOBYARD_TASK_INDEX", check=True)).stdout)

        async def names() -> list[str]:
            users = [display, f"{display}-worker-0", f"{display}-worker-1", "1"]
            return [(await index_as(user)).strip() for user in users]

        assert asyncio.run(names()) == ["0", "0", "1", "1"]
        with pytest.raises(asyncssh.PermissionDenied):
            asyncio.run(index_as(f"{display}-worker-7"))


def test_cli_ssh_opens_an_interactive_shell_with_a_terminal(home: Path) -> None:
    with gateway_server(home) as server:
        job, _, _ = _job_with_ssh(server)
        env = {**os.environ, "JOBYARD_URL": server.url, "JOBYARD_TOKEN": server.token}
        env["HOME"] = str(home / "no-such-home")  # no ~/.bashrc of this machine's user
        pid, fd = pty.fork()
        if pid == 0:  # pragma: no cover - the child
            cli = str(Path(sys.executable).parent / "jobyard")
            os.execve(cli, [cli, "ssh", job["display_id"]], env)
        out = bytearray()

        def read_until(marker: bytes) -> bool:
            while select.select([fd], [], [], 0.1)[0]:
                try:
                    out.extend(os.read(fd, 65536))
                except OSError:
                    break
            return marker in out

        # The prompt first: the CLI puts the terminal in raw mode (dropping what was typed).
        assert wait_for(lambda: read_until(b"$ ") or b"# " in out, timeout=30)
        os.write(fd, b"echo in=$((7*6)); tty; exit 5\r")
        assert wait_for(lambda: read_until(b"/dev/pts/"), timeout=30)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        assert b"in=42" in out and os.waitstatus_to_exitcode(status) == 5
