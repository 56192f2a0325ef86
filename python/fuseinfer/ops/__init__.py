"""Public op surface: importing this registers every torch.ops.fuseinfer.* schema."""

from __future__ import annotations

from . import norm
from .norm import fused_add_rmsnorm, gemma_fused_add_rmsnorm, gemma_rmsnorm, rmsnorm

__all__ = ["fused_add_rmsnorm", "gemma_fused_add_rmsnorm", "gemma_rmsnorm", "norm", "rmsnorm"]
