"""per_token_quant_fp8: dynamic FP8 (e4m3) quantization with one scale per token (row),
the activation side of per-token x per-channel scaled FP8 GEMMs.

    scale[m] = max(amax(|x[m, :]|), 1e-10) / 448
    q[m, k]  = fp8(clamp(x[m, k] / scale[m], -448, 448))     (round to nearest even)

input [M, K] bf16, fp16 or fp32 with a contiguous last dim (any row stride); q [M, K]
float8_e4m3fn with a contiguous last dim; scales float32 [M, 1] (any strides). Math in
fp32. CUDA: one Triton program per row, an amax pass then a quantize pass (PDL on sm_90+
unless enable_pdl=False); CPU: the reference below.
"""

from __future__ import annotations

import torch

from ..arg_checks import fail
from ..library import LIB, define, impl_cpu, impl_fake
from ..triton_launch import next_pow2, use_pdl
from .per_token_group_quant_fp8 import EPS, FP8_MAX, divided
from .quant_checks import FP8, check_rows_quant

_SCHEMA = ("per_token_quant_fp8(Tensor(a!) q, Tensor(b!) scales, Tensor input, "
           "bool? enable_pdl=None) -> ()")
OP = "per_token_quant_fp8"


def reference_per_token_quant_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The semantics in float32: (q float8_e4m3fn [M, K], scales float32 [M, 1])."""
    xf = x.float()
    scale = divided(xf.abs().amax(dim=-1, keepdim=True).clamp_min(EPS), FP8_MAX)
    return (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def _check(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor,
           enable_pdl: bool | None = None) -> None:
    check_rows_quant(OP, q, input)
    m = input.size(0)
    if list(scales.shape) != [m, 1] or scales.dtype != torch.float32 \
            or scales.device != input.device:
        fail(OP, "scales", f"must be float32 [{m}, 1] on {input.device}, got "
             f"{scales.dtype} {list(scales.shape)} on {scales.device}")


def _cpu(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor,
         enable_pdl: bool | None = None) -> None:
    _check(q, scales, input)
    if input.numel() == 0:
        return
    ref_q, ref_s = reference_per_token_quant_fp8(input)
    q.copy_(ref_q)
    scales.copy_(ref_s)


def launch_per_token_quant_fp8(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor,
                               pdl: bool) -> None:
    """The Triton launch (also used directly by the interpreter tests on the CPU)."""
    from ...triton.fp8_quant import per_token_quant_fp8_kernel

    rows, k = input.shape
    if rows == 0 or k == 0:
        return
    block = min(next_pow2(k), 4096)
    extra = {"launch_pdl": True} if pdl else {}
    per_token_quant_fp8_kernel[(rows,)](
        input, q, scales, k, input.stride(0), q.stride(0), scales.stride(0), EPS, FP8_MAX,
        BLOCK=block, USE_PDL=pdl, EXACT_ROUNDING=input.device.type == "cpu",
        num_warps=min(8, max(4, block // 512)), **extra)


def _cuda(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor,
          enable_pdl: bool | None = None) -> None:
    _check(q, scales, input)
    launch_per_token_quant_fp8(q, scales, input, use_pdl(enable_pdl, input.device))


def per_token_quant_fp8(input: torch.Tensor, *, enable_pdl: bool | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(q float8_e4m3fn [M, K], scales float32 [M, 1]) of input [M, K], one scale per
    row."""
    m = input.shape[0]
    q = torch.empty(input.shape, dtype=FP8, device=input.device)
    scales = torch.empty(m, 1, dtype=torch.float32, device=input.device)
    torch.ops.fuseinfer.per_token_quant_fp8(q, scales, input, enable_pdl=enable_pdl)
    return q, scales


define(_SCHEMA)
impl_cpu(OP, _cpu)
impl_fake(OP, _check)
LIB.impl(OP, _cuda, "CUDA")


__all__ = ["per_token_quant_fp8"]
