"""Activation family (Triton): silu_and_mul (SwiGLU in one pass)."""

from __future__ import annotations

# Modules, not functions: a module named after its op stays reachable as an attribute.
from . import silu_and_mul

__all__ = ["silu_and_mul"]
