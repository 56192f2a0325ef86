"""MoE family: routing (topk_softmax, moe_fused_gate) and the expert computation."""

from __future__ import annotations

from ..discovery import import_modules

# Every module of the family, imported (an op module registers its schemas) and kept as a
# module attribute; fuseinfer.ops re-exports what each lists in __all__.
__all__ = import_modules(__name__, __path__)
