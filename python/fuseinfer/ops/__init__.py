"""Public op surface: importing this registers every torch.ops.fuseinfer.* schema.

One package per op family (norm, rope, kvcache, attention, activation, linear); each
holds its ops' schema, CPU reference, fake impl, checks, dispatch entry and launcher, in
files named after the ops.
"""

from __future__ import annotations

from . import activation, attention, kvcache, linear, norm, rope
from .activation.silu_and_mul import silu_and_mul
from .attention import AttentionShape, PagedAttention
from .kvcache.store_kv_cache import store_kv_cache
from .linear.small_batch_linear import small_batch_linear
from .norm.qk_rmsnorm import qk_rmsnorm
from .norm.rmsnorm import fused_add_rmsnorm, gemma_fused_add_rmsnorm, gemma_rmsnorm, rmsnorm
from .rope.rope_with_cos_sin_cache import rope_with_cos_sin_cache

__all__ = ["AttentionShape", "PagedAttention", "activation", "attention", "fused_add_rmsnorm",
           "gemma_fused_add_rmsnorm", "gemma_rmsnorm", "kvcache", "linear", "norm",
           "qk_rmsnorm", "rmsnorm", "rope", "rope_with_cos_sin_cache", "silu_and_mul",
           "small_batch_linear", "store_kv_cache"]
