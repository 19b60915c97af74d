"""One invocation's link to the server: the global --url/--token, a Client closed on exit, and
SDK errors turned into one `error: ...` line and exit status 1 (never a traceback)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import typer
from typer.core import TyperGroup

from jobyard.client import ApiError, Client, ClientError, ServerUnreachable

_AUTH_HINT = (
    "pass --token or set JOBYARD_TOKEN (a local server's admin token is read from "
    "$JOBYARD_HOME/admin.token)"
)


@dataclass(frozen=True)
class Target:
    """The global options; None lets the SDK discover the value (environment, then defaults)."""

    url: str | None = None
    token: str | None = None


def open_client(ctx: typer.Context) -> Client:
    """A Client for this command, closed when the command's context closes."""
    target = ctx.find_object(Target) or Target()
    client = Client(target.url, target.token)
    ctx.call_on_close(client.close)
    return client


def describe(exc: ClientError) -> str:
    """The one line a user sees for an SDK error."""
    if isinstance(exc, ApiError):
        text = exc.message
        if exc.field and not text.startswith(f"{exc.field}:"):
            text += f" (field: {exc.field})"
        return f"{text}; {_AUTH_HINT}" if exc.status == 401 else text
    if isinstance(exc, ServerUnreachable):
        return f"{exc}; is `jobyard server` running? (set --url or JOBYARD_URL)"
    return str(exc)


def _fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` on stderr; raise the returned Exit."""
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


class ReportingGroup(TyperGroup):
    """The root command group: runs a command and reports SDK errors the same way for all."""

    # Any: the parameter is typer's vendored click Context, which typer does not export.
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ClientError as exc:
            raise _fail(describe(exc)) from None
