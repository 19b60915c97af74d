"""Request models read no boolean as a number, and no number as a boolean.

pydantic's lax mode takes `true` for 1 wherever an int or a float is expected, so
`{"expires_in": true}` made a token that expired after a second, and `"replicas": true` ran one
replica; it also takes 0, 1 and "yes" for booleans. A face's request model derives from
RequestModel: before validation, a boolean given for a field that takes a number (and no
boolean), or a number or text given for a field that takes only a boolean, is swapped for a
marker no validator of that type accepts, so pydantic refuses it at its own place
(`resources.gpus: Input should be a valid integer`), nested models, lists and maps included.
Numbers as text stay as lax as before: forms and query strings send them so.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, model_validator

__all__ = ["Mistyped", "RequestModel", "mark_booleans"]

_NUMBERS = (int, float)
_TAKES_BOOLEANS = (bool, Any, object)


class Mistyped:
    """Stands for a boolean where a number is expected, or a number or text where a boolean
    is: no validator of either type accepts it."""

    def __init__(self, value: object) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def _members(annotation: Any) -> tuple[Any, ...]:
    """The types an annotation admits: Annotated unwrapped, unions flattened."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return tuple(member for arg in get_args(annotation) for member in _members(arg))
    return (annotation,)


def _is_number_only(members: tuple[Any, ...]) -> bool:
    numeric = any(isinstance(m, type) and issubclass(m, _NUMBERS) for m in members)
    return numeric and not any(m in _TAKES_BOOLEANS for m in members)


def _is_boolean_only(members: tuple[Any, ...]) -> bool:
    return bool in members and all(m is bool or m is type(None) for m in members)


def _mark(annotation: Any, value: Any) -> Any:
    members = _members(annotation)
    if isinstance(value, bool):
        return Mistyped(value) if _is_number_only(members) else value
    if isinstance(value, int | float | str):
        return Mistyped(value) if _is_boolean_only(members) else value
    for member in members:
        marked = _mark_inside(member, value)
        if marked is not value:
            return marked
    return value


def _mark_inside(member: Any, value: Any) -> Any:
    origin, args = get_origin(member), get_args(member)
    if isinstance(member, type) and issubclass(member, BaseModel) and isinstance(value, dict):
        return mark_booleans(member, value)
    if origin is list and args and isinstance(value, list):
        items = [_mark(args[0], item) for item in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        marked = {key: _mark(args[1], item) for key, item in value.items()}
        return marked if any(marked[k] is not value[k] for k in value) else value
    return value


def mark_booleans(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """`data` with every boolean given for a number-only field of `model` (and every number or
    text for a boolean-only one) swapped for a Mistyped; `data` itself when there is none."""
    changed: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key in data:
            marked = _mark(field.annotation, data[key])
            if marked is not data[key]:
                changed[key] = marked
    return {**data, **changed} if changed else data


class RequestModel(BaseModel):
    """The base of a face's request models: see the module's docstring."""

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        return mark_booleans(cls, data) if isinstance(data, dict) else data
