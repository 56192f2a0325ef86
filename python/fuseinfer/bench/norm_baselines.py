"""What the norm kernels are compared against, timed in the same run: the plain torch
code a model would run (eager), the same code under torch.compile, and liger-kernel's
Triton kernels when installed. Each baseline computes the same outputs as our op, as the
plain functional code a model would run (outputs freshly allocated). The suite keeps each
call's outputs alive with its buffer set, so output addresses rotate with the inputs and
no baseline gains from writing one buffer that stays in L2. (Writing into given buffers
instead, `out=`/`copy_`, makes Inductor emit an extra pass, which would flatter us.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .static_compile import compile_static


def torch_rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * w.float()).to(x.dtype)


def torch_fused_add_rmsnorm(x: torch.Tensor, r: torch.Tensor, w: torch.Tensor, eps: float
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    summed = x + r
    return torch_rmsnorm(summed, w, eps), summed


def compiled(op: str) -> Callable[..., Any]:
    fn = torch_fused_add_rmsnorm if op == "fused_add_rmsnorm" else torch_rmsnorm
    return compile_static(op, fn)


def liger_available() -> bool:
    try:
        import liger_kernel.ops.fused_add_rms_norm  # noqa: F401
        import liger_kernel.ops.rms_norm  # noqa: F401
    except Exception:  # ImportError, or a liger that cannot start on this machine
        return False
    return True


def liger(op: str) -> Callable[..., Any]:
    if op == "fused_add_rmsnorm":
        from liger_kernel.ops.fused_add_rms_norm import fused_add_rms_norm_forward

        return lambda x, r, w, eps: fused_add_rms_norm_forward(x, r, w, eps, 0.0, "llama")[:2]
    from liger_kernel.ops.rms_norm import rms_norm_forward

    return lambda x, w, eps: rms_norm_forward(x, w, eps, 0.0, "llama", None)[0]


def baseline_fn(name: str, op: str) -> Callable[..., Any]:
    """A callable taking (x, r, w, eps) for the fused op, (x, w, eps) otherwise, returning
    freshly allocated outputs."""
    if name == "eager":
        return torch_fused_add_rmsnorm if op == "fused_add_rmsnorm" else torch_rmsnorm
    if name == "compile":
        return compiled(op)
    if name == "liger":
        return liger(op)
    raise ValueError(f"unknown baseline '{name}' (eager, compile, liger)")
