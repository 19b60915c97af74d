"""Registry logins: `jobyard registry login|list|logout`.

Your jobs' images from a registry are pulled with your login to it. The password is read from
stdin (`--password-stdin`) or asked for without echo, never taken from the command line (where
`ps` and the shell's history would show it), and never printed.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from jobyard.cli import render
from jobyard.cli.options import JsonOpt
from jobyard.cli.session import open_client

registry_app = typer.Typer(no_args_is_help=True, help="Manage your container registry logins.")

RegistryArg = Annotated[str, typer.Argument(help="the registry: host[:port], e.g. docker.io")]


@registry_app.command("login")
def login(
    ctx: typer.Context,
    registry: RegistryArg,
    username: Annotated[str, typer.Option("--username", "-u", help="your user at the registry")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from stdin")
    ] = False,
) -> None:
    """Store your login to a registry (replacing the one you had there) for your jobs' pulls."""
    if password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True)
    if not password:
        raise typer.BadParameter("the password is empty", param_hint="--password-stdin")
    saved = open_client(ctx).set_registry_credential(registry, username, password)
    render.note(f"login to {saved.registry} as {saved.username} stored")


@registry_app.command("list")
def list_logins(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List your registry logins: registry and username (never the password)."""
    found = open_client(ctx).list_registry_credentials()
    if as_json:
        render.show_json([item.model_dump(mode="json") for item in found])
    else:
        render.show(render.registries_table(found))


@registry_app.command("logout")
def logout(ctx: typer.Context, registry: RegistryArg) -> None:
    """Remove your login to a registry."""
    open_client(ctx).remove_registry_credential(registry)
    render.note(f"login to {registry} removed")
