"""per_token_group_quant_int8: dynamic int8 quantization with one scale per token and group
of `group_size` channels (the int8 twin of per_token_group_quant_fp8).

    scale[m, g] = max(amax(|x[m, g*G : (g+1)*G]|), 1e-10) / 127
    q[m, k]     = round_half_even(clamp(x[m, k] / scale[m, k // G], -128, 127))

Same arguments, layouts and checks as the FP8 op (q is int8). CUDA: one Triton pass;
CPU: the reference below.
"""

from __future__ import annotations

import torch

from ..library import LIB, define, impl_cpu, impl_fake
from ..triton_launch import use_pdl
from .per_token_group_quant_fp8 import (
    EPS,
    divided,
    empty_group_quant,
    launch_groups,
)
from .quant_checks import check_group_quant

_SCHEMA = ("per_token_group_quant_int8(Tensor(a!) q, Tensor(b!) scales, Tensor input, "
           "int group_size, bool? enable_pdl=None) -> ()")
INT8_MAX = 127.0


def reference_per_token_group_quant_int8(x: torch.Tensor, group_size: int
                                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """The semantics in float32: (q int8 [M, K], scales float32 [M, K / G])."""
    m, k = x.shape
    groups = x.float().reshape(m, k // group_size, group_size)
    scale = divided(groups.abs().amax(dim=-1).clamp_min(EPS), INT8_MAX)
    q = torch.round((groups / scale[..., None]).clamp(-INT8_MAX - 1, INT8_MAX))
    return q.to(torch.int8).reshape(m, k), scale


def _check(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor, group_size: int,
           enable_pdl: bool | None = None) -> None:
    check_group_quant("per_token_group_quant_int8", q, scales, input, group_size,
                      q_dtype=torch.int8)


def _cpu(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor, group_size: int,
         enable_pdl: bool | None = None) -> None:
    _check(q, scales, input, group_size)
    if input.numel() == 0:
        return
    ref_q, ref_s = reference_per_token_group_quant_int8(input, group_size)
    q.copy_(ref_q)
    scales.copy_(ref_s)


def launch_per_token_group_quant_int8(q: torch.Tensor, scales: torch.Tensor,
                                      input: torch.Tensor, group_size: int, pdl: bool) -> None:
    """The Triton launch (also used directly by the interpreter tests on the CPU)."""
    from ...triton.per_token_group_quant import per_token_group_quant_kernel

    rows, k = input.shape
    groups = k // group_size
    if rows == 0 or groups == 0:
        return
    launch_groups(per_token_group_quant_kernel, (input, q, scales, groups), q, scales,
                  input, groups, group_size, False, pdl, qmax=INT8_MAX, INT8=True)


def _cuda(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor, group_size: int,
          enable_pdl: bool | None = None) -> None:
    _check(q, scales, input, group_size)
    launch_per_token_group_quant_int8(q, scales, input, group_size,
                                      use_pdl(enable_pdl, input.device))


def per_token_group_quant_int8(input: torch.Tensor, group_size: int = 128, *,
                               column_major_scales: bool = False,
                               enable_pdl: bool | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 [M, K], scales float32 [M, K / group_size]) of input [M, K]."""
    q, scales = empty_group_quant(input.shape[0], input.shape[-1], group_size,
                                  column_major_scales, input.device, torch.int8)
    torch.ops.fuseinfer.per_token_group_quant_int8(q, scales, input, group_size,
                                                   enable_pdl=enable_pdl)
    return q, scales


define(_SCHEMA)
impl_cpu("per_token_group_quant_int8", _cpu)
impl_fake("per_token_group_quant_int8", _check)
LIB.impl("per_token_group_quant_int8", _cuda, "CUDA")


__all__ = ["per_token_group_quant_int8"]
