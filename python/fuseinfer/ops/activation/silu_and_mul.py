"""silu_and_mul: the SwiGLU activation of a fused gate/up projection.

    out = silu(gate) * up        for input = [gate | up], [tokens, 2 * inner]

Math in fp32, the output rounded once. input and out are 2-D with a contiguous last dim
(any row stride); dtypes bf16, fp16 or fp32, both the same. CUDA: one Triton pass over the
input (programmatic dependent launch on sm_90+ unless enable_pdl=False); CPU: the
reference below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..library import LIB, define, impl_cpu, impl_fake
from ..triton_launch import use_pdl
from .gate_up import check_gate_up, gate_up_launch, gate_up_out

_SCHEMA = "silu_and_mul(Tensor(a!) out, Tensor input, bool? enable_pdl=None) -> ()"


def reference_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """The semantics in float32: the CPU kernel and the test oracle."""
    gate, up = x.float().chunk(2, dim=-1)
    return F.silu(gate) * up


def _check(out: torch.Tensor, input: torch.Tensor, enable_pdl: bool | None = None) -> None:
    check_gate_up("silu_and_mul", out, input)


def _cpu(out: torch.Tensor, input: torch.Tensor, enable_pdl: bool | None = None) -> None:
    _check(out, input)
    out.copy_(reference_silu_and_mul(input).to(out.dtype))


def launch_silu_and_mul(out: torch.Tensor, input: torch.Tensor, pdl: bool) -> None:
    """The Triton launch (also used directly by the interpreter tests on the CPU)."""
    from ...triton.silu_and_mul import silu_and_mul_kernel

    launch = gate_up_launch(out)
    if launch is None:
        return
    grid, block = launch
    extra = {"launch_pdl": True} if pdl else {}
    silu_and_mul_kernel[grid](
        input, out, out.size(1), input.stride(0), out.stride(0), BLOCK=block, USE_PDL=pdl,
        num_warps=4, **extra)


def _cuda(out: torch.Tensor, input: torch.Tensor, enable_pdl: bool | None = None) -> None:
    _check(out, input)
    launch_silu_and_mul(out, input, use_pdl(enable_pdl, input.device))


def silu_and_mul(input: torch.Tensor, out: torch.Tensor | None = None,
                 enable_pdl: bool | None = None) -> torch.Tensor:
    """silu(gate) * up of input [tokens, 2 * inner] = [gate | up]; returns out."""
    if out is None:
        out = gate_up_out(input)
    torch.ops.fuseinfer.silu_and_mul(out, input, enable_pdl=enable_pdl)
    return out


define(_SCHEMA)
impl_cpu("silu_and_mul", _cpu)
impl_fake("silu_and_mul", _check)
LIB.impl("silu_and_mul", _cuda, "CUDA")


__all__ = ["silu_and_mul"]
