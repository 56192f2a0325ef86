"""RoPE family: rope_with_cos_sin_cache (CUDA, csrc/rope; optionally fused with the KV-cache
write), qk_rmsnorm_rope (Triton: Qwen3's q/k norm, RoPE and the KV-cache write in one
launch) and the cos/sin cache builder (plain, Llama-3, YaRN)."""

from __future__ import annotations

from ..discovery import import_modules

# Every module of the family, imported (an op module registers its schemas) and kept as a
# module attribute; fuseinfer.ops re-exports what each lists in __all__.
__all__ = import_modules(__name__, __path__)
