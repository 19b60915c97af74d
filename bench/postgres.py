"""A throw-away PostgreSQL cluster for a scenario (initdb + pg_ctl on a free loopback port; as
the `postgres` OS user when run as root), and fresh databases in it."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench.server import free_port

_CONFIG = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{root}'
max_connections = 300
shared_buffers = 128MB
"""


@dataclass
class Cluster:
    root: Path
    port: int
    run_as: list[str]

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a new, empty database."""
        name = f"b_{uuid.uuid4().hex[:16]}"
        conninfo = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pg(self, *argv: str) -> None:
        subprocess.run(
            [*self.run_as, *argv], cwd=self.root, check=True, capture_output=True, timeout=120
        )


def available() -> bool:
    return shutil.which("initdb") is not None and shutil.which("pg_ctl") is not None


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    """A running cluster (fsync on: the figures are those of a durable setup); removed after."""
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="jobyard-bench-pg-"))
    root.chmod(0o755)
    if run_as:
        entry = pwd.getpwnam("postgres")
        os.chown(root, entry.pw_uid, entry.pw_gid)
    found = Cluster(root, free_port(), run_as)
    data = str(root / "data")
    try:
        found.pg("initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-instructions")
        with (root / "data" / "postgresql.conf").open("a") as conf:
            conf.write(_CONFIG.format(port=found.port, root=root))
        found.pg("pg_ctl", "start", "-D", data, "-l", str(root / "log"), "-w", "-t", "60")
        yield found
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            found.pg("pg_ctl", "stop", "-D", data, "-m", "immediate", "-w")
        shutil.rmtree(root, ignore_errors=True)
