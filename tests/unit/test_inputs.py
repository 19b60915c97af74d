"""The edge's pure checks: JSON nesting, values no face can take, percent-encodings, booleans
read as numbers, and answers that still leave with text UTF-8 cannot encode."""

from __future__ import annotations

import json
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from jobyard.api.inputs import (
    MAX_JSON_DEPTH,
    json_problem,
    loads_checked,
    nested_deeper_than,
    target_problem,
    value_problem,
)
from jobyard.api.responses import JSONResponse, utf8
from jobyard.api.strict import RequestModel


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_nesting_is_measured_outside_strings() -> None:
    assert not nested_deeper_than(_nested(MAX_JSON_DEPTH), MAX_JSON_DEPTH)
    assert nested_deeper_than(_nested(MAX_JSON_DEPTH + 1), MAX_JSON_DEPTH)
    assert nested_deeper_than(b'{"a":' * 100 + b"1" + b"}" * 100, MAX_JSON_DEPTH)
    brackets_in_text = json.dumps({"cmd": "[" * 1000, "q": '\\"[[[' * 100}).encode()
    assert not nested_deeper_than(brackets_in_text, MAX_JSON_DEPTH)
    many_flat = json.dumps({"items": [[1]] * 1000}).encode()
    assert not nested_deeper_than(many_flat, MAX_JSON_DEPTH)


def test_a_body_nested_too_deep_is_a_400_before_it_is_parsed() -> None:
    problem = json_problem(_nested(100_000))  # json.loads would raise RecursionError
    assert problem is not None
    assert (problem.status, problem.code, problem.field) == (400, "invalid_json", "body")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (rb'{"env": {"K": "\ud800"}}', "env.K"),
        (rb'{"runtime_env": {"env_vars": {"K": "a\udfff"}}}', "runtime_env.env_vars.K"),
        (b'{"args": ["ok", "\xed\xa0\x80"]}', "args.1"),  # the raw bytes of a surrogate
        (rb'{"labels": {"\ud800": "v"}}', "labels"),  # a key
        (rb'{"max_runtime": NaN}', "max_runtime"),
        (rb'{"resources": {"cpus": Infinity}}', "resources.cpus"),
        (b'{"timeout": 1e999}', "timeout"),
        (b'{"timeout": -1e400}', "timeout"),
        (b'{"priority": 9223372036854775808}', "priority"),
        (b'{"priority": -9223372036854775809}', "priority"),
        (rb'"\ud800"', "body"),
    ],
)
def test_values_no_face_can_take_are_refused_naming_the_field(body: bytes, field: str) -> None:
    problem = json_problem(body)
    assert problem is not None, body
    assert (problem.status, problem.code, problem.field) == (422, "invalid", field)
    assert problem.message.startswith(f"{field}: ")
    problem.message.encode("utf-8")  # the message itself is never unencodable


@pytest.mark.parametrize(
    "body",
    [
        rb'{"emoji": "\ud83d\ude00", "text": "caf\u00e9"}',  # a surrogate pair is a character
        rb'{"literal": "\\ud800"}',  # a backslash, then "ud800": text, not an escape
        b'{"big": 9223372036854775807, "small": -9223372036854775808, "f": 1e308}',
        b'{"n": 12345678901234567890.5e-10}',
        b"not json at all: the face says so",
        b"{",
    ],
)
def test_good_bodies_and_ones_that_are_not_json_pass(body: bytes) -> None:
    assert json_problem(body) is None


def test_values_are_walked_through_lists_and_maps() -> None:
    assert value_problem({"a": [{"b": 1}, {"c": [True, None, "x", 1.5]}]}) is None
    assert value_problem({"a": [{"b": 1}, {"c": [0, float("nan")]}]}) == (
        "a.1.c.1",
        "a.1.c.1: must be a finite number",
    )


def test_json_inside_a_form_field_is_checked_like_a_body() -> None:
    assert loads_checked('{"gpuName": "A100", "gpus": 1}') == {"gpuName": "A100", "gpus": 1}
    with pytest.raises(ValueError, match="gpuName: the text contains a lone UTF-16"):
        loads_checked(r'{"gpuName": "\ud800"}')
    with pytest.raises(ValueError, match="nested deeper than"):
        loads_checked("[" * 5000 + "]" * 5000)
    with pytest.raises(json.JSONDecodeError):
        loads_checked("{")


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        (b"/api/v1/jobs/%ED%A0%80", b"", "path"),
        (b"/api/v1/jobs/%FF", b"", "path"),
        (b"/api/v1/jobs", b"q=%ED%A0%80", "q"),
        (b"/api/v1/jobs", b"limit=5&owner=a%C3", "owner"),
        (b"/api/v1/jobs", b"a%FF=1", "a\\ufffd"),
    ],
)
def test_percent_encodings_that_are_not_utf8_are_refused(
    path: bytes, query: bytes, field: str
) -> None:
    problem = target_problem(path, query)
    assert problem is not None
    assert (problem.status, problem.field) == (422, field)
    problem.message.encode("utf-8")


def test_percent_encoded_utf8_passes() -> None:
    assert target_problem(b"/api/v1/jobs/caf%C3%A9", b"q=%F0%9F%98%80&state=RUNNING&x") is None
    assert target_problem(None, b"") is None


class _Inner(RequestModel):
    gpus: int = 0
    flag: bool = False


class _Body(RequestModel):
    count: Annotated[int, Field(ge=0)] = 0
    ratio: float | None = None
    either: int | str = 0
    anything: Any = None
    inner: _Inner = Field(default_factory=_Inner)
    items: list[_Inner] = Field(default_factory=list)
    weights: dict[str, float] = Field(default_factory=dict)


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"count": True}, ("count",)),
        ({"ratio": False}, ("ratio",)),
        ({"inner": {"gpus": True}}, ("inner", "gpus")),
        ({"items": [{}, {"gpus": False}]}, ("items", 1, "gpus")),
        ({"weights": {"a": 1.0, "b": True}}, ("weights", "b")),
    ],
)
def test_a_boolean_is_no_number_at_its_own_place(data: dict[str, Any], loc: tuple[Any]) -> None:
    with pytest.raises(ValidationError) as raised:
        _Body.model_validate(data)
    assert [e["loc"][: len(loc)] for e in raised.value.errors()][0] == loc


def test_booleans_where_booleans_or_anything_go_and_numbers_stay_lax() -> None:
    body = _Body.model_validate(
        {"anything": True, "inner": {"flag": True}, "count": "3", "ratio": 2, "either": "x"}
    )
    assert (body.anything, body.inner.flag, body.count, body.ratio) == (True, True, 3, 2.0)
    with pytest.raises(ValidationError):
        _Body.model_validate({"either": True})  # int | str: neither takes a boolean


class _Plain(BaseModel):
    count: int = 0


def test_the_marker_only_changes_request_models() -> None:
    assert _Plain.model_validate({"count": True}).count == 1  # pydantic's own lax reading


def test_answers_with_a_lone_surrogate_still_leave_as_utf8() -> None:
    assert utf8("caf\u00e9") == "café".encode()
    assert utf8("a\ud800b") == "a\ufffdb".encode()
    body = JSONResponse({"env": {"K": "\ud800"}, "n": 1}).body
    assert json.loads(bytes(body)) == {"env": {"K": "\ufffd"}, "n": 1}


@pytest.mark.parametrize("value", [0, 1, "yes", "true", 1.0])
def test_a_number_or_text_is_no_boolean(value: object) -> None:
    with pytest.raises(ValidationError) as raised:
        _Body.model_validate({"inner": {"flag": value}})
    assert raised.value.errors()[0]["loc"] == ("inner", "flag")
