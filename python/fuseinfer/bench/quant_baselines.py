"""What the quant kernels are compared against, timed in the same run: the plain torch
math a model would run (eager: the ops' float32 references, which are exactly that code),
the same code under torch.compile, and for the fused producers our own unfused pair (our
silu_and_mul or fused_add_rmsnorm, then our group quant, the activation written in 16
bits and read again). The torch baselines allocate their outputs (row-major scales, the
cheaper layout for them); the suite keeps each call's outputs alive with its buffer set,
so output addresses rotate with the inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..ops.quant.fused_add_rmsnorm_quant_fp8 import reference_fused_add_rmsnorm_quant_fp8
from ..ops.quant.per_tensor_quant_fp8 import reference_per_tensor_quant_fp8
from ..ops.quant.per_token_group_quant_fp8 import reference_per_token_group_quant_fp8
from ..ops.quant.per_token_quant_fp8 import reference_per_token_quant_fp8
from ..ops.quant.silu_and_mul_quant_fp8 import reference_silu_and_mul_quant_fp8
from .static_compile import compile_static

BASELINES = ("eager", "compile", "unfused")
EPS = 1e-6
Sets = dict[str, torch.Tensor]


def _group(x: torch.Tensor, group: int) -> Any:
    return reference_per_token_group_quant_fp8(x, group)


def _swiglu(x: torch.Tensor, group: int) -> Any:
    return reference_silu_and_mul_quant_fp8(x, group)


def _norm(x: torch.Tensor, r: torch.Tensor, w: torch.Tensor, group: int) -> Any:
    return reference_fused_add_rmsnorm_quant_fp8(x, r, w, group, EPS)


def _token(x: torch.Tensor, group: int) -> Any:
    return reference_per_token_quant_fp8(x)


def _tensor(x: torch.Tensor, group: int) -> Any:
    return reference_per_tensor_quant_fp8(x)


TORCH_MATH: dict[str, Callable[..., Any]] = {
    "per_token_group_quant_fp8": _group,
    "silu_and_mul_quant_fp8": _swiglu,
    "fused_add_rmsnorm_quant_fp8": _norm,
    "per_token_quant_fp8": _token,
    "per_tensor_quant_fp8": _tensor,
}


def _torch_call(op: str, fn: Callable[..., Any], group: int) -> Callable[[Sets], Any]:
    if op == "fused_add_rmsnorm_quant_fp8":
        return lambda s: fn(s["x"], s["r"], s["w"], group)
    return lambda s: fn(s["x"], group)


def _unfused(op: str, group: int, pdl: bool | None) -> Callable[[Sets], Any] | None:
    quant = torch.ops.fuseinfer.per_token_group_quant_fp8
    if op == "silu_and_mul_quant_fp8":
        def swiglu_then_quant(s: Sets) -> None:
            torch.ops.fuseinfer.silu_and_mul(s["mid"], s["x"], pdl)
            quant(s["q"], s["s"], s["mid"], group, enable_pdl=pdl)
        return swiglu_then_quant
    if op == "fused_add_rmsnorm_quant_fp8":
        # in place, as a model runs it: the normalized rows overwrite the input
        def norm_then_quant(s: Sets) -> None:
            torch.ops.fuseinfer.fused_add_rmsnorm(s["x"], s["r"], s["w"], EPS, pdl)
            quant(s["q"], s["s"], s["x"], group, enable_pdl=pdl)
        return norm_then_quant
    return None


def baseline_call(name: str, op: str, group: int, pdl: bool | None = None
                  ) -> Callable[[Sets], Any] | None:
    """A callable on one buffer set (None: this baseline has no version of the op)."""
    if name == "eager":
        return _torch_call(op, TORCH_MATH[op], group)
    if name == "compile":
        return _torch_call(op, compile_static(f"quant:{op}", TORCH_MATH[op]), group)
    if name == "unfused":
        return _unfused(op, group, pdl)
    raise ValueError(f"unknown baseline '{name}' ({', '.join(BASELINES)})")
