"""small_batch_linear: out = x @ weight.T for decode steps of a few tokens.

    x [M, K] (M <= 8), weight [N, K] (nn.Linear layout), out [M, N]; bf16/fp16/fp32, all
    the same; last dims contiguous; fp32 accumulation, rounded once.

silu_mul=True: x is [M, 2K] = [gate | up] and the matmul takes silu(gate) * up (rounded
to x's dtype), so a decode step's MLP activation needs no kernel of its own.

At M <= 8 a matmul only streams the weight. The CUDA path (Triton) loads each program's
weight rows before waiting on the previous kernel, so with PDL the weight read overlaps
that kernel instead of following it; K is padded to a power of two and must be <= 16384.
Larger M belongs to cuBLAS (torch.matmul). CPU: the reference below.
"""

from __future__ import annotations

import torch

from .activation import pdl_default, triton_next_pow2
from .arg_checks import fail
from .library import LIB, define, impl_cpu, impl_fake

_SCHEMA = ("small_batch_linear(Tensor(a!) out, Tensor x, Tensor weight, bool silu_mul=False, "
           "bool? enable_pdl=None) -> ()")
MAX_M = 8
MAX_K = 16384
_TILE = 16384  # weight elements per program (K_PAD * BLOCK_N), held in registers


def reference_small_batch_linear(x: torch.Tensor, weight: torch.Tensor,
                                 silu_mul: bool = False) -> torch.Tensor:
    """float32 x @ weight.T (of silu(gate) * up in x's dtype when silu_mul): the CPU kernel
    and the test oracle."""
    if silu_mul:
        from .activation import reference_silu_and_mul

        x = reference_silu_and_mul(x).to(x.dtype)
    return x.float() @ weight.float().t()


def _check(out, x, weight, silu_mul=False, enable_pdl=None) -> None:
    op = "small_batch_linear"
    if x.dim() != 2 or not 0 <= x.size(0) <= MAX_M:
        fail(op, "x", f"must be [M, K] with M <= {MAX_M}, got {list(x.shape)}")
    k = x.size(1) // 2 if silu_mul else x.size(1)
    if silu_mul and x.size(1) % 2:
        fail(op, "x", f"must be [M, 2K] = [gate | up] with silu_mul, got {list(x.shape)}")
    if weight.dim() != 2 or weight.size(1) != k:
        fail(op, "weight", f"must be [N, {k}], got {list(weight.shape)}")
    if not 1 <= k <= MAX_K:
        fail(op, "x", f"K must be in [1, {MAX_K}], got {k}")
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32) or \
            weight.dtype != x.dtype or out.dtype != x.dtype:
        fail(op, "weight", f"x, weight and out must share a float dtype, got {x.dtype}, "
             f"{weight.dtype}, {out.dtype}")
    if list(out.shape) != [x.size(0), weight.size(0)]:
        fail(op, "out", f"must be [{x.size(0)}, {weight.size(0)}], got {list(out.shape)}")
    for name, t in (("x", x), ("weight", weight), ("out", out)):
        if t.size(1) > 1 and t.stride(1) != 1:
            fail(op, name, "must have a contiguous last dim")


def _cpu(out, x, weight, silu_mul=False, enable_pdl=None) -> None:
    _check(out, x, weight, silu_mul)
    out.copy_(reference_small_batch_linear(x, weight, silu_mul).to(out.dtype))


def launch_small_batch_linear(out, x, weight, pdl: bool, silu_mul: bool = False) -> None:
    """The Triton launch (also used directly by the interpreter tests on the CPU)."""
    from ..triton.gemv import gemv_kernel

    m, n, k = x.size(0), weight.size(0), weight.size(1)
    if m == 0 or n == 0:
        return
    k_pad = triton_next_pow2(k)
    block_n = max(1, min(64, _TILE // k_pad))
    extra = {"launch_pdl": True} if pdl else {}
    gemv_kernel[(-(-n // block_n),)](
        x, weight, out, m, n, k, x.stride(0), weight.stride(0), out.stride(0),
        BLOCK_N=block_n, K_PAD=k_pad, M_MAX=MAX_M, SILU_MUL=silu_mul, USE_PDL=pdl,
        num_warps=8, **extra)


def _cuda(out, x, weight, silu_mul=False, enable_pdl=None) -> None:
    _check(out, x, weight, silu_mul)
    launch_small_batch_linear(out, x, weight, pdl_default(enable_pdl, x.device), silu_mul)


def small_batch_linear(x: torch.Tensor, weight: torch.Tensor, silu_mul: bool = False,
                       enable_pdl: bool | None = None) -> torch.Tensor:
    """x @ weight.T for x of at most MAX_M rows (see silu_mul); returns a new tensor."""
    out = torch.empty(x.size(0), weight.size(0), dtype=x.dtype, device=x.device)
    torch.ops.fuseinfer.small_batch_linear(out, x, weight, silu_mul=silu_mul,
                                           enable_pdl=enable_pdl)
    return out


define(_SCHEMA)
impl_cpu("small_batch_linear", _cpu)
impl_fake("small_batch_linear", _check)
LIB.impl("small_batch_linear", _cuda, "CUDA")
