"""Triton kernel: out[m] = W @ x[m] for a handful of rows x (decode at small batch).

Each program owns BLOCK_N rows of W [N, K] and loads them whole (K padded to a power of
two) before it waits on the previous kernel (PDL): the weight stream, which does not
depend on that kernel, overlaps its tail. Then each of the up to M_MAX input rows is read
and reduced in fp32 against the tile held in registers.

Prologues, so a 1-token step needs no separate kernel for them:
- SILU_MUL: each x row is [gate | up] (2K wide); x = silu(gate) * up.
- NORM 1: x = rmsnorm(x) * norm_w. NORM 2: r = x + residual, x = rmsnorm(r) * norm_w, and
  program 0 stores r to ResOut (a separate buffer: the others still read the old residual).
Each intermediate is rounded to x's dtype where the separate kernel would have stored it.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def gemv_kernel(X, W, Out, Res, NormW, ResOut, M, N, K, stride_xm, stride_wn, stride_om,
                stride_rm, stride_rom, eps,
                BLOCK_N: tl.constexpr, K_PAD: tl.constexpr, M_MAX: tl.constexpr,
                SILU_MUL: tl.constexpr, NORM: tl.constexpr, USE_PDL: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, K_PAD)
    kmask = ks < K
    w = tl.load(W + rows[:, None].to(tl.int64) * stride_wn + ks[None, :],
                mask=(rows < N)[:, None] & kmask[None, :], other=0.0).to(tl.float32)
    if NORM > 0:
        norm_w = tl.load(NormW + ks, mask=kmask, other=0.0).to(tl.float32)
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    for m in tl.static_range(M_MAX):
        if m < M:
            x = tl.load(X + m * stride_xm + ks, mask=kmask, other=0.0).to(tl.float32)
            if SILU_MUL:
                up = tl.load(X + m * stride_xm + K + ks, mask=kmask, other=0.0)
                x = (x / (1.0 + tl.exp(-x)) * up.to(tl.float32)).to(X.dtype.element_ty)
                x = x.to(tl.float32)
            if NORM == 2:
                res = tl.load(Res + m * stride_rm + ks, mask=kmask, other=0.0)
                x = (x + res.to(tl.float32)).to(X.dtype.element_ty)
                if pid == 0:
                    tl.store(ResOut + m * stride_rom + ks, x, mask=kmask)
                x = x.to(tl.float32)
            if NORM > 0:
                scale = tl.rsqrt(tl.sum(x * x, axis=0) / K + eps)
                x = (x * scale * norm_w).to(X.dtype.element_ty).to(tl.float32)
            y = tl.sum(w * x[None, :], axis=1)
            tl.store(Out + m * stride_om + rows, y.to(Out.dtype.element_ty), mask=rows < N)
