"""Where the server is and which token to use: argument, else environment, else local files.

URL:   the `url` argument, else $JOBYARD_URL, else http://127.0.0.1:$JOBYARD_PORT, else the URL a
       local server wrote to $JOBYARD_HOME/server.url once it listened, else
       http://127.0.0.1:8000. A file left by a server that is gone (the pid in server.lock
       beside it is not alive) is ignored. JOBYARD_PORT=0 (the server picks a free port)
       names no port here: the file does.
Token: the `token` argument, else $JOBYARD_TOKEN, else the admin token a local server wrote to
       $JOBYARD_HOME/admin.token (JOBYARD_HOME defaults to the per-user data directory, as the
       server's). No token at all is not an error here: the server answers 401.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from jobyard.client.errors import ClientError

DEFAULT_URL = "http://127.0.0.1:8000"
URL_FILE = "server.url"  # the names jobyard.server writes under its home
LOCK_FILE = "server.lock"


def discover_url(url: str | None = None) -> str:
    return url_and_origin(url)[0]


def url_and_origin(url: str | None = None) -> tuple[str, str]:
    """The URL and where it came from: 'argument', 'JOBYARD_URL', 'JOBYARD_PORT', the url
    file's path, or 'default'. ClientError for a JOBYARD_PORT that is not a port number."""
    if url:
        return url.rstrip("/"), "argument"
    if configured := os.environ.get("JOBYARD_URL"):
        return configured.rstrip("/"), "JOBYARD_URL"
    if port := _port_from_env():
        return f"http://127.0.0.1:{port}", "JOBYARD_PORT"
    if written := read_url_file(url_path()):
        return written, str(url_path())
    return DEFAULT_URL, "default"


def discover_token(token: str | None = None) -> str | None:
    return token_and_origin(token)[0]


def token_and_origin(token: str | None = None) -> tuple[str | None, str]:
    """The token and where it came from: 'argument', 'JOBYARD_TOKEN' or the token file's path
    (the path also when no token was found)."""
    if token:
        return token, "argument"
    if configured := os.environ.get("JOBYARD_TOKEN"):
        return configured, "JOBYARD_TOKEN"
    return _read_token(token_path()), str(token_path())


def data_home() -> Path:
    """The server's data directory, found the way the server finds it (without importing it)."""
    configured = os.environ.get("JOBYARD_HOME")
    return Path(configured or platformdirs.user_data_dir("jobyard", appauthor=False))


def token_path() -> Path:
    return data_home() / "admin.token"


def url_path() -> Path:
    return data_home() / URL_FILE


def read_url_file(path: Path) -> str | None:
    """The http(s) URL on the file's first line; None if absent, unreadable, not a URL, or
    left by a server that is gone."""
    try:
        first = path.read_text().strip().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    if not first or not first[0].startswith(("http://", "https://")):
        return None
    return first[0].rstrip("/") if _server_alive(path.with_name(LOCK_FILE)) else None


def _server_alive(lock: Path) -> bool:
    """Whether the process whose pid a server wrote to its lock file lives (True when there is
    no pid to read: the URL is then worth a try)."""
    try:
        pid = int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it lives
        return True
    return True


def _port_from_env() -> int | None:
    raw = os.environ.get("JOBYARD_PORT", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) > 65535:
        raise ClientError(f"JOBYARD_PORT must be a port number (0-65535), not {raw!r}")
    return int(raw) or None  # 0: the server chose its port; its url file says which


def _read_token(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:  # absent or unreadable: carry on without a token
        return None
