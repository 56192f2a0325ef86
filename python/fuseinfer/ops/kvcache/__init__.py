"""KV-cache family: store_kv_cache (CUDA, csrc/kvcache), flat or paged, plain or FP8."""

from __future__ import annotations

# Modules, not functions: a module named after its op stays reachable as an attribute.
from . import store_kv_cache

__all__ = ["store_kv_cache"]
