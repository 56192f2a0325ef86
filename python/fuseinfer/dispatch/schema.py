"""Strict parsing of table entries into frozen dataclasses.

Tables are data written by people and by `fuseinfer tune`; a typo must fail loudly, so an
unknown field, a missing field or a wrong type raises TableError naming where it is.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class TableError(ValueError):
    """A dispatch table that does not match its schema."""


def _check_scalar(kind: type, value: Any, where: str) -> Any:
    # bool is an int in Python; keep the two apart so `true` is not a thread count.
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise TableError(f"{where}: expected an integer, got {value!r}")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise TableError(f"{where}: expected a number, got {value!r}")
    if kind is bool and not isinstance(value, bool):
        raise TableError(f"{where}: expected true or false, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise TableError(f"{where}: expected a string, got {value!r}")
    return float(value) if kind is float else value


def _parse_value(kind: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            if len(options) == len(typing.get_args(kind)):
                raise TableError(f"{where}: must not be null")
            return None
        return _parse_value(options[0], value, where)
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise TableError(f"{where}: expected a list, got {value!r}")
        item = typing.get_args(kind)[0]
        return tuple(_parse_value(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(kind):
        return parse_dataclass(kind, value, where)
    return _check_scalar(kind, value, where)


def parse_dataclass(cls: type[T], data: Any, where: str) -> T:
    """Build `cls` from a JSON object, rejecting unknown and missing fields.

    After construction, a `validate(where)` method on the class (if any) checks the
    constraints between fields.
    """
    if not isinstance(data, Mapping):
        raise TableError(f"{where}: expected an object, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise TableError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(fields)}")
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in data:
            has_default = (
                field.default is not dataclasses.MISSING
                or field.default_factory is not dataclasses.MISSING
            )
            if has_default:
                continue
            raise TableError(f"{where}: missing field '{name}'")
        values[name] = _parse_value(hints[name], data[name], f"{where}.{name}")
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(where)
    return obj


def to_json(obj: Any) -> Any:
    """Inverse of parse_dataclass: a dataclass tree as plain JSON values."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_json(v) for v in obj]
    return obj
