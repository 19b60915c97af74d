"""One invocation's link to the server: the global --url/--token, a Client closed on exit, and
SDK errors turned into one `error: ...` line in the command's own terms and exit status 1
(never a traceback)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import typer
from typer.core import TyperGroup

from jobyard.client import ApiError, Client, ClientError, ServerUnreachable
from jobyard.client.discovery import token_and_origin, url_and_origin, url_path

_COMMAND = "jobyard.command"  # ctx.meta key: the command that opened the client
# API field names that a command's option spells differently.
_FIELD_OPTIONS = {"labels": "label", "working_dir": "workdir"}
_FORCE_PHRASES = ("delete with force=true", "force=true")


class _Param(Protocol):
    name: str | None
    opts: list[str]
    param_type_name: str


class _Command(Protocol):
    """What errors need of a (typer-vendored) click command: its parameters."""

    @property
    def params(self) -> Sequence[_Param]: ...


@dataclass(frozen=True)
class Target:
    """The global options; None lets the SDK discover the value (environment, then files)."""

    url: str | None = None
    token: str | None = None


def open_client(ctx: typer.Context) -> Client:
    """A Client for this command, closed when the command's context closes."""
    ctx.meta[_COMMAND] = ctx.command  # errors are told in this command's options
    target = ctx.find_object(Target) or Target()
    client = Client(target.url, target.token)
    ctx.call_on_close(client.close)
    return client


def describe(exc: ClientError, command: _Command | None = None, target: Target = Target()) -> str:
    """The one line a user sees for an SDK error, in the terms of `command`'s options."""
    if isinstance(exc, ApiError):
        return _unauthorized(exc, target) if exc.status == 401 else in_cli_terms(exc, command)
    if isinstance(exc, ServerUnreachable):
        return f"{exc}; is `jobyard server` running? ({_url_hint(target)})"
    return str(exc)


def in_cli_terms(exc: ApiError, command: _Command | None) -> str:
    """The server's message with an API field prefix ('resources.gpus: ...') as the option
    ('--gpus: ...') and 'force=true' as 'use --force', where the command has that option."""
    text = exc.message
    option = _option_for(command, exc.field) if exc.field else None
    if option and text.startswith(f"{exc.field}: "):
        text = f"{option}: {text.removeprefix(f'{exc.field}: ')}"
    if _option_for(command, "force"):
        for phrase in _FORCE_PHRASES:
            text = text.replace(phrase, "use --force")
    return text


def _option_for(command: _Command | None, field: str) -> str | None:
    """The long option of `command` that sets API field `field` (or its first or last part)."""
    parts = field.split(".")
    wanted = [_FIELD_OPTIONS.get(name, name) for name in (field, parts[-1], parts[0])]
    params = command.params if command else ()
    options = [param for param in params if param.param_type_name == "option"]
    for name in wanted:
        for option in options:
            if option.name == name:
                return next((o for o in option.opts if o.startswith("--")), option.opts[0])
    return None


def _unauthorized(exc: ApiError, target: Target) -> str:
    """A 401 told with where the token came from, or every place one was looked for."""
    token, origin = token_and_origin(target.token)
    if token is None:
        return (
            f"no token: no --token, JOBYARD_TOKEN is unset and {origin} {_why(Path(origin))}; "
            "pass --token, set JOBYARD_TOKEN, or set JOBYARD_HOME to the server's data directory"
        )
    where = "--token" if origin == "argument" else origin
    return f"{exc.message} (from {where}); pass another with --token or JOBYARD_TOKEN"


def _why(path: Path) -> str:
    if not path.exists():
        return "does not exist"
    return "is empty" if path.is_file() and path.stat().st_size == 0 else "is not readable"


def _url_hint(target: Target) -> str:
    try:
        _url, origin = url_and_origin(target.url)
    except ClientError as exc:
        return str(exc)
    if origin == "default":
        stale = f"{url_path()} is from a server that has stopped; " if url_path().exists() else ""
        return (
            f"{stale}the default URL: set --url, JOBYARD_URL or JOBYARD_PORT, or JOBYARD_HOME "
            "to the server's data directory"
        )
    if origin == "argument":
        return "the URL is from --url"
    if origin.startswith("JOBYARD_"):
        return f"the URL is from {origin}"
    return f"the URL is from {origin}, written by the server of that data directory"


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
            command = ctx.meta.get(_COMMAND)
            raise _fail(describe(exc, command, ctx.find_object(Target) or Target())) from None
