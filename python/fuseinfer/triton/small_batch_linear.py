"""Triton kernel: out[m] = W @ x[m] for a handful of rows x (decode at small batch).

A fixed grid of P programs (the table's count) walks W [N, K] in tiles of BLOCK_N whole
rows (K padded to a power of two): program p takes tiles p, p + P, p + 2P, ... Its first
tile is loaded into registers before the wait on the previous kernel (PDL), so the weight
stream, which does not depend on that kernel, overlaps its tail; the others stream through
shared memory STAGES deep (Triton's pipelined loop: asynchronous copies), so every program
keeps tiles in flight while it reduces one.

Prologues, so a 1-token step needs no separate kernel for them:
- SILU_MUL: each x row is [gate | up] (2K wide); x = silu(gate) * up.
- NORM 1: x = rmsnorm(x) * norm_w. NORM 2: r = x + residual, x = rmsnorm(r) * norm_w, and
  program 0 stores r to ResOut (a separate buffer: the others still read the old residual).
Each intermediate is rounded to x's dtype where the separate kernel would have stored it.
Epilogue: HAS_ADD adds Add[m, n] (row stride 0: a bias) in fp32 before the one rounding
(a residual add or a bias folded into the matmul).
With one row (M_MAX 1) the prologue runs once per program, before the walk, and its
result stays in registers; with more rows each tile reads its rows again (L1 hits).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _x_row(X, Res, NormW, ResOut, m, stride_xm, stride_rm, stride_rom, K, eps,
           store_residual, ks, kmask, SILU_MUL: tl.constexpr, NORM: tl.constexpr):
    """Row m of the matmul's input after the prologue, rounded to x's dtype, as fp32
    (store_residual: also store the residual sum)."""
    x = tl.load(X + m * stride_xm + ks, mask=kmask, other=0.0).to(tl.float32)
    if SILU_MUL:
        up = tl.load(X + m * stride_xm + K + ks, mask=kmask, other=0.0)
        x = (x / (1.0 + tl.exp(-x)) * up.to(tl.float32)).to(X.dtype.element_ty)
        x = x.to(tl.float32)
    if NORM == 2:
        res = tl.load(Res + m * stride_rm + ks, mask=kmask, other=0.0)
        x = (x + res.to(tl.float32)).to(X.dtype.element_ty)
        if store_residual:
            tl.store(ResOut + m * stride_rom + ks, x, mask=kmask)
        x = x.to(tl.float32)
    if NORM > 0:
        norm_w = tl.load(NormW + ks, mask=kmask, other=0.0).to(tl.float32)
        scale = tl.rsqrt(tl.sum(x * x, axis=0) / K + eps)
        x = (x * scale * norm_w).to(X.dtype.element_ty).to(tl.float32)
    return x


@triton.jit
def _store_rows(Out, Add, m, rows, y, N, stride_om, stride_am, HAS_ADD: tl.constexpr):
    """Row m of the result at columns `rows` (the epilogue's add in fp32 first), rounded
    once."""
    if HAS_ADD:
        y += tl.load(Add + m * stride_am + rows, mask=rows < N, other=0.0).to(tl.float32)
    tl.store(Out + m * stride_om + rows, y.to(Out.dtype.element_ty), mask=rows < N)


@triton.jit
def _tile(X, Out, Res, NormW, ResOut, Add, w, x0, rows, M, N, K, stride_xm, stride_om,
          stride_rm, stride_rom, stride_am, eps, store_residual, ks, kmask,
          M_MAX: tl.constexpr, SILU_MUL: tl.constexpr, NORM: tl.constexpr,
          HAS_ADD: tl.constexpr):
    """Out[:, rows] = x @ the tile w [BLOCK_N, K_PAD] (+ Add) (fp32 sums): one row, its
    input x0 made once per program; more rows, each made again (store_residual: this
    tile's program is program 0 and the residual sum is not stored yet)."""
    if M_MAX == 1:
        y = tl.sum(w.to(tl.float32) * x0.to(tl.float32)[None, :], axis=1)
        _store_rows(Out, Add, 0, rows, y, N, stride_om, stride_am, HAS_ADD)
    else:
        for m in tl.static_range(M_MAX):
            if m < M:
                x = _x_row(X, Res, NormW, ResOut, m, stride_xm, stride_rm, stride_rom, K, eps,
                           store_residual, ks, kmask, SILU_MUL, NORM)
                y = tl.sum(w.to(tl.float32) * x[None, :], axis=1)
                _store_rows(Out, Add, m, rows, y, N, stride_om, stride_am, HAS_ADD)


@triton.jit
def gemv_kernel(X, W, Out, Res, NormW, ResOut, Add, M, N, K, stride_xm, stride_wn,
                stride_om, stride_rm, stride_rom, stride_am, eps,
                BLOCK_N: tl.constexpr, K_PAD: tl.constexpr, M_MAX: tl.constexpr,
                SILU_MUL: tl.constexpr, NORM: tl.constexpr, HAS_ADD: tl.constexpr,
                STAGES: tl.constexpr, FIRST_LAST: tl.constexpr, USE_PDL: tl.constexpr):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    tiles = tl.cdiv(N, BLOCK_N)
    ks = tl.arange(0, K_PAD)
    kmask = ks < K
    lanes = tl.arange(0, BLOCK_N)
    first = pid * BLOCK_N + lanes
    w_first = tl.load(W + first[:, None].to(tl.int64) * stride_wn + ks[None, :],
                      mask=(first < N)[:, None] & kmask[None, :], other=0.0)
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    if M_MAX == 1:  # the prologue once per program
        x0 = _x_row(X, Res, NormW, ResOut, 0, stride_xm, stride_rm, stride_rom, K, eps,
                    pid == 0, ks, kmask, SILU_MUL, NORM).to(X.dtype.element_ty)
    else:  # unused: each tile makes its rows' inputs
        x0 = tl.zeros([K_PAD], dtype=X.dtype.element_ty)
    if not FIRST_LAST:
        _tile(X, Out, Res, NormW, ResOut, Add, w_first, x0, first, M, N, K, stride_xm,
              stride_om, stride_rm, stride_rom, stride_am, eps, pid == 0, ks, kmask, M_MAX,
              SILU_MUL, NORM, HAS_ADD)
    # the other tiles through shared memory, STAGES deep; the first one (in registers since
    # before the wait) before them, or after them (FIRST_LAST: their first copies are then
    # issued while it is still in flight, for the registers it holds meanwhile)
    for tile in tl.range(pid + programs, tiles, programs, num_stages=STAGES):
        rows = tile * BLOCK_N + lanes
        w = tl.load(W + rows[:, None].to(tl.int64) * stride_wn + ks[None, :],
                    mask=(rows < N)[:, None] & kmask[None, :], other=0.0)
        _tile(X, Out, Res, NormW, ResOut, Add, w, x0, rows, M, N, K, stride_xm, stride_om,
              stride_rm, stride_rom, stride_am, eps, False, ks, kmask, M_MAX, SILU_MUL, NORM,
              HAS_ADD)
    if FIRST_LAST:
        _tile(X, Out, Res, NormW, ResOut, Add, w_first, x0, first, M, N, K, stride_xm,
              stride_om, stride_rm, stride_rom, stride_am, eps, pid == 0, ks, kmask, M_MAX,
              SILU_MUL, NORM, HAS_ADD)
