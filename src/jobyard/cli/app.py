"""The Typer app: global options, the `server` command, and the job commands of `jobs.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jobyard.cli import jobs
from jobyard.cli.session import ReportingGroup, Target

app = typer.Typer(
    cls=ReportingGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="jobyard: run and watch jobs.",
)


@app.callback()
def _root(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(help="server URL (default: $JOBYARD_URL, else http://127.0.0.1:8000)"),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(help="API token (default: $JOBYARD_TOKEN, else $JOBYARD_HOME/admin.token)"),
    ] = None,
) -> None:
    """jobyard: submit jobs, watch their logs, stop them."""
    ctx.obj = Target(url, token)


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


# After `submit`'s first argument, everything belongs to the job's command (`--` optional).
app.command(context_settings={"allow_interspersed_args": False})(jobs.submit)
app.command("list")(jobs.list_jobs)
app.command()(jobs.status)
app.command()(jobs.logs)
app.command()(jobs.stop)
app.command()(jobs.delete)
app.command()(jobs.wait)
app.command()(jobs.events)


def main() -> None:
    app()
