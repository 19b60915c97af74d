"""A real PostgreSQL server for the test session.

Fixtures:

* ``postgres_url`` (session): starts a throw-away PostgreSQL cluster (``initdb`` + ``pg_ctl``)
  on a free port of 127.0.0.1, creates one database and yields its SQLAlchemy URL
  (``postgresql://postgres@127.0.0.1:PORT/jobyard``). The cluster is stopped and its directory
  removed at the end of the session. Under pytest-xdist every worker gets its own cluster in its
  own temporary directory on its own port: nothing is shared by a fixed path or port.
* ``fresh_postgres_url`` (function): a new, uniquely named, empty database in that cluster for
  one test, dropped (``WITH (FORCE)``) afterwards.

The server binaries refuse to run as root; when the tests run as root they are run as the
``postgres`` OS user through ``runuser``. Tests are skipped when ``initdb`` is not on PATH.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "postgres"
_OS_USER = "postgres"  # who runs the server when the tests run as root
_START_ATTEMPTS = 3  # a free port may be taken between probing and binding it
_MIN_FREE = 1 << 30  # bytes a base directory must have free to hold a cluster
_INITDB_OPTIONS = (
    "--auth=trust",
    "--encoding=UTF8",
    "--locale=C",
    "--no-sync",
    "--no-instructions",
)
_CONFIG = """
# --- jobyard test cluster ---
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 100
shared_buffers = 32MB
max_wal_size = 256MB
log_min_messages = warning
"""


@dataclass
class PostgresCluster:
    """One running test cluster."""

    root: Path
    port: int
    run_as: list[str]

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database}"

    def pg(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.run_as, *argv],
            cwd=self.root,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=check,
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        self.pg("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w", check=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> list[str]:
    """The command prefix that runs a server binary as a user it accepts."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser") is None:
        pytest.skip("running as root and `runuser` is not available to start PostgreSQL")
    try:
        pwd.getpwnam(_OS_USER)
    except KeyError:
        pytest.skip(f"running as root and there is no {_OS_USER!r} OS user to run PostgreSQL")
    return ["runuser", "-u", _OS_USER, "--"]


def _base_dir() -> str | None:
    """Where the cluster lives: tmpfs when there is room (CREATE DATABASE is several times
    faster there even with fsync off), else /tmp. Short paths: a unix socket path must stay
    below ~107 bytes, which $TMPDIR (on macOS, say) may not."""
    for base in ("/dev/shm", "/tmp"):
        try:
            if os.access(base, os.W_OK | os.X_OK) and shutil.disk_usage(base).free > _MIN_FREE:
                return base
        except OSError:
            continue
    return None


def _make_root(run_as: list[str]) -> Path:
    root = Path(tempfile.mkdtemp(prefix="jobyard-pg-", dir=_base_dir()))
    root.chmod(0o755)
    if run_as:
        entry = pwd.getpwnam(_OS_USER)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    return root


def _start(cluster: PostgresCluster) -> None:
    data = str(cluster.data_dir)
    cluster.pg("initdb", "-D", data, "-U", SUPERUSER, *_INITDB_OPTIONS)
    for attempt in range(_START_ATTEMPTS):
        cluster.port = _free_port()
        config = cluster.data_dir / "postgresql.conf"
        text = config.read_text().split("\n# --- jobyard test cluster ---")[0]
        config.write_text(text + _CONFIG.format(port=cluster.port, socket_dir=cluster.root))
        log = str(cluster.log_file)
        started = cluster.pg(
            "pg_ctl", "start", "-D", data, "-l", log, "-w", "-t", "60", check=False
        )
        if started.returncode == 0:
            return
        cluster.stop()
        if attempt == _START_ATTEMPTS - 1:
            raise RuntimeError(
                f"PostgreSQL did not start (port {cluster.port}):\n{started.stdout}"
                f"{started.stderr}\n--- server log ---\n{cluster.log_tail()}"
            )


def _create_database(cluster: PostgresCluster, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _drop_database(cluster: PostgresCluster, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A running PostgreSQL cluster private to this test session (or xdist worker)."""
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not on PATH")
    run_as = _run_as()
    root = _make_root(run_as)
    cluster = PostgresCluster(root=root, port=0, run_as=run_as)
    try:
        try:
            _start(cluster)
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"initdb failed:\n{exc.stdout}{exc.stderr}") from None
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """SQLAlchemy URL of a database in the session's PostgreSQL cluster."""
    _create_database(postgres_cluster, "jobyard")
    return postgres_cluster.url("jobyard")


@pytest.fixture
def fresh_postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A new, empty database for one test; dropped (even with open connections) afterwards."""
    name = f"t_{uuid.uuid4().hex[:20]}"
    _create_database(postgres_cluster, name)
    try:
        yield postgres_cluster.url(name)
    finally:
        _drop_database(postgres_cluster, name)
