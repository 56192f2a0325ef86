"""Linear family (Triton): small_batch_linear, a weight-streaming matmul for decode steps
of a few tokens, with optional (add +) RMSNorm and SiLU*mul prologues."""

from __future__ import annotations

from ..discovery import import_modules

# Every module of the family, imported (an op module registers its schemas) and kept as a
# module attribute; fuseinfer.ops re-exports what each lists in __all__.
__all__ = import_modules(__name__, __path__)
