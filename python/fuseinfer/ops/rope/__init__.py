"""RoPE family: rope_with_cos_sin_cache (CUDA, csrc/rope; optionally fused with the KV-cache
write) and the cos/sin cache builder (plain, Llama-3, YaRN)."""

from __future__ import annotations

# Modules, not functions: a module named after its op stays reachable as an attribute.
from . import rope_with_cos_sin_cache

__all__ = ["rope_with_cos_sin_cache"]
