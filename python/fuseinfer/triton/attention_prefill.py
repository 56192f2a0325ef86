"""Triton kernel: ragged paged prefill/extend attention (causal, GQA, window, sinks, FP8 KV).

One program computes block_m queries of one request for one q head; its work item
(request, query block) comes from the plan. Keys are read from the paged cache through the
page table. The key range is cut into three loops so only the edges pay for masks: the
window's lower edge, the fully visible middle, and the causal diagonal.
Softmax runs in base 2 with log2(e) folded into the scale.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _load_kv_block(Cache, PageRow, start, offs_n, tile_offs, kv_len, stride_slot, kv_head,
                   PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                   MASKED: tl.constexpr, USE_TMA: tl.constexpr):
    """Rows start..start+BLOCK_N of one request's keys (or values) for one KV head;
    `tile_offs` holds each element's offset within a contiguous tile (row * stride_slot +
    head + dim). start is a multiple of BLOCK_N. With USE_TMA, Cache is a tensor
    descriptor over [slots, kv_heads, head_dim] and the tile (inside one page) comes in one
    bulk copy."""
    pos = start + offs_n
    # One return at the end: Triton compiles every branch that is not constexpr-dead, and a
    # return inside an `if` does not make the code after it dead.
    if USE_TMA:
        page = tl.load(PageRow + start // PAGE_SIZE)
        tile = Cache.load([page * PAGE_SIZE + start % PAGE_SIZE, kv_head, 0])
        tile = tile.reshape(BLOCK_N, HEAD_DIM)
        if MASKED:  # slots past kv_len may hold anything, NaN included: p * NaN = NaN
            tile = tl.where((pos < kv_len)[:, None], tile, 0.0)
    elif PAGE_SIZE % BLOCK_N == 0:
        # The tile lies inside one page: one page-table read and a scalar base address.
        page = tl.load(PageRow + start // PAGE_SIZE).to(tl.int64)
        ptrs = Cache + (page * PAGE_SIZE + start % PAGE_SIZE) * stride_slot + tile_offs
        if MASKED:
            tile = tl.load(ptrs, mask=(pos < kv_len)[:, None], other=0.0)
        else:
            tile = tl.load(ptrs)
    else:
        row_offs = tile_offs - offs_n[:, None] * stride_slot  # head + dim part
        if MASKED:
            valid = pos < kv_len
            page = tl.load(PageRow + pos // PAGE_SIZE, mask=valid, other=0)
            slot = page.to(tl.int64) * PAGE_SIZE + pos % PAGE_SIZE
            tile = tl.load(Cache + slot[:, None] * stride_slot + row_offs,
                           mask=valid[:, None], other=0.0)
        else:
            page = tl.load(PageRow + pos // PAGE_SIZE)
            slot = page.to(tl.int64) * PAGE_SIZE + pos % PAGE_SIZE
            tile = tl.load(Cache + slot[:, None] * stride_slot + row_offs)
    return tile


@triton.jit
def _soft_cap(s, logit_cap, HAS_CAP: tl.constexpr):
    if HAS_CAP:
        # cap * tanh(s / cap), tanh through sigmoid (portable to the interpreter)
        s = logit_cap * (2.0 * tl.sigmoid(2.0 * s / logit_cap) - 1.0)
    return s


@triton.jit
def _attend_range(acc, m_i, l_i, q, K, V, PageRow, lo, hi, offs_m_pos, offs_n, k_offs, v_offs,
                  stride_k_slot, stride_v_slot, kv_head, kv_len, qk_scale, logit_cap,
                  window_left, PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                  HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, HAS_WINDOW: tl.constexpr,
                  HAS_CAP: tl.constexpr, USE_TMA: tl.constexpr):
    for start in range(lo, hi, BLOCK_N):
        k = _load_kv_block(K, PageRow, start, offs_n, k_offs, kv_len, stride_k_slot, kv_head,
                           PAGE_SIZE, BLOCK_N, HEAD_DIM, MASKED, USE_TMA)
        s = tl.dot(q, tl.trans(k.to(q.dtype)))
        if HAS_CAP:
            s = _soft_cap(s * qk_scale, logit_cap, HAS_CAP)
            c = 1.4426950408889634
        else:
            c = qk_scale * 1.4426950408889634  # folded into exp2's argument: one FMA
        if MASKED:
            key_pos = start + offs_n
            visible = (key_pos[None, :] <= offs_m_pos[:, None]) & (key_pos[None, :] < kv_len)
            if HAS_WINDOW:
                visible &= key_pos[None, :] >= offs_m_pos[:, None] - window_left
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * c)
        if MASKED:  # a row may have seen no key yet: keep exp2 away from (-inf) - (-inf)
            m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s * c - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_kv_block(V, PageRow, start, offs_n, v_offs, kv_len, stride_v_slot, kv_head,
                           PAGE_SIZE, BLOCK_N, HEAD_DIM, MASKED, USE_TMA)
        acc = tl.dot(p.to(q.dtype), v.to(q.dtype), acc * alpha[:, None])
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def prefill_kernel(
    Q, K, V, Out, Lse, Sinks, PageTable, QIndptr, KvLens, Work, KScale, VScale,
    sm_scale, logit_cap, window_left, k_scale_stride, v_scale_stride,
    stride_q_tok, stride_q_head, stride_k_slot, stride_k_head, stride_v_slot, stride_v_head,
    stride_o_tok, stride_o_head, stride_lse_tok, stride_page_row,
    GROUP: tl.constexpr, PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_SINKS: tl.constexpr, HAS_CAP: tl.constexpr,
    HAS_LSE: tl.constexpr, KV_SCALED: tl.constexpr, USE_PDL: tl.constexpr,
    DOT_F32: tl.constexpr, USE_TMA: tl.constexpr,
):
    head = tl.program_id(0)  # heads fastest: one query block's heads share K/V in L2
    item = tl.program_id(1)
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    req = tl.load(Work + 2 * item)
    if req < 0:
        return
    q_block = tl.load(Work + 2 * item + 1)
    q_start = tl.load(QIndptr + req)
    q_len = tl.load(QIndptr + req + 1) - q_start
    kv_len = tl.load(KvLens + req)
    prefix = kv_len - q_len
    kv_head = head // GROUP

    offs_m = q_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < q_len
    q_ptrs = Q + (q_start + offs_m).to(tl.int64)[:, None] * stride_q_tok \
        + head * stride_q_head + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    if DOT_F32:  # the interpreter's dot mishandles bfloat16
        q = q.to(tl.float32)
    qk_scale = sm_scale
    if KV_SCALED:  # the KV head's scale (stride 0: one for all)
        qk_scale = qk_scale * tl.load(KScale + kv_head * k_scale_stride)
    q_pos = prefix + offs_m

    first_pos = prefix + q_block * BLOCK_M
    last_pos = tl.minimum(first_pos + BLOCK_M, kv_len) - 1
    hi = last_pos + 1
    diag = ((first_pos + 1) // BLOCK_N) * BLOCK_N  # keys below it are visible to every row
    lo = 0
    win_end = 0
    if HAS_WINDOW:
        lo = (tl.maximum(first_pos - window_left, 0) // BLOCK_N) * BLOCK_N
        win_end = tl.cdiv(tl.maximum(last_pos - window_left, 0), BLOCK_N) * BLOCK_N
        win_end = tl.maximum(tl.minimum(win_end, diag), lo)
        diag = tl.maximum(diag, win_end)

    page_row = PageTable + req.to(tl.int64) * stride_page_row
    k_offs = offs_n[:, None] * stride_k_slot + kv_head * stride_k_head + offs_d[None, :]
    v_offs = offs_n[:, None] * stride_v_slot + kv_head * stride_v_head + offs_d[None, :]
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    if HAS_WINDOW:
        acc, m_i, l_i = _attend_range(
            acc, m_i, l_i, q, K, V, page_row, lo, win_end, q_pos, offs_n, k_offs, v_offs,
            stride_k_slot, stride_v_slot, kv_head, kv_len, qk_scale, logit_cap, window_left,
            PAGE_SIZE, BLOCK_N, HEAD_DIM, True, HAS_WINDOW, HAS_CAP, USE_TMA)
    acc, m_i, l_i = _attend_range(
        acc, m_i, l_i, q, K, V, page_row, win_end, diag, q_pos, offs_n, k_offs, v_offs,
        stride_k_slot, stride_v_slot, kv_head, kv_len, qk_scale, logit_cap, window_left,
        PAGE_SIZE, BLOCK_N, HEAD_DIM, False, HAS_WINDOW, HAS_CAP, USE_TMA)
    acc, m_i, l_i = _attend_range(
        acc, m_i, l_i, q, K, V, page_row, diag, hi, q_pos, offs_n, k_offs, v_offs,
        stride_k_slot, stride_v_slot, kv_head, kv_len, qk_scale, logit_cap, window_left,
        PAGE_SIZE, BLOCK_N, HEAD_DIM, True, HAS_WINDOW, HAS_CAP, USE_TMA)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()

    if HAS_SINKS:
        sink = tl.load(Sinks + head).to(tl.float32) * 1.4426950408889634
        m_fin = tl.maximum(m_i, sink)
        alpha = tl.math.exp2(m_i - m_fin)
        acc = acc * alpha[:, None]
        l_i = l_i * alpha + tl.math.exp2(sink - m_fin)
        m_i = m_fin
    inv_l = 1.0 / l_i
    if KV_SCALED:
        inv_l = inv_l * tl.load(VScale + kv_head * v_scale_stride)
    out = acc * inv_l[:, None]
    o_ptrs = Out + (q_start + offs_m).to(tl.int64)[:, None] * stride_o_tok \
        + head * stride_o_head + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    if HAS_LSE:
        lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453
        tl.store(Lse + (q_start + offs_m).to(tl.int64) * stride_lse_tok + head, lse,
                 mask=row_ok)
