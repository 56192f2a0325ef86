"""clamped_swiglu_and_mul: GPT-OSS's clamped SwiGLU of a fused gate/up projection.

    g = min(gate, limit);  u = clamp(up, -limit, limit)
    out = (u + 1) * g * sigmoid(alpha * g)        for input = [gate | up], [tokens, 2 * inner]

(GPT-OSS: alpha = 1.702, limit = 7.0; the gate is clamped from above only.) Math in fp32,
the output rounded once. input and out are 2-D with a contiguous last dim (any row
stride); dtypes bf16, fp16 or fp32, both the same; limit > 0. CUDA: one Triton pass over
the input (programmatic dependent launch on sm_90+ unless enable_pdl=False); CPU: the
reference below. fused_moe runs it between its grouped GEMMs for activation="clamped_swiglu".
"""

from __future__ import annotations

import math

import torch

from ..arg_checks import fail
from ..library import LIB, define, impl_cpu, impl_fake
from ..triton_launch import use_pdl
from .gate_up import check_gate_up, gate_up_launch, gate_up_out

OP = "clamped_swiglu_and_mul"
_SCHEMA = (f"{OP}(Tensor(a!) out, Tensor input, float alpha=1.702, float limit=7.0, "
           "bool? enable_pdl=None) -> ()")
ALPHA = 1.702  # GPT-OSS's defaults
LIMIT = 7.0


def reference_clamped_swiglu_and_mul(x: torch.Tensor, alpha: float = ALPHA,
                                     limit: float = LIMIT) -> torch.Tensor:
    """The semantics in float32: the CPU kernel and the test oracle."""
    gate, up = x.float().chunk(2, dim=-1)
    g = gate.clamp(max=limit)
    u = up.clamp(-limit, limit)
    return (u + 1) * g * torch.sigmoid(alpha * g)


def check_clamped_swiglu_args(op: str, alpha: float, limit: float,
                              names: tuple[str, str] = ("alpha", "limit")) -> None:
    """alpha finite, limit finite and positive (shared with fused_moe's swiglu_* args)."""
    if not math.isfinite(alpha):
        fail(op, names[0], f"must be finite, got {alpha}")
    if not (math.isfinite(limit) and limit > 0):
        fail(op, names[1], f"must be finite and positive, got {limit}")


def _check(out: torch.Tensor, input: torch.Tensor, alpha: float = ALPHA,
           limit: float = LIMIT, enable_pdl: bool | None = None) -> None:
    check_gate_up(OP, out, input)
    check_clamped_swiglu_args(OP, alpha, limit)


def _cpu(out: torch.Tensor, input: torch.Tensor, alpha: float = ALPHA, limit: float = LIMIT,
         enable_pdl: bool | None = None) -> None:
    _check(out, input, alpha, limit)
    out.copy_(reference_clamped_swiglu_and_mul(input, alpha, limit).to(out.dtype))


def launch_clamped_swiglu_and_mul(out: torch.Tensor, input: torch.Tensor, alpha: float,
                                  limit: float, pdl: bool) -> None:
    """The Triton launch (also used directly by the interpreter tests on the CPU)."""
    from ...triton.clamped_swiglu import clamped_swiglu_kernel

    launch = gate_up_launch(out)
    if launch is None:
        return
    grid, block = launch
    extra = {"launch_pdl": True} if pdl else {}
    clamped_swiglu_kernel[grid](
        input, out, out.size(1), input.stride(0), out.stride(0), float(alpha), float(limit),
        BLOCK=block, USE_PDL=pdl, num_warps=4, **extra)


def _cuda(out: torch.Tensor, input: torch.Tensor, alpha: float = ALPHA, limit: float = LIMIT,
          enable_pdl: bool | None = None) -> None:
    _check(out, input, alpha, limit)
    launch_clamped_swiglu_and_mul(out, input, alpha, limit, use_pdl(enable_pdl, input.device))


def clamped_swiglu_and_mul(input: torch.Tensor, alpha: float = ALPHA, limit: float = LIMIT,
                           out: torch.Tensor | None = None,
                           enable_pdl: bool | None = None) -> torch.Tensor:
    """GPT-OSS's clamped SwiGLU of input [tokens, 2 * inner] = [gate | up]; returns out
    [tokens, inner]."""
    if out is None:
        out = gate_up_out(input)
    torch.ops.fuseinfer.clamped_swiglu_and_mul(out, input, alpha, limit,
                                               enable_pdl=enable_pdl)
    return out


define(_SCHEMA)
impl_cpu(OP, _cpu)
impl_fake(OP, _check)
LIB.impl(OP, _cuda, "CUDA")


__all__ = ["clamped_swiglu_and_mul"]
