"""User and token commands: `jobyard user add|list|remove`, `jobyard token create|list|revoke`.

`user add` and `token create` print the new token alone on their last line, so scripts can take
it with `tail -n1`; it is shown only then.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

import typer

from jobyard.cli import render
from jobyard.cli.options import JsonOpt
from jobyard.cli.session import open_client

user_app = typer.Typer(no_args_is_help=True, help="Manage users (admins only).")
token_app = typer.Typer(no_args_is_help=True, help="Manage API tokens.")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_expiry(text: str) -> tuple[float | None, datetime | None]:
    """`--expires`: a duration (90m, 12h, 30d, 2w, 3600s) or an ISO 8601 time (UTC if no zone).
    Returns (seconds from now, or a moment)."""
    match = _DURATION.match(text)
    if match:
        return float(match[1]) * _UNITS[match[2]], None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"expected a duration such as 12h or 30d, or an ISO time, got {text!r}",
            param_hint="--expires",
        ) from None
    return None, moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# ---- users ------------------------------------------------------------------------------------


@user_app.command("add")
def add_user(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="lower-case letters, digits, . _ -")],
    admin: Annotated[bool, typer.Option("--admin", help="make the user an admin")] = False,
) -> None:
    """Create a user and their first token (printed alone on the last line)."""
    made = open_client(ctx).create_user(name, admin=admin)
    render.note(f"user {made.name} created{' (admin)' if made.admin else ''}; token:")
    print(made.token)


@user_app.command("list")
def list_users(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List users."""
    users = open_client(ctx).list_users()
    if as_json:
        render.show_json([user.model_dump(mode="json") for user in users])
    else:
        render.show(render.users_table(users))


@user_app.command("remove")
def remove_user(ctx: typer.Context, name: Annotated[str, typer.Argument()]) -> None:
    """Remove a user and revoke their tokens (their jobs stay)."""
    open_client(ctx).remove_user(name)
    render.note(f"user {name} removed")


# ---- tokens -----------------------------------------------------------------------------------


@token_app.command("create")
def create_token(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option("--user", help="whose token (default: yours)")] = None,
    name: Annotated[str, typer.Option("--name", help="a label, e.g. laptop or ci")] = "",
    expires: Annotated[
        str | None,
        typer.Option("--expires", help="a duration (12h, 30d) or an ISO time; default: never"),
    ] = None,
) -> None:
    """Create an API token (printed alone on the last line; shown only this once)."""
    expires_in, expires_at = parse_expiry(expires) if expires else (None, None)
    made = open_client(ctx).create_token(
        user, name=name, expires_in=expires_in, expires_at=expires_at
    )
    until = f", expires {render.when(made.expires_at)}" if made.expires_at else ""
    render.note(f"token {made.id} for {made.user}{until}:")
    print(made.token)


@token_app.command("list")
def list_tokens(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option("--user", help="only this user's")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List tokens (yours; an admin sees everyone's). Never their values."""
    tokens = open_client(ctx).list_tokens(user)
    if as_json:
        render.show_json([token.model_dump(mode="json") for token in tokens])
    else:
        render.show(render.tokens_table(tokens))


@token_app.command("revoke")
def revoke_token(
    ctx: typer.Context, token_id: Annotated[int, typer.Argument(help="the id `token list` shows")]
) -> None:
    """Revoke a token: it stops working at once."""
    token = open_client(ctx).revoke_token(token_id)
    render.note(f"token {token.id} of {token.user} revoked")
