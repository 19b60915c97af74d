"""Where the server is and which token to use: argument, else environment, else defaults.

URL:   the `url` argument, else $JOBYARD_URL, else http://127.0.0.1:8000.
Token: the `token` argument, else $JOBYARD_TOKEN, else the admin token a local server wrote to
       $JOBYARD_HOME/admin.token (JOBYARD_HOME defaults to the per-user data directory, as the
       server's). No token at all is not an error here: the server answers 401.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

DEFAULT_URL = "http://127.0.0.1:8000"


def discover_url(url: str | None = None) -> str:
    return (url or os.environ.get("JOBYARD_URL") or DEFAULT_URL).rstrip("/")


def discover_token(token: str | None = None) -> str | None:
    return token or os.environ.get("JOBYARD_TOKEN") or _read_token(data_home() / "admin.token")


def data_home() -> Path:
    """The server's data directory, found the way the server finds it (without importing it)."""
    configured = os.environ.get("JOBYARD_HOME")
    return Path(configured or platformdirs.user_data_dir("jobyard", appauthor=False))


def _read_token(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:  # absent or unreadable: carry on without a token
        return None
