"""JSON answers that any stored text can be put in.

Text that UTF-8 cannot encode (a lone UTF-16 surrogate) is refused at the edge
(`api.inputs`), but a job stored before that must not turn every list that shows it into a
500: such a character leaves as U+FFFD, the replacement character, in this answer only.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi.responses import JSONResponse as _JSONResponse

__all__ = ["JSONResponse", "encodable", "utf8"]

_SURROGATE = re.compile("[\ud800-\udfff]")


def encodable(text: str) -> str:
    """`text` with any lone surrogate replaced by U+FFFD, so that UTF-8 can encode it."""
    return _SURROGATE.sub("\ufffd", text)


def utf8(text: str) -> bytes:
    """`text` as UTF-8, any lone surrogate as U+FFFD."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return encodable(text).encode("utf-8")


class JSONResponse(_JSONResponse):
    """Starlette's JSONResponse, but an answer with a lone surrogate in it still leaves."""

    def render(self, content: Any) -> bytes:
        body = json.dumps(
            content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
        )
        return utf8(body)
