"""FP4 / MX quantization family (csrc/fp4_quant): nvfp4_quantize, mxfp4_quantize and
mxfp8_quantize, the activation side of block-scaled FP4/FP8 GEMMs."""

from __future__ import annotations

from ..discovery import import_modules

# Every module of the family, imported (an op module registers its schemas) and kept as a
# module attribute; fuseinfer.ops re-exports what each lists in __all__.
__all__ = import_modules(__name__, __path__)
