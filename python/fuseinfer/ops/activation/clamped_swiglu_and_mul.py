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
from ..triton_launch import next_pow2, use_pdl

OP = "clamped_swiglu_and_mul"
_SCHEMA = (f"{OP}(Tensor(a!) out, Tensor input, float alpha=1.702, float limit=7.0, "
           "bool? enable_pdl=None) -> ()")
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
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
    if input.dim() != 2 or input.size(1) % 2:
        fail(OP, "input", f"must be [tokens, 2 * inner], got {list(input.shape)}")
    if input.dtype not in _DTYPES:
        fail(OP, "input", f"must be bfloat16, float16 or float32, got {input.dtype}")
    if input.size(1) and input.stride(1) != 1:
        fail(OP, "input", "must have a contiguous last dim")
    want = [input.size(0), input.size(1) // 2]
    if list(out.shape) != want:
        fail(OP, "out", f"must be {want}, got {list(out.shape)}")
    if out.dtype != input.dtype or out.device != input.device:
        fail(OP, "out", f"must be {input.dtype} on {input.device}, got {out.dtype} on "
             f"{out.device}")
    if out.size(1) and out.stride(1) != 1:
        fail(OP, "out", "must have a contiguous last dim")
    check_clamped_swiglu_args(OP, alpha, limit)


def _cpu(out: torch.Tensor, input: torch.Tensor, alpha: float = ALPHA, limit: float = LIMIT,
         enable_pdl: bool | None = None) -> None:
    _check(out, input, alpha, limit)
    out.copy_(reference_clamped_swiglu_and_mul(input, alpha, limit).to(out.dtype))


def launch_clamped_swiglu_and_mul(out: torch.Tensor, input: torch.Tensor, alpha: float,
                                  limit: float, pdl: bool) -> None:
    """The Triton launch (also used directly by the interpreter tests on the CPU)."""
    from ...triton.clamped_swiglu import clamped_swiglu_kernel

    rows, inner = out.shape
    if rows == 0 or inner == 0:
        return
    block = min(1024, next_pow2(inner))
    extra = {"launch_pdl": True} if pdl else {}
    clamped_swiglu_kernel[(rows, -(-inner // block))](
        input, out, inner, input.stride(0), out.stride(0), float(alpha), float(limit),
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
        out = torch.empty(input.size(0), input.size(-1) // 2, dtype=input.dtype,
                          device=input.device)
    torch.ops.fuseinfer.clamped_swiglu_and_mul(out, input, alpha, limit,
                                               enable_pdl=enable_pdl)
    return out


define(_SCHEMA)
impl_cpu(OP, _cpu)
impl_fake(OP, _check)
LIB.impl(OP, _cuda, "CUDA")


__all__ = ["clamped_swiglu_and_mul"]
