"""GPU identity and per-GPU dispatch tables."""

from __future__ import annotations

from .identity import GpuIdentity, current_identity, family_key, gpu_key
from .schema import TableError
from .tables import Choice, lookup, register_op, registered_ops, write_entry

__all__ = [
    "Choice",
    "GpuIdentity",
    "TableError",
    "current_identity",
    "family_key",
    "gpu_key",
    "lookup",
    "register_op",
    "registered_ops",
    "write_entry",
]
