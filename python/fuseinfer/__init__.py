"""fuseinfer: fused CUDA kernels for LLM inference, exposed as torch.ops.fuseinfer.*.

Importing registers the op schemas with their CPU reference and fake implementations;
CUDA modules are built and loaded on first use (or taken prebuilt), never at import.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import jit, ops  # noqa: E402  (ops registers torch.ops.fuseinfer.*; jit builds nothing)
from .llm import LLM, Completion  # noqa: E402
from .runtime.sampling import SamplingParams  # noqa: E402
from .runtime.step_output import FinishReason  # noqa: E402

__all__ = ["LLM", "Completion", "FinishReason", "SamplingParams", "__version__", "jit", "ops"]
