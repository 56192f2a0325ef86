"""Triton kernels: MoE routing (topk_softmax, moe_fused_gate), fp32 math, one pass per token.

Selection is an unrolled arg-max loop: each round takes the largest remaining score, the
lowest index among equal ones (the documented tie rule), and marks it taken. A `taken` mask
rather than overwriting the score with a sentinel keeps -inf logits selectable in order.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _pick_rows(vals, cols, avail, BIG: tl.constexpr):
    """Per row of [rows, cols]: the largest available value and its lowest column."""
    v = tl.where(avail, vals, float("-inf"))
    best = tl.max(v, axis=1)
    hit = avail & (v == best[:, None])
    idx = tl.min(tl.where(hit, cols, BIG), axis=1)
    return best, idx


@triton.jit
def topk_softmax_kernel(X, W, Ids, tokens, experts, stride_x, stride_w, stride_i,
                        TOPK: tl.constexpr, RENORMALIZE: tl.constexpr,
                        SOFTMAX_AFTER_TOPK: tl.constexpr, BLOCK_T: tl.constexpr,
                        BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, USE_PDL: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_E)
    row_ok = rows < tokens
    # Rows past the end recompute the last token (stores masked): no all -inf rows, so no
    # inf - inf in the math below.
    src = tl.minimum(rows, tokens - 1)
    valid = (cols[None, :] < experts) & (src[:, None] >= 0)
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    x = tl.load(X + src[:, None] * stride_x + cols[None, :], mask=valid,
                other=float("-inf")).to(tl.float32)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()

    # Ranking by the logit equals ranking by its softmax probability, and the logits are
    # exact inputs: the chosen ids never depend on how exp rounds.
    kcols = tl.arange(0, BLOCK_K)
    top = tl.full((BLOCK_T, BLOCK_K), float("-inf"), tl.float32)
    ids = tl.zeros((BLOCK_T, BLOCK_K), tl.int32)
    avail = valid
    cols2 = tl.broadcast_to(cols[None, :], (BLOCK_T, BLOCK_E))
    for i in tl.static_range(TOPK):
        best, idx = _pick_rows(x, cols2, avail, BLOCK_E)
        top = tl.where(kcols[None, :] == i, best[:, None], top)
        ids = tl.where(kcols[None, :] == i, idx[:, None], ids)
        avail = avail & (cols2 != idx[:, None])

    kmask = kcols[None, :] < TOPK
    if SOFTMAX_AFTER_TOPK:
        # softmax over the k chosen logits; the first is their maximum
        e = tl.where(kmask, tl.exp(top - tl.max(top, axis=1)[:, None]), 0.0)
        w = e / tl.sum(e, axis=1)[:, None]
    else:
        m = tl.max(x, axis=1)
        denom = tl.sum(tl.where(valid, tl.exp(x - m[:, None]), 0.0), axis=1)
        w = tl.where(kmask, tl.exp(top - m[:, None]), 0.0) / denom[:, None]
        if RENORMALIZE:
            w = w / tl.sum(w, axis=1)[:, None]

    out_mask = row_ok[:, None] & kmask
    tl.store(W + rows[:, None] * stride_w + kcols[None, :], w, mask=out_mask)
    tl.store(Ids + rows[:, None] * stride_i + kcols[None, :], ids, mask=out_mask)


@triton.jit
def moe_fused_gate_kernel(X, Bias, W, Ids, experts, per_group, stride_x, stride_w, stride_i,
                          routed_scaling_factor, GROUPS: tl.constexpr,
                          TOPK_GROUP: tl.constexpr, TOPK: tl.constexpr,
                          SHARED: tl.constexpr, SCALE_OUTPUT: tl.constexpr,
                          BLOCK_G: tl.constexpr, BLOCK_V: tl.constexpr,
                          BLOCK_K: tl.constexpr, USE_PDL: tl.constexpr):
    """One token per program over a [groups, experts per group] tile."""
    row = tl.program_id(0).to(tl.int64)
    g = tl.arange(0, BLOCK_G)
    v = tl.arange(0, BLOCK_V)
    valid = (g[:, None] < GROUPS) & (v[None, :] < per_group)
    flat = g[:, None] * per_group + v[None, :]  # the expert index
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    x = tl.load(X + row * stride_x + flat, mask=valid, other=0.0).to(tl.float32)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    bias = tl.load(Bias + flat, mask=valid, other=0.0).to(tl.float32)
    s = 1.0 / (1.0 + tl.exp(-x))
    sb = s + bias

    # group score: the sum of its two best biased scores (the best alone for 1-wide groups)
    vcols = tl.broadcast_to(v[None, :], (BLOCK_G, BLOCK_V))
    first, at = _pick_rows(sb, vcols, valid, BLOCK_V)
    second, _ = _pick_rows(sb, vcols, valid & (vcols != at[:, None]), BLOCK_V)
    gscore = first + tl.where(per_group > 1, second, 0.0)

    # keep the TOPK_GROUP best groups (lowest group index among equal scores)
    keep = g < 0
    gfree = g < GROUPS
    for _i in tl.static_range(TOPK_GROUP):
        gv = tl.where(gfree, gscore, float("-inf"))
        gbest = tl.max(gv, axis=0)
        gidx = tl.min(tl.where(gfree & (gv == gbest), g, BLOCK_G), axis=0)
        keep = keep | (g == gidx)
        gfree = gfree & (g != gidx)

    # top-k experts by biased score among the kept groups; weights are the unbiased scores
    avail = valid & keep[:, None]
    big = BLOCK_G * BLOCK_V
    kcols = tl.arange(0, BLOCK_K)
    w = tl.zeros((BLOCK_K,), tl.float32)
    ids = tl.zeros((BLOCK_K,), tl.int32)
    for i in tl.static_range(TOPK):
        cand = tl.where(avail, sb, float("-inf"))
        best = tl.max(tl.max(cand, axis=1), axis=0)
        idx = tl.min(tl.min(tl.where(avail & (cand == best), flat, big), axis=1), axis=0)
        chosen = valid & (flat == idx)  # padding columns alias the next group's indices
        sval = tl.sum(tl.sum(tl.where(chosen, s, 0.0), axis=1), axis=0)
        w = tl.where(kcols == i, sval, w)
        ids = tl.where(kcols == i, idx, ids)
        avail = avail & (flat != idx)

    w = w / tl.sum(w, axis=0)
    if SCALE_OUTPUT:
        w = w * routed_scaling_factor
        shared_w = 1.0
    else:
        shared_w = 1.0 / routed_scaling_factor
    # the fused shared expert: slot TOPK, id `experts`
    is_shared = (kcols >= TOPK) & (kcols < TOPK + SHARED)
    w = tl.where(is_shared, shared_w, w)
    ids = tl.where(is_shared, experts + kcols - TOPK, ids)
    out_mask = kcols < TOPK + SHARED
    tl.store(W + row * stride_w + kcols, w, mask=out_mask)
    tl.store(Ids + row * stride_i + kcols, ids, mask=out_mask)
