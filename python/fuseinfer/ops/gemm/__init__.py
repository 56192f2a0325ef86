"""GEMM family: fp8_blockwise_mm, the FP8 GEMM with 1 x 128 activation and 128 x 128 weight
scales (CUTLASS on sm_90a / sm_100a, a Triton kernel elsewhere), and its dispatch table."""

from __future__ import annotations

from ..discovery import import_modules

# Every module of the family, imported (an op module registers its schemas) and kept as a
# module attribute; fuseinfer.ops re-exports what each lists in __all__.
__all__ = import_modules(__name__, __path__)
