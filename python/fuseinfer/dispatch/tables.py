"""Per-GPU dispatch tables: autotune_configs/<key>.json.

Lookup for an op on a GPU: the model's table (h100.json) -> the family's table (sm90.json)
-> the op's built-in default. Each op family registers the dataclass of its entries and a
built-in default with `register_op`; a table naming an unregistered op is an error.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..paths import tables_dir
from .identity import GpuIdentity, family_key, gpu_key
from .schema import TableError, parse_dataclass, to_json

_TOP_LEVEL_FIELDS = {"key", "description", "ops"}


@dataclass(frozen=True)
class OpSchema:
    name: str
    entry_type: type
    builtin: Any  # an instance of entry_type, with source "built-in default"


@dataclass(frozen=True)
class Choice:
    """The effective table entry for one op on one GPU, and where it came from."""

    op: str
    entry: Any
    table_key: str  # "h100", "sm90", or "builtin"
    path: str | None

    @property
    def source(self) -> str:
        return getattr(self.entry, "source", "")


_SCHEMAS: dict[str, OpSchema] = {}
_LOCK = threading.Lock()


def register_op(name: str, entry_type: type, builtin: Any) -> None:
    """Declare the table entry type of an op family (called by fuseinfer.ops.<family>)."""
    if not isinstance(builtin, entry_type):
        raise TypeError(f"built-in default for {name} must be a {entry_type.__name__}")
    with _LOCK:
        _SCHEMAS[name] = OpSchema(name, entry_type, builtin)
    clear_cache()


def registered_ops() -> list[str]:
    return sorted(_SCHEMAS)


def parse_table(data: Any, where: str) -> dict[str, Any]:
    """Validate a whole table document; returns op name -> parsed entry."""
    if not isinstance(data, Mapping):
        raise TableError(f"{where}: a table must be a JSON object")
    unknown = sorted(set(data) - _TOP_LEVEL_FIELDS)
    if unknown:
        raise TableError(f"{where}: unknown top-level field(s) {unknown}")
    if "ops" not in data or not isinstance(data["ops"], Mapping):
        raise TableError(f"{where}: missing object 'ops'")
    for field in ("key", "description"):
        if field in data and not isinstance(data[field], str):
            raise TableError(f"{where}.{field}: expected a string")
    entries: dict[str, Any] = {}
    for op, entry in data["ops"].items():
        schema = _SCHEMAS.get(op)
        if schema is None:
            raise TableError(f"{where}.ops: unknown op '{op}'; known ops: {registered_ops()}")
        entries[op] = parse_dataclass(schema.entry_type, entry, f"{where}.ops.{op}")
    return entries


@functools.cache
def _load_file(path: str, mtime_ns: int) -> dict[str, Any]:
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise TableError(f"{path}: not valid JSON ({e})") from e
    name = Path(path)
    if isinstance(data, Mapping) and "key" in data and data["key"] != name.stem:
        raise TableError(f"{name.name}: key '{data['key']}' does not match the file name")
    return parse_table(data, name.name)


def load_table(path: Path) -> dict[str, Any]:
    """Parse and validate one table file (cached until the file changes)."""
    return _load_file(str(path), path.stat().st_mtime_ns)


def candidate_keys(identity: GpuIdentity | None) -> list[str]:
    """Table keys to try for a GPU, most specific first."""
    if identity is None:
        return []
    keys = [gpu_key(identity), family_key(identity)]
    return list(dict.fromkeys(keys))


def lookup(op: str, identity: GpuIdentity | None, directory: Path | None = None) -> Choice:
    """The effective entry for `op` on the GPU `identity` (None: no GPU, built-in)."""
    schema = _SCHEMAS.get(op)
    if schema is None:
        raise KeyError(f"no dispatch table schema registered for op '{op}'")
    directory = tables_dir() if directory is None else directory
    for key in candidate_keys(identity):
        path = directory / f"{key}.json"
        if path.is_file():
            entries = load_table(path)
            if op in entries:
                return Choice(op, entries[op], key, str(path))
    return Choice(op, schema.builtin, "builtin", None)


def write_entry(path: Path, op: str, entry: Any, key: str, description: str = "") -> None:
    """Insert or replace one op's entry in a table file, validating the result."""
    data: dict[str, Any] = {"key": key, "description": description, "ops": {}}
    if path.is_file():
        with open(path) as f:
            data = json.load(f)
    data.setdefault("ops", {})[op] = to_json(entry)
    if description:
        data["description"] = description
    parse_table(data, path.name)  # never write a table that would not load
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    clear_cache()


def clear_cache() -> None:
    _load_file.cache_clear()
