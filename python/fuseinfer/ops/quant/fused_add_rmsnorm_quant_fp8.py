"""fused_add_rmsnorm_quant_fp8: the residual add and RMSNorm before an FP8 linear layer,
ending in FP8 with per-token-group scales, in one pass over the row.

    residual = residual + input          (rounded to its dtype, written back in place)
    y        = rmsnorm(residual, weight, eps)              in fp32, not rounded
    (q, scales) = per_token_group_quant_fp8(y, group_size, scale_ue8m0)

input and residual [M, hidden] (contiguous last dims, any row stride), weight [hidden], all
bf16, fp16 or fp32 and the same; hidden a multiple of group_size (a power of two,
16..1024) and at most 16384. input is only read. CUDA: one Triton program per row (PDL on
sm_90+ unless enable_pdl=False); CPU: the reference below.
"""

from __future__ import annotations

import torch

from ..arg_checks import fail
from ..library import LIB, define, impl_cpu, impl_fake
from ..norm.rmsnorm import reference_rmsnorm
from ..triton_launch import next_pow2, use_pdl
from .per_token_group_quant_fp8 import (
    EPS,
    FP8_MAX,
    empty_group_quant,
    reference_per_token_group_quant_fp8,
)
from .quant_checks import check_group_quant

_SCHEMA = ("fused_add_rmsnorm_quant_fp8(Tensor(a!) q, Tensor(b!) scales, Tensor input, "
           "Tensor(c!) residual, Tensor weight, int group_size, float eps=1e-06, "
           "bool scale_ue8m0=False, bool? enable_pdl=None) -> ()")
MAX_HIDDEN = 16384  # one row in registers


def reference_fused_add_rmsnorm_quant_fp8(input: torch.Tensor, residual: torch.Tensor,
                                          weight: torch.Tensor, group_size: int, eps: float,
                                          scale_ue8m0: bool = False
                                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, scales, the new residual) in float32 math: the CPU kernel and the test oracle."""
    summed = (input.float() + residual.float()).to(residual.dtype)
    y = reference_rmsnorm(summed, weight, eps)
    q, scales = reference_per_token_group_quant_fp8(y, group_size, scale_ue8m0)
    return q, scales, summed


def _check(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor,
           residual: torch.Tensor, weight: torch.Tensor, group_size: int,
           eps: float = 1e-6, scale_ue8m0: bool = False,
           enable_pdl: bool | None = None) -> None:
    op = "fused_add_rmsnorm_quant_fp8"
    check_group_quant(op, q, scales, input, group_size)
    hidden = input.size(-1)
    if hidden > MAX_HIDDEN:
        fail(op, "input", f"hidden ({hidden}) must be at most {MAX_HIDDEN}")
    if residual.shape != input.shape or residual.dtype != input.dtype \
            or residual.device != input.device:
        fail(op, "residual", f"must be {input.dtype} {list(input.shape)} like input, got "
             f"{residual.dtype} {list(residual.shape)}")
    if hidden and residual.stride(-1) != 1:
        fail(op, "residual", "must have a contiguous last dim")
    if weight.shape != (hidden,) or weight.dtype != input.dtype or not weight.is_contiguous():
        fail(op, "weight", f"must be a contiguous {input.dtype} [{hidden}], got "
             f"{weight.dtype} {list(weight.shape)}")


def _cpu(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor,
         residual: torch.Tensor, weight: torch.Tensor, group_size: int, eps: float = 1e-6,
         scale_ue8m0: bool = False, enable_pdl: bool | None = None) -> None:
    _check(q, scales, input, residual, weight, group_size)
    if input.numel() == 0:
        return
    ref_q, ref_s, summed = reference_fused_add_rmsnorm_quant_fp8(
        input, residual, weight, group_size, eps, scale_ue8m0)
    q.copy_(ref_q)
    scales.copy_(ref_s)
    residual.copy_(summed)


def launch_fused_add_rmsnorm_quant_fp8(q: torch.Tensor, scales: torch.Tensor,
                                       input: torch.Tensor, residual: torch.Tensor,
                                       weight: torch.Tensor, group_size: int, eps: float,
                                       scale_ue8m0: bool, pdl: bool) -> None:
    """The Triton launch (also used directly by the interpreter tests on the CPU)."""
    from ...triton.per_token_group_quant import fused_add_rmsnorm_quant_fp8_kernel

    rows, hidden = input.shape
    if rows == 0 or hidden == 0:
        return
    block = next_pow2(hidden)
    extra = {"launch_pdl": True} if pdl else {}
    fused_add_rmsnorm_quant_fp8_kernel[(rows,)](
        input, residual, weight, q, scales, hidden, input.stride(0), residual.stride(0),
        q.stride(0), scales.stride(0), scales.stride(1), eps, EPS, FP8_MAX, BLOCK=block,
        GROUP=group_size, UE8M0=scale_ue8m0, USE_PDL=pdl,
        EXACT_ROUNDING=input.device.type == "cpu", num_warps=min(16, max(4, block // 512)),
        **extra)


def _cuda(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor,
          residual: torch.Tensor, weight: torch.Tensor, group_size: int, eps: float = 1e-6,
          scale_ue8m0: bool = False, enable_pdl: bool | None = None) -> None:
    _check(q, scales, input, residual, weight, group_size)
    launch_fused_add_rmsnorm_quant_fp8(q, scales, input, residual, weight, group_size, eps,
                                       scale_ue8m0, use_pdl(enable_pdl, input.device))


def fused_add_rmsnorm_quant_fp8(input: torch.Tensor, residual: torch.Tensor,
                                weight: torch.Tensor, group_size: int = 128,
                                eps: float = 1e-6, *, column_major_scales: bool = False,
                                scale_ue8m0: bool = False, enable_pdl: bool | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """residual += input in place; returns (q, scales) of rmsnorm(residual) in FP8 with
    per-token-group scales (column_major_scales: stored M-major)."""
    q, scales = empty_group_quant(input.shape[0], input.shape[-1], group_size,
                                  column_major_scales, input.device)
    torch.ops.fuseinfer.fused_add_rmsnorm_quant_fp8(
        q, scales, input, residual, weight, group_size, eps=eps, scale_ue8m0=scale_ue8m0,
        enable_pdl=enable_pdl)
    return q, scales


define(_SCHEMA)
impl_cpu("fused_add_rmsnorm_quant_fp8", _cpu)
impl_fake("fused_add_rmsnorm_quant_fp8", _check)
LIB.impl("fused_add_rmsnorm_quant_fp8", _cuda, "CUDA")


__all__ = ["fused_add_rmsnorm_quant_fp8"]
