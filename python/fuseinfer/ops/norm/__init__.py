"""RMSNorm family: rmsnorm, fused_add_rmsnorm, their Gemma variants (CUDA, csrc/norm) and
qk_rmsnorm (Qwen3's per-head q/k norms, Triton)."""

from __future__ import annotations

from ..discovery import import_modules

# Every module of the family, imported (an op module registers its schemas) and kept as a
# module attribute; fuseinfer.ops re-exports what each lists in __all__.
__all__ = import_modules(__name__, __path__)
