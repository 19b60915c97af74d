"""Where the dashboard's files come from: its own static files, and the npm packages' dist
files (xterm.js; uPlot for the usage charts; Swagger UI and ReDoc for the API docs) served
straight from `web/node_modules` (installed by `make assets`)."""

from __future__ import annotations

import os
from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
# src/jobyard/web/assets.py -> the repository root (an editable install, as `make run` makes).
_REPO_ROOT = Path(__file__).resolve().parents[3]

# URL name -> (npm package, file inside it, media type). Nothing else is served from there.
VENDOR_FILES: dict[str, tuple[str, str, str]] = {
    "xterm.js": ("@xterm/xterm", "lib/xterm.js", "text/javascript"),
    "xterm.css": ("@xterm/xterm", "css/xterm.css", "text/css"),
    "addon-fit.js": ("@xterm/addon-fit", "lib/addon-fit.js", "text/javascript"),
    "swagger-ui-bundle.js": ("swagger-ui-dist", "swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": ("swagger-ui-dist", "swagger-ui.css", "text/css"),
    "swagger-favicon.png": ("swagger-ui-dist", "favicon-32x32.png", "image/png"),
    "redoc.standalone.js": ("redoc", "bundles/redoc.standalone.js", "text/javascript"),
    "uPlot.iife.min.js": ("uplot", "dist/uPlot.iife.min.js", "text/javascript"),
    "uPlot.min.css": ("uplot", "dist/uPlot.min.css", "text/css"),
}
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}


def node_modules() -> Path:
    """`JOBYARD_WEB_MODULES` if set, else the repository's `web/node_modules`."""
    return Path(os.environ.get("JOBYARD_WEB_MODULES") or _REPO_ROOT / "web" / "node_modules")


def vendor_file(name: str) -> tuple[Path, str] | None:
    entry = VENDOR_FILES.get(name)
    if entry is None:
        return None
    path = node_modules() / entry[0] / entry[1]
    return (path, entry[2]) if path.is_file() else None


def static_file(name: str) -> tuple[Path, str] | None:
    """One of our own files by plain name (no directories, so no way out of STATIC_DIR)."""
    media = STATIC_TYPES.get(Path(name).suffix)
    if media is None or "/" in name or name.startswith("."):
        return None
    path = STATIC_DIR / name
    return (path, media) if path.is_file() else None


def page(name: str) -> str:
    return (STATIC_DIR / name).read_text(encoding="utf-8")
