"""No credential survives a log record: query parameters, headers as the WebSocket handshake
logs them, Bearer credentials, jobyard tokens; uvicorn's access-log arguments keep their shape."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from jobyard.api.redaction import REDACTED, RedactCredentials, redact

TOKEN = "jy_0123456789abcdefghijklmnopqrstuvwxyzABCD"
OTHER = "s3cr3t-VALUE-0123456789"


@pytest.mark.parametrize(
    "text",
    [
        f"GET /api/v1/jobs?api_key={OTHER} HTTP/1.1",
        f"/x?apikey={OTHER}&page=2",
        f"/x?page=2&key={OTHER}",
        f"/webterminal?token={OTHER}",
        f"/cb?access_token={OTHER}#frag",
        f"/login?password={OTHER}",
        f"/x?client_secret={OTHER}",
        f"/x?auth={OTHER}",
        f"/x?X-Amz-Signature={OTHER}",
        f"< authorization: Bearer {OTHER}",
        f"< Authorization: Basic {OTHER}",
        f"< x-ray-authorization: {OTHER}",
        f"< cookie: jobyard_session={OTHER}; jobyard_csrf={OTHER}",
        f"< cookie: ray-authentication-token={OTHER}",
        f"headers=[(b'authorization', b'Bearer {OTHER}')]",
        f"{{'Authorization': '{OTHER}'}}",
        f"retrying with bearer {OTHER}",
    ],
)
def test_credentials_are_redacted(text: str) -> None:
    clean = redact(text)
    assert OTHER not in clean and REDACTED in clean, clean
    assert redact(clean) == clean  # idempotent


def test_a_jobyard_token_is_redacted_anywhere() -> None:
    assert TOKEN not in redact(f"ValueError: bad thing {TOKEN} happened")


@pytest.mark.parametrize(
    "text",
    [
        "GET /api/v1/jobs?state=RUNNING&limit=50 HTTP/1.1",
        "reconciler pass failed; retrying",
        "web terminal opened by alice into JOB-worker-0",
        "token revoked for alice",
    ],
)
def test_ordinary_lines_are_left_alone(text: str) -> None:
    assert redact(text) == text


def _emit(logger: logging.Logger, *args: object, exc: bool = False) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.addFilter(RedactCredentials())
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        if exc:
            try:
                raise RuntimeError(f"failed with token={OTHER}")
            except RuntimeError:
                logger.exception(*args)
        else:
            logger.debug(*args)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_a_header_split_over_arguments_is_redacted() -> None:
    logger = logging.getLogger("test.redaction.header")
    assert OTHER not in _emit(logger, "< %s: %s", "authorization", f"Bearer {OTHER}")
    assert OTHER not in _emit(logger, "< %s: %s", "X-Ray-Authorization", OTHER)


def test_tracebacks_are_redacted() -> None:
    out = _emit(logging.getLogger("test.redaction.exc"), "unhandled error", exc=True)
    assert "RuntimeError" in out and OTHER not in out


def test_access_log_arguments_keep_their_positions() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", f"/api/v1/jobs?api_key={OTHER}", "1.1", 200),
        None,
    )
    assert RedactCredentials().filter(record)
    assert isinstance(record.args, tuple) and len(record.args) == 5
    assert record.args[2] == f"/api/v1/jobs?api_key={REDACTED}"
    assert record.args[4] == 200


def test_a_record_that_does_not_format_is_kept() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d items", ("many",), None)
    assert RedactCredentials().filter(record)
    assert record.msg == "%d items"
    assert sys.exc_info() == (None, None, None)


def test_a_header_value_keeps_no_letter_of_its_scheme() -> None:
    assert redact("< authorization: Bearer <redacted>") == "< authorization: <redacted>"
