"""The Typer app and its commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="jobyard: run and watch jobs.")


@app.callback()
def _root() -> None:
    """jobyard: submit jobs, watch their logs, stop them."""


@app.command()
def server(
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to bind")] = 8000,
    home: Annotated[Path | None, typer.Option(help="data directory (default: per-user)")] = None,
) -> None:
    """Start the jobyard server (SQLite and the local executor unless configured)."""
    from jobyard.config import Settings  # the server's dependencies load only for this command
    from jobyard.server import serve

    overrides: dict[str, object] = {"host": host, "port": port}
    if home is not None:
        overrides["home"] = home
    serve(Settings(**overrides))  # type: ignore[arg-type]


def main() -> None:
    app()
