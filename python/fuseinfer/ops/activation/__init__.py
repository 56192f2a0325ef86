"""Activation family (Triton): silu_and_mul (SwiGLU in one pass) and clamped_swiglu_and_mul
(GPT-OSS's clamped SwiGLU)."""

from __future__ import annotations

from ..discovery import import_modules

# Every module of the family, imported (an op module registers its schemas) and kept as a
# module attribute; fuseinfer.ops re-exports what each lists in __all__.
__all__ = import_modules(__name__, __path__)
