"""small_batch_linear: out = x @ weight.T for decode steps of a few tokens.

    x [M, K] (M <= 8), weight [N, K] (nn.Linear layout), out [M, N]; bf16/fp16/fp32, all
    the same; last dims contiguous; fp32 accumulation, rounded once.

silu_mul=True: x is [M, 2K] = [gate | up] and the matmul takes silu(gate) * up (rounded
to x's dtype), so a decode step's MLP activation needs no kernel of its own.
norm_weight: the matmul takes rmsnorm(x) * norm_weight (eps). With residual too it takes
rmsnorm(x + residual) * norm_weight and writes x + residual to residual_out (a tensor
other than residual): the fused_add_rmsnorm before a projection, folded into it.

At M <= 8 a matmul only streams the weight. The CUDA path (Triton) loads each program's
weight rows before waiting on the previous kernel, so with PDL the weight read overlaps
that kernel instead of following it; K is padded to a power of two and must be <= 16384.
Larger M belongs to cuBLAS (torch.matmul). CPU: the reference below.
"""

from __future__ import annotations

import torch

from ..arg_checks import fail, has_storage
from ..library import LIB, define, impl_cpu, impl_fake
from ..triton_launch import next_pow2, use_pdl

_SCHEMA = ("small_batch_linear(Tensor(a!) out, Tensor x, Tensor weight, bool silu_mul=False, "
           "Tensor? norm_weight=None, Tensor? residual=None, Tensor(b!)? residual_out=None, "
           "float eps=1e-06, bool? enable_pdl=None) -> ()")
MAX_M = 8
MAX_K = 16384
_TILE = 16384  # weight elements per program (K_PAD * BLOCK_N), held in registers


def reference_small_batch_linear(x: torch.Tensor, weight: torch.Tensor,
                                 silu_mul: bool = False, norm_weight: torch.Tensor | None = None,
                                 residual: torch.Tensor | None = None, eps: float = 1e-6
                                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(float32 out, the new residual or None), each prologue rounded to x's dtype as its
    own kernel would store it: the CPU kernel and the test oracle."""
    if silu_mul:
        from ..activation.silu_and_mul import reference_silu_and_mul

        x = reference_silu_and_mul(x).to(x.dtype)
    new_residual = None
    if residual is not None:
        x = new_residual = (x.float() + residual.float()).to(x.dtype)
    if norm_weight is not None:
        from ..norm.rmsnorm import reference_rmsnorm

        x = reference_rmsnorm(x, norm_weight, eps).to(x.dtype)
    return x.float() @ weight.float().t(), new_residual


def _check(out, x, weight, silu_mul=False, norm_weight=None, residual=None,
           residual_out=None, eps=1e-6, enable_pdl=None) -> None:
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
    if norm_weight is None and (residual is not None or residual_out is not None):
        fail(op, "residual", "needs norm_weight (the add feeds an RMSNorm)")
    if norm_weight is not None and (norm_weight.shape != (k,) or norm_weight.dtype != x.dtype):
        fail(op, "norm_weight", f"must be [{k}] {x.dtype}, got {list(norm_weight.shape)} "
             f"{norm_weight.dtype}")
    if (residual is None) != (residual_out is None):
        fail(op, "residual_out", "and residual go together")
    for name, t in (("residual", residual), ("residual_out", residual_out)):
        if t is not None and (list(t.shape) != [x.size(0), k] or t.dtype != x.dtype
                              or (k > 1 and t.stride(1) != 1)):
            fail(op, name, f"must be [{x.size(0)}, {k}] {x.dtype} with a contiguous last "
                 f"dim, got {list(t.shape)} {t.dtype}")
    if residual is not None and residual_out is not None and has_storage(residual) and \
            residual.numel() and residual.data_ptr() == residual_out.data_ptr():
        fail(op, "residual_out", "must not be residual: other programs still read it")
    if norm_weight is not None and not eps > 0:
        fail(op, "eps", f"must be > 0, got {eps}")


def _cpu(out, x, weight, silu_mul=False, norm_weight=None, residual=None, residual_out=None,
         eps=1e-6, enable_pdl=None) -> None:
    _check(out, x, weight, silu_mul, norm_weight, residual, residual_out, eps)
    y, new_residual = reference_small_batch_linear(x, weight, silu_mul, norm_weight, residual,
                                                   eps)
    out.copy_(y.to(out.dtype))
    if residual_out is not None:
        residual_out.copy_(new_residual)


def launch_small_batch_linear(out, x, weight, pdl: bool, silu_mul: bool = False,
                              norm_weight=None, residual=None, residual_out=None,
                              eps: float = 1e-6) -> None:
    """The Triton launch (also used directly by the interpreter tests on the CPU)."""
    from ...triton.small_batch_linear import gemv_kernel

    m, n, k = x.size(0), weight.size(0), weight.size(1)
    if m == 0 or n == 0:
        return
    k_pad = next_pow2(k)
    block_n = max(1, min(64, _TILE // k_pad))
    extra = {"launch_pdl": True} if pdl else {}
    norm = 0 if norm_weight is None else (1 if residual is None else 2)
    gemv_kernel[(-(-n // block_n),)](
        x, weight, out, residual if residual is not None else x,
        norm_weight if norm_weight is not None else x,
        residual_out if residual_out is not None else out, m, n, k, x.stride(0),
        weight.stride(0), out.stride(0), residual.stride(0) if residual is not None else 0,
        residual_out.stride(0) if residual_out is not None else 0, eps,
        BLOCK_N=block_n, K_PAD=k_pad, M_MAX=MAX_M, SILU_MUL=silu_mul, NORM=norm, USE_PDL=pdl,
        num_warps=8, **extra)


def _cuda(out, x, weight, silu_mul=False, norm_weight=None, residual=None, residual_out=None,
          eps=1e-6, enable_pdl=None) -> None:
    _check(out, x, weight, silu_mul, norm_weight, residual, residual_out, eps)
    launch_small_batch_linear(out, x, weight, use_pdl(enable_pdl, x.device), silu_mul,
                              norm_weight, residual, residual_out, eps)


def small_batch_linear(x: torch.Tensor, weight: torch.Tensor, silu_mul: bool = False,
                       norm_weight: torch.Tensor | None = None,
                       residual: torch.Tensor | None = None, eps: float = 1e-6,
                       enable_pdl: bool | None = None
                       ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x @ weight.T for x of at most MAX_M rows, with the optional prologues (module doc).
    Returns out, or (out, the new residual x + residual) when residual is given."""
    out = torch.empty(x.size(0), weight.size(0), dtype=x.dtype, device=x.device)
    residual_out = torch.empty_like(residual) if residual is not None else None
    torch.ops.fuseinfer.small_batch_linear(out, x, weight, silu_mul=silu_mul,
                                           norm_weight=norm_weight, residual=residual,
                                           residual_out=residual_out, eps=eps,
                                           enable_pdl=enable_pdl)
    return out if residual_out is None else (out, residual_out)


define(_SCHEMA)
impl_cpu("small_batch_linear", _cpu)
impl_fake("small_batch_linear", _check)
LIB.impl("small_batch_linear", _cuda, "CUDA")


__all__ = ["small_batch_linear"]
