"""Credentials never reach the server's log, at any level.

What is hidden (replaced by `<redacted>`), wherever it appears in a record's message, its
arguments, its traceback or its stack:
- the value of a query parameter or cookie whose name looks like a credential (api_key, apikey,
  key, token, access_token, password, secret, auth, session, signature, ...): uvicorn's access
  log and the WebSocket handshake log the path with its query string;
- the value of an Authorization-like header (Authorization, Proxy-Authorization,
  X-Ray-Authorization, Cookie, Set-Cookie, X-Api-Key): at debug level the WebSocket
  handshake logs every header;
- a `Bearer` or `Basic` credential and a jobyard API token (`jy_...`) anywhere.

`install()` puts the filter on uvicorn's loggers (their records do not reach the root
logger's handlers) and on the root logger's handlers, for everything else.
"""

from __future__ import annotations

import contextlib
import logging
import re

__all__ = ["RedactCredentials", "install", "redact"]

REDACTED = "<redacted>"
_CREDENTIAL_WORDS = r"token|key|secret|pass|pwd|auth|credential|session|signature|sig|jwt|cookie"
_CREDENTIAL_NAME = rf"[\w.-]*(?:{_CREDENTIAL_WORDS})[\w.-]*"
_HEADER_NAMES = r"(?:proxy-|x-ray-)?authorization|set-cookie|cookie|x-api-key|x-auth-token"
_PATTERNS = [
    # name=value in a query string, a cookie or a form: the value up to the next separator
    (re.compile(rf"(?i)(?<![\w.-])({_CREDENTIAL_NAME}=)[^&;\s\"'#,)]+"), rf"\1{REDACTED}"),
    # a header and its value, as logged ("authorization: ...") or as a repr ('cookie', b'...')
    (
        re.compile(rf"(?i)\b({_HEADER_NAMES})(['\"]?\s*[:,=]\s*(?:b?['\"])?)[^\r\n'\"]+"),
        rf"\1\2{REDACTED}",
    ),
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[\w.~+/=-]{6,}"), rf"\1\2{REDACTED}"),
    (re.compile(r"\bjy_[\w-]{16,}"), REDACTED),
]


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_args(args: tuple[object, ...]) -> tuple[object, ...]:
    return tuple(redact(a) if isinstance(a, str) else a for a in args)


class RedactCredentials(logging.Filter):
    """Rewrites a record so that no credential is left in it; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        with contextlib.suppress(Exception):  # arguments that do not format: the handler says so
            _scrub(record)
        return True


def _scrub(record: logging.LogRecord) -> None:
    if isinstance(record.args, tuple) and record.args:
        # argument by argument first: uvicorn's access formatter reads them by position
        record.args = _redact_args(record.args)
    message = record.getMessage()
    clean = redact(message)
    if clean != message:  # a credential split over arguments ("< %s: %s", name, value)
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


# uvicorn's loggers have their own handlers and do not propagate to the root logger's.
_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def install() -> None:
    """Idempotent: the filter on uvicorn's loggers and on the root logger's handlers."""
    targets: list[logging.Filterer] = [logging.getLogger(name) for name in _LOGGERS]
    targets += logging.getLogger().handlers
    for target in targets:
        if not any(isinstance(f, RedactCredentials) for f in target.filters):
            target.addFilter(RedactCredentials())
