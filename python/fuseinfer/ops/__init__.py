"""Public op surface: importing this registers every torch.ops.fuseinfer.* schema."""

from __future__ import annotations

from . import attention, attention_dispatch, kvcache, norm, rope, rope_dispatch
from .attention_plan import AttentionShape, PagedAttention
from .kvcache import store_kv_cache
from .norm import fused_add_rmsnorm, gemma_fused_add_rmsnorm, gemma_rmsnorm, rmsnorm
from .rope import rope_with_cos_sin_cache

__all__ = ["AttentionShape", "PagedAttention", "attention", "attention_dispatch",
           "fused_add_rmsnorm", "gemma_fused_add_rmsnorm", "gemma_rmsnorm", "kvcache", "norm",
           "rmsnorm", "rope", "rope_dispatch", "rope_with_cos_sin_cache", "store_kv_cache"]
