"""Allreduce family: the custom allreduce over peer-mapped buffers (one-shot, two-shot) and
its fusion with residual add + RMSNorm (csrc/allreduce). fuseinfer.distributed owns the
workspaces and picks the algorithm from the `allreduce` dispatch entry."""

from __future__ import annotations

from ..discovery import import_modules

# Every module of the family, imported (an op module registers its schemas) and kept as a
# module attribute; fuseinfer.ops re-exports what each lists in __all__.
__all__ = import_modules(__name__, __path__)
