"""Linear family (Triton): small_batch_linear, a weight-streaming matmul for decode steps
of a few tokens, with optional (add +) RMSNorm and SiLU*mul prologues."""

from __future__ import annotations

# Modules, not functions: a module named after its op stays reachable as an attribute.
from . import small_batch_linear

__all__ = ["small_batch_linear"]
