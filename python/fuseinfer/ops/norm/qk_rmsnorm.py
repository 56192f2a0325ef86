"""qk_rmsnorm: Qwen3's per-head RMSNorm of q and k, both in one launch, in place.

    qk [tokens, (num_q_heads + num_k_heads) * head_dim]: each head_dim slice of a row is
    normalized, x * rsqrt(mean(x^2) + eps) * w, with w = q_weight for the first
    num_q_heads heads and k_weight for the rest.

qk may be a strided row view (the q and k columns of the fused qkv projection), so the
rotary embedding and attention read q and k from that buffer with no copies. Math in
fp32, rounded once. head_dim = q_weight.numel() (k_weight the same); the CUDA path (Triton)
needs a power-of-two head_dim up to 512. PDL on sm_90+ unless enable_pdl=False.
"""

from __future__ import annotations

import torch

from ..arg_checks import FLOAT_DTYPES, fail
from ..library import LIB, define, impl_cpu, impl_fake
from ..triton_launch import next_pow2, use_pdl

_SCHEMA = ("qk_rmsnorm(Tensor(a!) qk, Tensor q_weight, Tensor k_weight, int num_q_heads, "
           "float eps=1e-06, bool? enable_pdl=None) -> ()")


def reference_qk_rmsnorm(qk: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                         num_q_heads: int, eps: float) -> torch.Tensor:
    """The normalized rows in float32 (shape of qk): the CPU kernel and the test oracle."""
    d = q_weight.numel()
    x = qk.float().unflatten(1, (-1, d))  # not reshape(tokens, -1, d): fine at 0 tokens
    w = torch.cat([q_weight.float().expand(num_q_heads, d),
                   k_weight.float().expand(x.size(1) - num_q_heads, d)])
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w).reshape(qk.shape)


def _check(qk: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
           num_q_heads: int, eps: float = 1e-6, enable_pdl: bool | None = None) -> None:
    op = "qk_rmsnorm"
    d = q_weight.numel()
    if q_weight.dim() != 1 or k_weight.shape != q_weight.shape or d == 0:
        fail(op, "k_weight", f"and q_weight must be the same 1-D [head_dim], got "
             f"{list(q_weight.shape)} and {list(k_weight.shape)}")
    if qk.dim() != 2 or qk.size(1) % d:
        fail(op, "qk", f"must be [tokens, heads * {d}], got {list(qk.shape)}")
    heads = qk.size(1) // d
    if not 1 <= num_q_heads < heads:
        fail(op, "num_q_heads", f"must be in [1, {heads}) (qk holds {heads} heads)")
    if qk.dtype not in FLOAT_DTYPES:
        fail(op, "qk", f"must be bfloat16, float16 or float32, got {qk.dtype}")
    if q_weight.dtype != qk.dtype or k_weight.dtype != qk.dtype:
        fail(op, "q_weight", f"and k_weight must have qk's dtype {qk.dtype}")
    if qk.size(1) and qk.stride(1) != 1:
        fail(op, "qk", "must have a contiguous last dim")
    if not eps > 0:
        fail(op, "eps", f"must be > 0, got {eps}")


def _cpu(qk, q_weight, k_weight, num_q_heads, eps=1e-6, enable_pdl=None):
    _check(qk, q_weight, k_weight, num_q_heads, eps)
    qk.copy_(reference_qk_rmsnorm(qk, q_weight, k_weight, num_q_heads, eps).to(qk.dtype))


def launch_qk_rmsnorm(qk, q_weight, k_weight, num_q_heads: int, eps: float,
                      pdl: bool) -> None:
    """The Triton launch (also used directly by the interpreter tests on the CPU)."""
    from ...triton.qk_rmsnorm import qk_rmsnorm_kernel

    d = q_weight.numel()
    heads = qk.size(1) // d
    if qk.size(0) == 0:
        return
    per_program = min(8, next_pow2(heads))
    extra = {"launch_pdl": True} if pdl else {}
    qk_rmsnorm_kernel[(qk.size(0), -(-heads // per_program))](
        qk, q_weight, k_weight, qk.stride(0), num_q_heads, heads, eps, HEAD_DIM=d,
        HEADS=per_program, USE_PDL=pdl, num_warps=4, **extra)


def _cuda(qk, q_weight, k_weight, num_q_heads, eps=1e-6, enable_pdl=None):
    _check(qk, q_weight, k_weight, num_q_heads, eps)
    d = q_weight.numel()
    if d & (d - 1) or d > 512:
        fail("qk_rmsnorm", "q_weight", f"head_dim {d}: the CUDA path needs a power of two "
             "<= 512")
    launch_qk_rmsnorm(qk, q_weight, k_weight, num_q_heads, eps,
                      use_pdl(enable_pdl, qk.device))


def qk_rmsnorm(qk: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
               num_q_heads: int, eps: float = 1e-6, enable_pdl: bool | None = None) -> None:
    """Normalize every q and k head of qk in place (see the module doc)."""
    torch.ops.fuseinfer.qk_rmsnorm(qk, q_weight, k_weight, num_q_heads, eps,
                                   enable_pdl=enable_pdl)


define(_SCHEMA)
impl_cpu("qk_rmsnorm", _cpu)
impl_fake("qk_rmsnorm", _check)
LIB.impl("qk_rmsnorm", _cuda, "CUDA")


__all__ = ["qk_rmsnorm"]
