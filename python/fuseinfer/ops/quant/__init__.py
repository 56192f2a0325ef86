"""Quantization family (Triton): per_token_group_quant_fp8 (1 x group activation scales,
the input of blockwise-scaled FP8 GEMMs)."""

from __future__ import annotations

from ..discovery import import_modules

# Every module of the family, imported (an op module registers its schemas) and kept as a
# module attribute; fuseinfer.ops re-exports what each lists in __all__.
__all__ = import_modules(__name__, __path__)
