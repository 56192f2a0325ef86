"""Triton kernel: RMSNorm of every q head and k head of a token in place (Qwen3's q/k
norm), one launch for both, on rows that may be strided views of the fused qkv output."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def qk_rmsnorm_kernel(QK, Wq, Wk, stride_row, num_q_heads, total_heads, eps,
                      HEAD_DIM: tl.constexpr, HEADS: tl.constexpr, USE_PDL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * HEADS + tl.arange(0, HEADS)
    dims = tl.arange(0, HEAD_DIM)
    live = (heads < total_heads)[:, None]
    ptrs = QK + row * stride_row + heads[:, None] * HEAD_DIM + dims[None, :]
    wq = tl.load(Wq + dims).to(tl.float32)
    wk = tl.load(Wk + dims).to(tl.float32)
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    x = tl.load(ptrs, mask=live, other=0.0).to(tl.float32)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    scale = tl.rsqrt(tl.sum(x * x, axis=1) / HEAD_DIM + eps)
    w = tl.where((heads < num_q_heads)[:, None], wq[None, :], wk[None, :])
    tl.store(ptrs, (x * scale[:, None] * w).to(QK.dtype.element_ty), mask=live)
