"""RMSNorm family: rmsnorm, fused_add_rmsnorm, their Gemma variants (CUDA, csrc/norm) and
qk_rmsnorm (Qwen3's per-head q/k norms, Triton)."""

from __future__ import annotations

# Modules, not functions: a module named after its op stays reachable as an attribute.
from . import qk_rmsnorm, rmsnorm

__all__ = ["qk_rmsnorm", "rmsnorm"]
