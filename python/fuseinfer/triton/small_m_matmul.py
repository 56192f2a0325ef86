"""Triton kernel: Out [M, N] = X [M, K] @ W[N, K]^T for a few rows (M <= 64), streaming W.

At small M a matmul is a read of the weight; the kernel's job is to keep enough weight
bytes in flight. A program owns BLOCK_N weight rows and one of SPLIT_K slices of K; it
walks its slice in BLOCK_K steps (pipelined loads of [BLOCK_N, BLOCK_K] weight tiles and
[BLOCK_M, BLOCK_K] X tiles, M padded to BLOCK_M with masked rows) and accumulates in fp32
on the tensor cores. With SPLIT_K > 1 the slices of one N tile meet without another launch:
each program stores its fp32 partial to the workspace, then counts itself in the tile's
arrival counter; the last to arrive sums the SPLIT_K partials in slice order (so the
result does not depend on arrival order), stores Out and sets the counter back to 0 for
the next call or graph replay.

Prologues (the decoder's, so a step of a few tokens needs no kernel for them), each
intermediate rounded to x's dtype where its own kernel would have stored it:
- SILU_MUL: X is [M, 2K] = [gate | up]; the matmul takes silu(gate) * up.
- NORM 1: the matmul takes rmsnorm(x) * norm_w. NORM 2: r = x + residual first, program
  column 0 stores r to ResOut (a separate buffer: other programs still read the residual),
  and the matmul takes rmsnorm(r) * norm_w. A K slice does not see the whole row, so the
  kernel multiplies by norm_w on the fly and sums the row's squares per slice; the
  1/rms factor, a per-row scalar, is applied to the summed result (the last program adds
  the slices' sums of squares as it adds their partials).
Epilogue: HAS_ADD adds Add[m, n] (row stride 0: a bias) in fp32 before the one rounding.

PDL: the programs start while the previous kernel finishes and wait for it before their
first load (the software pipeline issues the first stages' X and weight loads together,
so the weight stream does not start before the wait yet); the dependents launch once the
k loop is done.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def small_m_matmul_kernel(X, W, Out, Partial, Counters, NormW, Res, ResOut, Add,
                          M, N, K, k_per_split,
                          stride_xm, stride_wn, stride_om, stride_rm, stride_rom, stride_am,
                          eps,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                          SILU_MUL: tl.constexpr, NORM: tl.constexpr, HAS_ADD: tl.constexpr,
                          IEEE: tl.constexpr, USE_PDL: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(K, k_begin + k_per_split)
    w_ptrs = W + rn[:, None].to(tl.int64) * stride_wn + (k_begin + rk)[None, :]
    x_ptrs = X + rm[:, None].to(tl.int64) * stride_xm + (k_begin + rk)[None, :]
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    sumsq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        k_ok = k0 + rk < k_end
        xk_mask = m_ok[:, None] & k_ok[None, :]
        x = tl.load(x_ptrs, mask=xk_mask, other=0.0)
        w = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        if SILU_MUL:
            gate = x.to(tl.float32)
            up = tl.load(x_ptrs + K, mask=xk_mask, other=0.0).to(tl.float32)
            x = (gate / (1.0 + tl.exp(-gate)) * up).to(X.dtype.element_ty)
        if NORM == 2:
            res = tl.load(Res + rm[:, None] * stride_rm + (k0 + rk)[None, :], mask=xk_mask,
                          other=0.0)
            x = (x.to(tl.float32) + res.to(tl.float32)).to(X.dtype.element_ty)
            if pid_n == 0:
                tl.store(ResOut + rm[:, None] * stride_rom + (k0 + rk)[None, :], x,
                         mask=xk_mask)
        if NORM > 0:
            xf = x.to(tl.float32)
            sumsq += tl.sum(xf * xf, axis=1)
            norm_w = tl.load(NormW + k0 + rk, mask=k_ok, other=0.0).to(tl.float32)
            x = (xf * norm_w[None, :]).to(X.dtype.element_ty)
        if IEEE:
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)),
                          input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w))
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    out_mask = m_ok[:, None] & n_ok[None, :]
    if SPLIT_K > 1:
        tile = rm[:, None] * N + rn[None, :]
        tl.store(Partial + pid_k.to(tl.int64) * M * N + tile, acc, mask=out_mask)
        # each slice's sums of squares after the partials (every N tile writes the same
        # values for its slice, so the overlapping stores agree)
        sumsq_at = Partial + SPLIT_K * M * N
        if NORM > 0:
            tl.store(sumsq_at + pid_k * M + rm, sumsq, mask=m_ok)
        tl.debug_barrier()  # every thread's partial is stored before the count releases it
        arrived = tl.atomic_add(Counters + pid_n, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            sumsq = tl.zeros((BLOCK_M,), dtype=tl.float32)
            # 32-bit offsets here: split x M x N < 2^31, since a split only grows while
            # tiles are few (split x N <= 2 x min_programs x block_n <= 2^23) and M <= 64
            for s in range(0, SPLIT_K):
                acc += tl.load(Partial + s * M * N + tile, mask=out_mask, other=0.0,
                               cache_modifier=".cg")
                if NORM > 0:
                    sumsq += tl.load(sumsq_at + s * M + rm, mask=m_ok, other=0.0,
                                     cache_modifier=".cg")
            tl.atomic_xchg(Counters + pid_n, 0, sem="relaxed", scope="gpu")
            _finish(acc, sumsq, Out, Add, rm, rn, out_mask, K, stride_om, stride_am, eps,
                    NORM, HAS_ADD)
    else:
        _finish(acc, sumsq, Out, Add, rm, rn, out_mask, K, stride_om, stride_am, eps, NORM,
                HAS_ADD)


@triton.jit
def _finish(acc, sumsq, Out, Add, rm, rn, out_mask, K, stride_om, stride_am, eps,
            NORM: tl.constexpr, HAS_ADD: tl.constexpr):
    """The whole-K sum of a tile: the norm's per-row factor, the epilogue add, one store."""
    if NORM > 0:
        acc = acc * tl.rsqrt(sumsq / K + eps)[:, None]
    if HAS_ADD:
        acc += tl.load(Add + rm[:, None] * stride_am + rn[None, :], mask=out_mask,
                       other=0.0).to(tl.float32)
    tl.store(Out + rm[:, None] * stride_om + rn[None, :], acc.to(Out.dtype.element_ty),
             mask=out_mask)
