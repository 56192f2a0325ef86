"""fuseinfer: fused CUDA kernels for LLM inference, exposed as torch.ops.fuseinfer.*.

Importing registers the op schemas with their CPU reference and fake implementations;
CUDA modules are built and loaded on first use (or taken prebuilt), never at import.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import jit, ops  # noqa: E402  (ops registers torch.ops.fuseinfer.*; jit builds nothing)

__all__ = ["__version__", "jit", "ops"]
