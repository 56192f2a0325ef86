"""Sampling family (Triton): greedy_sample (the argmax of each logits row, written to the
tokens and to the runner's future buffer in one kernel)."""

from __future__ import annotations

from ..discovery import import_modules

# Every module of the family, imported (an op module registers its schemas) and kept as a
# module attribute; fuseinfer.ops re-exports what each lists in __all__.
__all__ = import_modules(__name__, __path__)
