"""An op's arguments written once: a NamedTuple whose field names, annotations and defaults
give the torch.library schema, and which the op's CPU, fake and CUDA implementations build
from the arguments the dispatcher passes them (positionally, trailing defaults left out).

    class ScaleArgs(NamedTuple):
        out: torch.Tensor
        x: torch.Tensor
        factor: float = 1.0
        enable_pdl: bool | None = None

    op_schema("scale", ScaleArgs, mutated=("out",))
    # 'scale(Tensor(a!) out, Tensor x, float factor=1.0, bool? enable_pdl=None) -> ()'

Annotations map to schema types: torch.Tensor -> Tensor, float, int, bool, Sequence[int]
-> int[], and `X | None` -> `X?`. A mutated tensor gets the next alias set (a!, b!, ...).
An implementation builds the tuple with `call_args(ScaleArgs, args, kwargs)`.
"""

from __future__ import annotations

import string
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T", bound=tuple)
_tuple_new = tuple.__new__
_SCALARS: dict[Any, str] = {torch.Tensor: "Tensor", float: "float", int: "int",
                            bool: "bool", Sequence[int]: "int[]"}


def _schema_type(annotation: Any, where: str) -> tuple[str, bool]:
    """(schema type without `?`, optional) of one annotation."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        if len(members) != 1:
            raise TypeError(f"{where}: only `X | None` unions map to a schema type")
        annotation = members[0]
    if annotation not in _SCALARS:
        raise TypeError(f"{where}: {annotation!r} has no schema type")
    return _SCALARS[annotation], optional


def _schema_default(value: Any) -> str:
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(repr(int(v)) for v in value) + "]"
    raise TypeError(f"default {value!r} has no schema form")


def op_schema(name: str, args: type[tuple], mutated: Sequence[str] = (),
              returns: str = "()") -> str:
    """The schema string of op `name` whose arguments are the NamedTuple type `args`."""
    hints = typing.get_type_hints(args)
    fields: tuple[str, ...] = args._fields  # type: ignore[attr-defined]
    defaults: dict[str, Any] = args._field_defaults  # type: ignore[attr-defined]
    unknown = set(mutated) - set(fields)
    if unknown:
        raise TypeError(f"{name}: mutated names no argument: {sorted(unknown)}")
    aliases = iter(string.ascii_lowercase)
    parts = []
    for field in fields:
        kind, optional = _schema_type(hints[field], f"{name}.{field}")
        if field in mutated:
            if kind != "Tensor":
                raise TypeError(f"{name}.{field}: only tensors can be mutated")
            kind = f"Tensor({next(aliases)}!)"
        text = f"{kind}{'?' if optional else ''} {field}"
        if field in defaults:
            text += f"={_schema_default(defaults[field])}"
        parts.append(text)
    return f"{name}({', '.join(parts)}) -> {returns}"


def call_args(args_type: type[T], args: tuple, kwargs: dict[str, Any]) -> T:
    """The argument tuple of one call. The dispatcher passes every argument positionally
    but trailing defaults, so a full call skips the NamedTuple's argument binding (it runs
    per layer and step on the CUDA path)."""
    if not kwargs and len(args) == len(args_type._fields):  # type: ignore[attr-defined]
        return _tuple_new(args_type, args)
    return args_type(*args, **kwargs)
