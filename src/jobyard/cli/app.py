"""The Typer app: global options, the `server` command, and the job commands of `jobs.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jobyard.cli import access, admin, jobs, registries, scheduling, usage
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
        typer.Option(
            help="server URL (default: $JOBYARD_URL, else http://127.0.0.1:$JOBYARD_PORT, else "
            "the one in $JOBYARD_HOME/server.url, else http://127.0.0.1:8000)"
        ),
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
    host: Annotated[
        str | None, typer.Option(help="address to bind [default: 127.0.0.1, or JOBYARD_HOST]")
    ] = None,
    port: Annotated[int | None, typer.Option(help="port [default: 8000, or JOBYARD_PORT]")] = None,
    home: Annotated[Path | None, typer.Option(help="data directory (default: per-user)")] = None,
    ray_port: Annotated[
        int | None,
        typer.Option(help="port of the Ray job API; 0: off [default: 8265, or JOBYARD_RAY_PORT]"),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="API processes sharing the ports "
            "[default: 1 on SQLite, the number of cores on PostgreSQL, or JOBYARD_WORKERS]"
        ),
    ] = None,
) -> None:
    """Start the jobyard server (SQLite and the local executor unless configured)."""
    # The server's dependencies load only for this command.
    from pydantic import ValidationError

    from jobyard.config import Settings
    from jobyard.errors import JobyardError
    from jobyard.server import serve

    # Only options given on the command line override JOBYARD_* variables and the TOML file.
    given = {"host": host, "port": port, "home": home, "ray_port": ray_port, "workers": workers}
    try:
        settings = Settings(**{k: v for k, v in given.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        for problem in exc.errors():
            where = ".".join(str(p) for p in problem["loc"])
            # a check across settings has no loc; its message names them
            message = str(problem["msg"]).removeprefix("Value error, ")
            typer.echo(
                f"error: setting {where}: {message}" if where else f"error: {message}", err=True
            )
        raise typer.Exit(2) from None
    except ValueError as exc:  # e.g. JOBYARD_CONFIG names no file
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        serve(settings)
    except JobyardError as exc:  # e.g. another server holds this data directory
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None


# After `submit`'s first argument, everything belongs to the job's command (`--` optional).
app.command(context_settings={"allow_interspersed_args": False})(jobs.submit)
app.command("list")(jobs.list_jobs)
app.command()(jobs.status)
app.command()(jobs.logs)
app.command()(jobs.stop)
app.command()(jobs.delete)
app.command()(jobs.wait)
app.command()(jobs.events)
app.command()(usage.metrics)
app.command(context_settings={"allow_interspersed_args": False})(access.ssh)
app.command("port-forward")(access.port_forward)
app.command()(scheduling.pools)
app.command()(scheduling.queues)
app.add_typer(admin.user_app, name="user")
app.add_typer(admin.token_app, name="token")
app.add_typer(registries.registry_app, name="registry")


def main() -> None:
    app()
