"""silu_and_mul_quant_fp8: the SwiGLU activation straight to FP8 with per-token-group
scales, the input of an FP8 down projection, in one pass (the activation is never written
in 16 bits and read again).

    y = silu(gate) * up             for input = [gate | up], [tokens, 2 * inner], in fp32
    (q, scales) = per_token_group_quant_fp8(y, group_size, scale_ue8m0)

inner must be a multiple of group_size (a power of two, 16..1024); input bf16, fp16 or
fp32 with a contiguous last dim. CUDA: one Triton pass (PDL on sm_90+ unless
enable_pdl=False); CPU: the reference below.
"""

from __future__ import annotations

import torch

from ..activation.silu_and_mul import reference_silu_and_mul
from ..arg_checks import fail
from ..library import LIB, define, impl_cpu, impl_fake
from ..triton_launch import use_pdl
from .per_token_group_quant_fp8 import (
    empty_group_quant,
    launch_groups,
    reference_per_token_group_quant_fp8,
)
from .quant_checks import check_group_quant

_SCHEMA = ("silu_and_mul_quant_fp8(Tensor(a!) q, Tensor(b!) scales, Tensor input, "
           "int group_size, bool scale_ue8m0=False, bool? enable_pdl=None) -> ()")


def reference_silu_and_mul_quant_fp8(x: torch.Tensor, group_size: int,
                                     scale_ue8m0: bool = False
                                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The semantics in float32 (SwiGLU not rounded before quantization): the CPU kernel
    and the test oracle."""
    return reference_per_token_group_quant_fp8(reference_silu_and_mul(x), group_size,
                                               scale_ue8m0)


def _check(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor, group_size: int,
           scale_ue8m0: bool = False, enable_pdl: bool | None = None) -> None:
    op = "silu_and_mul_quant_fp8"
    if input.dim() != 2 or input.size(1) % 2:
        fail(op, "input", f"must be [tokens, 2 * inner], got {list(input.shape)}")
    # the quantization's checks, on the activation's shape (the gate half stands for it)
    check_group_quant(op, q, scales, input[:, :input.size(1) // 2], group_size)


def _cpu(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor, group_size: int,
         scale_ue8m0: bool = False, enable_pdl: bool | None = None) -> None:
    _check(q, scales, input, group_size)
    if input.numel() == 0:
        return
    ref_q, ref_s = reference_silu_and_mul_quant_fp8(input, group_size, scale_ue8m0)
    q.copy_(ref_q)
    scales.copy_(ref_s)


def launch_silu_and_mul_quant_fp8(q: torch.Tensor, scales: torch.Tensor,
                                  input: torch.Tensor, group_size: int, scale_ue8m0: bool,
                                  pdl: bool) -> None:
    """The Triton launch (also used directly by the interpreter tests on the CPU)."""
    from ...triton.per_token_group_quant import silu_and_mul_quant_fp8_kernel

    rows, inner = q.shape
    groups = inner // group_size
    if rows == 0 or groups == 0:
        return
    launch_groups(silu_and_mul_quant_fp8_kernel, (input, q, scales, inner, groups), q,
                  scales, input, groups, group_size, scale_ue8m0, pdl)


def _cuda(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor, group_size: int,
          scale_ue8m0: bool = False, enable_pdl: bool | None = None) -> None:
    _check(q, scales, input, group_size)
    launch_silu_and_mul_quant_fp8(q, scales, input, group_size, scale_ue8m0,
                                  use_pdl(enable_pdl, input.device))


def silu_and_mul_quant_fp8(input: torch.Tensor, group_size: int = 128, *,
                           column_major_scales: bool = False, scale_ue8m0: bool = False,
                           enable_pdl: bool | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(q float8_e4m3fn [M, inner], scales float32 [M, inner / group_size]) of
    silu(gate) * up for input [M, 2 * inner]; column_major_scales stores the scales M-major."""
    q, scales = empty_group_quant(input.shape[0], input.shape[-1] // 2, group_size,
                                  column_major_scales, input.device)
    torch.ops.fuseinfer.silu_and_mul_quant_fp8(q, scales, input, group_size,
                                               scale_ue8m0=scale_ue8m0,
                                               enable_pdl=enable_pdl)
    return q, scales


define(_SCHEMA)
impl_cpu("silu_and_mul_quant_fp8", _cpu)
impl_fake("silu_and_mul_quant_fp8", _check)
LIB.impl("silu_and_mul_quant_fp8", _cuda, "CUDA")


__all__ = ["silu_and_mul_quant_fp8"]
