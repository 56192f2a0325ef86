"""Public op surface: importing this registers every torch.ops.fuseinfer.* schema."""

from __future__ import annotations

from . import (
    activation,
    attention,
    attention_dispatch,
    kvcache,
    linear,
    norm,
    qk_norm,
    rope,
    rope_dispatch,
)
from .activation import silu_and_mul
from .attention_plan import AttentionShape, PagedAttention
from .kvcache import store_kv_cache
from .linear import small_batch_linear
from .norm import fused_add_rmsnorm, gemma_fused_add_rmsnorm, gemma_rmsnorm, rmsnorm
from .qk_norm import qk_rmsnorm
from .rope import rope_with_cos_sin_cache

__all__ = ["AttentionShape", "PagedAttention", "activation", "attention",
           "attention_dispatch", "fused_add_rmsnorm", "gemma_fused_add_rmsnorm",
           "gemma_rmsnorm", "kvcache", "linear", "norm", "qk_norm", "qk_rmsnorm", "rmsnorm",
           "rope", "rope_dispatch", "rope_with_cos_sin_cache", "silu_and_mul",
           "small_batch_linear", "store_kv_cache"]
