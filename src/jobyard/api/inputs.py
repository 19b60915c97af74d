"""Input no face can take, refused once for every face, before any of them reads the request.

- a path or query string whose percent-encoding is not UTF-8 (`%ED%A0%80`, `%FF`): each
  face would otherwise see it with U+FFFD in place of the bytes, a different value;
- a JSON body nested deeper than MAX_JSON_DEPTH (Python's parser recurses: a deep one ends
  in RecursionError);
- a JSON body holding a value no face can store or answer with: a lone UTF-16 surrogate
  (`"\\ud800"`, which UTF-8 cannot encode), a number that is not finite (`NaN`, `Infinity`,
  `1e999`), an integer outside 64 bits.

Each refusal names the field (`runtime_env.env_vars.K`, as the client spelled it) and leaves
in the envelope of the face the path belongs to (`register_face_errors`). A JSON body is only
parsed here when a cheap scan of its bytes finds something that may be one of these.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from itertools import accumulate
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from jobyard.api.bounds import INT64
from jobyard.api.errors import Problem, renderer_for

__all__ = [
    "MAX_JSON_DEPTH",
    "InputCheck",
    "json_problem",
    "loads_checked",
    "target_problem",
    "value_problem",
]

MAX_JSON_DEPTH = 64
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
# What may be a value refused below: a surrogate escape or its raw bytes (json.loads decodes
# bytes with "surrogatepass"), NaN or Infinity, a large exponent, a long run of digits.
_SUSPECT = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]|NaN|Infinity|[eE]\+?\d{3}|\d{19}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_FORM_TYPES = ("multipart/", "application/x-www-form-urlencoded", "application/octet-stream")


# ---- pure checks ------------------------------------------------------------------------------


def _text_problem(text: str, what: str) -> str | None:
    found = _SURROGATE.search(text)
    if found is None:
        return None
    escape = found.group().encode("unicode_escape").decode()
    return (
        f"{what} contains a lone UTF-16 surrogate ({escape}), which is no character: "
        "send text as UTF-8 (a surrogate only as half of a pair)"
    )


def _join(path: tuple[str, ...]) -> str:
    return ".".join(path) or "body"


def value_problem(value: Any, path: tuple[str, ...] = ()) -> tuple[str, str] | None:
    """(field, message) for the first value in parsed JSON that no face can take, or None."""
    if isinstance(value, str):
        message = _text_problem(value, "the text")
    elif isinstance(value, bool) or value is None:
        return None
    elif isinstance(value, int):
        low, high = INT64
        message = None if low <= value <= high else f"is out of range ({low} to {high})"
    elif isinstance(value, float):
        message = None if math.isfinite(value) else "must be a finite number"
    elif isinstance(value, dict):
        return _items_problem(value, path)
    elif isinstance(value, list):
        return _first(value_problem(item, (*path, str(i))) for i, item in enumerate(value))
    else:
        return None
    return None if message is None else (_join(path), f"{_join(path)}: {message}")


def _items_problem(value: dict[str, Any], path: tuple[str, ...]) -> tuple[str, str] | None:
    for key, item in value.items():
        bad_key = _text_problem(key, f"the key {ascii(key)}")
        if bad_key is not None:
            return _join(path), f"{_join(path)}: {bad_key}"
        found = value_problem(item, (*path, key))
        if found is not None:
            return found
    return None


def _first(found: Iterator[tuple[str, str] | None]) -> tuple[str, str] | None:
    return next((item for item in found if item is not None), None)


def nested_deeper_than(body: bytes, limit: int) -> bool:
    """Whether the JSON text nests arrays and objects more than `limit` deep (strings skipped)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(_STEP[b] for b in brackets), default=0) > limit


def json_problem(body: bytes) -> Problem | None:
    """Why a JSON body is refused here, or None (also for a body that is not JSON at all: the
    face that reads it says so in its own terms)."""
    if nested_deeper_than(body, MAX_JSON_DEPTH):
        message = f"request body is nested deeper than {MAX_JSON_DEPTH} levels"
        return Problem(400, "invalid_json", message, "body")
    if _SUSPECT.search(body) is None:
        return None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    found = value_problem(value)
    return None if found is None else Problem(422, "invalid", found[1], found[0])


def loads_checked(text: str) -> Any:
    """json.loads for JSON that arrives inside a field (a form's): refused as for a body, by a
    ValueError whose message names the place inside it (JSONDecodeError if it does not parse)."""
    if nested_deeper_than(text.encode("utf-8", "surrogatepass"), MAX_JSON_DEPTH):
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    value = json.loads(text)
    found = value_problem(value)
    if found is not None:
        raise ValueError(found[1])
    return value


def _undecodable(raw: bytes) -> bool:
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _shown(raw: bytes) -> str:
    return raw.decode("ascii", "backslashreplace")[:80]


def target_problem(raw_path: bytes | None, query: bytes) -> Problem | None:
    """A path segment or query parameter percent-encoding bytes that are not UTF-8."""
    for segment in (raw_path or b"").split(b"/"):
        if _undecodable(segment):
            message = f"path: the segment {_shown(segment)!r} does not encode UTF-8 text"
            return Problem(422, "invalid", message, "path")
    for part in query.split(b"&"):
        name, _, value = part.replace(b"+", b" ").partition(b"=")
        field = unquote_to_bytes(name).decode("utf-8", "replace")
        if _undecodable(name) or _undecodable(value):
            field = ascii(field)[1:-1] if _undecodable(name) else field
            message = f"{field}: {_shown(part)!r} does not encode UTF-8 text"
            return Problem(422, "invalid", message, field)
    return None


# ---- the middleware ---------------------------------------------------------------------------


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def _may_carry_json(scope: Scope) -> bool:
    """A request with a body that a face could read as JSON (forms and uploads are not)."""
    kind = (_header(scope, b"content-type") or b"").decode("latin-1").lower()
    if kind.startswith(_FORM_TYPES):
        return False
    length = _header(scope, b"content-length")
    return length not in (None, b"0") or _header(scope, b"transfer-encoding") is not None


async def _read(receive: Receive) -> tuple[list[Message], bytes | None]:
    """The messages read, and the whole body if it opens like a JSON object or array; otherwise
    (an upload, a disconnect) None, and only as much is read as told so."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    opened = False
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        chunks.append(message.get("body", b""))
        if not opened:
            head = b"".join(chunks).lstrip()
            if head and head[:1] not in (b"{", b"["):
                return messages, None
            opened = bool(head)
        if not message.get("more_body", False):
            return messages, b"".join(chunks) if opened else None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


class InputCheck:
    """Pure ASGI middleware: refuses the input above for every face of the app it wraps. Put
    it inside RequestSizeLimit, which bounds what it reads."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        problem = target_problem(scope.get("raw_path"), scope.get("query_string", b""))
        if problem is not None and scope["type"] == "websocket":
            await _deny(scope, receive, send, problem)
            return
        if problem is None and scope["type"] == "http" and _may_carry_json(scope):
            try:
                messages, body = await _read(receive)
            except HTTPException as exc:  # RequestSizeLimit's, while counting a chunked body
                closing = {"Connection": "close"}  # the rest of the body is not read
                problem = Problem(exc.status_code, "too_large", str(exc.detail), "body", closing)
            else:
                receive = _replay(messages, receive)
                problem = None if body is None else json_problem(body)
        if problem is None:
            await self.app(scope, receive, send)
            return
        response = renderer_for(scope.get("app"), scope.get("path", ""))(problem)
        await response(scope, receive, send)


async def _deny(scope: Scope, receive: Receive, send: Send, problem: Problem) -> None:
    """Refuse a WebSocket before accepting it: the face's error as the HTTP answer where the
    server can send one, else close 1008."""
    websocket = WebSocket(scope, receive, send)
    response = renderer_for(scope.get("app"), scope.get("path", ""))(problem)
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:
        await websocket.close(1008, problem.message[:120])
