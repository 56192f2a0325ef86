"""Gluon kernel (sm_90a): ragged paged prefill/extend attention, warp-specialized.

One program computes BLOCK_M queries of one request for one q head, like the portable
kernel (attention_prefill.py), and reads the same work items. What differs is how:
- a producer warp brings the Q tile and each K and V tile into shared memory with bulk
  tensor copies (one per page the tile covers), STAGES tiles ahead, on mbarriers;
- two consumer warpgroups (64 query rows each) run the dots as asynchronous warpgroup
  MMAs, P staying in registers as the second dot's A operand;
- each step issues S = Q K_j^T and O += P_{j-1} V_{j-1} together and computes the softmax
  of S_j while the second dot runs (the softmax hides behind the tensor cores).
Masks (causal diagonal, window edge, the request's end) cost only on the blocks that need
them. Keys past the request's end may hold anything, NaN included, so the last V tile's
rows past kv_len are zeroed in shared memory before the dot reads them.
Not here (the portable kernel runs them): an FP8 cache, soft-capping is here.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

LOG2E = 1.4426950408889634
# the bulk tensor load is async_copy_global_to_shared in Triton 3.6 and async_load later
# (same arguments; the old name then raises)
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared



@gluon.jit
def _slot(page_row, pos, kv_len, oob_slot, PAGE_SIZE: gl.constexpr):
    """The cache row of key `pos`; a page-piece wholly past the request's end reads a row
    past the cache instead (the copy fills it with zeros). The page-table read stays inside
    the request's pages."""
    page = gl.load(page_row + gl.minimum(pos, kv_len - 1) // PAGE_SIZE)
    return gl.where(pos < kv_len, page * PAGE_SIZE + pos % PAGE_SIZE, oob_slot)


@gluon.jit
def _load_kv(desc, bar, tile, page_row, start, kv_len, oob_slot, kv_col,
             PAGE_SIZE: gl.constexpr, BLOCK_N: gl.constexpr, PAGE_TILE: gl.constexpr):
    """One key block of K or V into a stage: a bulk copy per page piece."""
    for p in gl.static_range(BLOCK_N // PAGE_TILE):
        pos = start + p * PAGE_TILE
        slot = _slot(page_row, pos, kv_len, oob_slot, PAGE_SIZE)
        _tma_load(desc, [slot, kv_col], bar, tile.slice(p * PAGE_TILE, PAGE_TILE))


@gluon.jit
def _producer(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready,
              k_empty, v_empty, page_row, q_row, q_col, kv_col, lo, hi, kv_len, oob_slot,
              PAGE_SIZE: gl.constexpr, BLOCK_N: gl.constexpr, PAGE_TILE: gl.constexpr,
              STAGES: gl.constexpr):
    """One warp: the Q tile once, then K_j and V_j for every key block, STAGES ahead."""
    mbarrier.expect(q_bar, q_desc.block_type.nbytes)
    _tma_load(q_desc, [q_row, q_col], q_bar, q_smem)
    tile_bytes: gl.constexpr = BLOCK_N * k_desc.block_type.nbytes // PAGE_TILE
    i = 0
    for start in range(lo, hi, BLOCK_N):
        stage = i % STAGES
        phase = (i // STAGES) & 1
        # a fresh barrier passes a wait on parity 1: the first STAGES tiles do not wait
        mbarrier.wait(k_empty.index(stage), phase ^ 1)
        mbarrier.expect(k_ready.index(stage), tile_bytes)
        _load_kv(k_desc, k_ready.index(stage), k_smem.index(stage), page_row, start, kv_len,
                 oob_slot, kv_col, PAGE_SIZE, BLOCK_N, PAGE_TILE)
        mbarrier.wait(v_empty.index(stage), phase ^ 1)
        mbarrier.expect(v_ready.index(stage), tile_bytes)
        _load_kv(v_desc, v_ready.index(stage), v_smem.index(stage), page_row, start, kv_len,
                 oob_slot, kv_col, PAGE_SIZE, BLOCK_N, PAGE_TILE)
        i += 1


@gluon.jit
def _masked_scores(s, start, q_pos, kv_len, window_left, s_layout: gl.constexpr,
                   BLOCK_N: gl.constexpr, HAS_WINDOW: gl.constexpr):
    key_pos = start + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    visible = (key_pos[None, :] <= q_pos[:, None]) & (key_pos[None, :] < kv_len)
    if HAS_WINDOW:
        visible &= key_pos[None, :] >= q_pos[:, None] - window_left
    return gl.where(visible, s, float("-inf"))


@gluon.jit
def _scores(s, start, q_pos, kv_len, window_left, diag, win_end, qk_scale, logit_cap,
            s_layout: gl.constexpr, BLOCK_N: gl.constexpr, HAS_WINDOW: gl.constexpr,
            HAS_CAP: gl.constexpr):
    """S of one key block, capped, masked where the block needs it; softmax scales it by c
    (log2(e) and, without a cap, the softmax scale: folded into exp2's FMA)."""
    if HAS_CAP:
        s = s * qk_scale
        # cap * tanh(s / cap), tanh(x) = 2 / (1 + exp(-2x)) - 1
        s = logit_cap * (2.0 / (1.0 + gl.exp2(s * (-2.0 * 1.4426950408889634 / logit_cap)))
                         - 1.0)
    if (start >= diag) | (start < win_end):
        s = _masked_scores(s, start, q_pos, kv_len, window_left, s_layout, BLOCK_N,
                           HAS_WINDOW)
    return s


@gluon.jit
def _softmax_step(s, m_i, l_i, c):
    """Online softmax over one block of scores (log2 units after scaling by c): new max, P,
    the old sums' rescale, new sum."""
    m_new = gl.maximum(m_i, gl.max(s, 1) * c)
    # a row may have seen no key yet: keep exp2 away from (-inf) - (-inf)
    m_new = gl.where(m_new == float("-inf"), 0.0, m_new)
    p = gl.exp2(s * c - m_new[:, None])
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, 1)
    return p, m_new, alpha, l_i


@gluon.jit
def _zero_tail_rows(v_tile, start, kv_len, clean_bar, wg, BLOCK_N: gl.constexpr,
                    HEAD_DIM: gl.constexpr):
    """Rows of the last V tile at or past kv_len to zero (P is 0 there, but 0 * NaN is
    NaN): each consumer clears half the rows, then both wait for both halves."""
    HALF: gl.constexpr = BLOCK_N // 2
    layout: gl.constexpr = gl.BlockedLayout([1, 8], [HEAD_DIM // 8, 256 // HEAD_DIM],
                                            [4, 1], [1, 0])
    half = v_tile.slice(wg * HALF, HALF)
    v = half.load(layout)
    rows = start + wg * HALF + gl.arange(0, HALF, layout=gl.SliceLayout(1, layout))
    half.store(gl.where((rows < kv_len)[:, None], v, gl.zeros_like(v)))
    fence_async_shared()  # the stores before the tensor cores' reads (async proxy)
    mbarrier.arrive(clean_bar)
    mbarrier.wait(clean_bar, 0)


@gluon.jit
def _consumer(wg, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, k_empty, v_empty,
              clean_bar, Out, Lse, Sinks, q_start, q_len, q_block, prefix, head, kv_len,
              lo, hi, diag, win_end, qk_scale, logit_cap, window_left, stride_o_tok,
              stride_o_head, stride_lse_tok,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
              STAGES: gl.constexpr, HAS_WINDOW: gl.constexpr, HAS_SINKS: gl.constexpr,
              HAS_CAP: gl.constexpr, HAS_LSE: gl.constexpr):
    """One warpgroup, query rows wg * 64 ... of the block: the dots, the online softmax and
    the epilogue. The two consumers share each K/V tile and release it independently."""
    ROWS: gl.constexpr = BLOCK_M // 2
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    dtype: gl.constexpr = q_smem.dtype

    first_row = q_block * BLOCK_M + wg * ROWS
    q_pos = prefix + first_row + gl.arange(0, ROWS, layout=row_s)
    if HAS_CAP:
        c = 1.4426950408889634
    else:
        c = qk_scale * 1.4426950408889634
    m_i = gl.full([ROWS], float("-inf"), gl.float32, row_s)
    l_i = gl.zeros([ROWS], gl.float32, row_s)
    acc = gl.zeros([ROWS, HEAD_DIM], gl.float32, o_layout)
    s_zero = gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout)
    n_blocks = gl.cdiv(hi - lo, BLOCK_N)
    q_rows = q_smem.slice(wg * ROWS, ROWS)
    mbarrier.wait(q_bar, 0)

    # block 0: S and its softmax (no P·V yet)
    mbarrier.wait(k_ready.index(0), 0)
    s = warpgroup_mma(q_rows, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False,
                      is_async=True)
    s = warpgroup_mma_wait(0, deps=(s,))
    mbarrier.arrive(k_empty.index(0))
    s = _scores(s, lo, q_pos, kv_len, window_left, diag, win_end, qk_scale, logit_cap,
                s_layout, BLOCK_N, HAS_WINDOW, HAS_CAP)
    p, m_i, alpha, l_i = _softmax_step(s, m_i, l_i, c)
    p_op = gl.convert_layout(p.to(dtype), p_layout)

    for i in range(1, n_blocks):
        start = lo + i * BLOCK_N
        stage = i % STAGES
        prev = (i - 1) % STAGES
        mbarrier.wait(k_ready.index(stage), (i // STAGES) & 1)
        s_tok = warpgroup_mma(q_rows, k_smem.index(stage).permute((1, 0)), s_zero,
                              use_acc=False, is_async=True)
        mbarrier.wait(v_ready.index(prev), ((i - 1) // STAGES) & 1)
        o_tok = warpgroup_mma(p_op, v_smem.index(prev), acc, is_async=True)
        s = warpgroup_mma_wait(1, deps=(s_tok,))  # groups retire in order: S is done
        mbarrier.arrive(k_empty.index(stage))
        s = _scores(s, start, q_pos, kv_len, window_left, diag, win_end, qk_scale,
                    logit_cap, s_layout, BLOCK_N, HAS_WINDOW, HAS_CAP)
        p, m_i, alpha, l_i = _softmax_step(s, m_i, l_i, c)
        acc, p_op = warpgroup_mma_wait(0, deps=(o_tok, p_op))
        mbarrier.arrive(v_empty.index(prev))
        acc = acc * gl.convert_layout(alpha, row_o)[:, None]
        p_op = gl.convert_layout(p.to(dtype), p_layout)

    last = n_blocks - 1
    stage = last % STAGES
    mbarrier.wait(v_ready.index(stage), (last // STAGES) & 1)
    last_start = lo + last * BLOCK_N
    if last_start + BLOCK_N > kv_len:
        _zero_tail_rows(v_smem.index(stage), last_start, kv_len, clean_bar, wg, BLOCK_N,
                        HEAD_DIM)
    acc = warpgroup_mma(p_op, v_smem.index(stage), acc, is_async=True)
    acc, p_op = warpgroup_mma_wait(0, deps=(acc, p_op))
    mbarrier.arrive(v_empty.index(stage))

    m_o = gl.convert_layout(m_i, row_o)
    l_o = gl.convert_layout(l_i, row_o)
    if HAS_SINKS:
        sink = gl.load(Sinks + head).to(gl.float32) * 1.4426950408889634
        m_fin = gl.maximum(m_o, sink)
        scale = gl.exp2(m_o - m_fin)
        acc = acc * scale[:, None]
        l_o = l_o * scale + gl.exp2(sink - m_fin)
        m_o = m_fin
    out = (acc * (1.0 / l_o)[:, None]).to(Out.dtype.element_ty)
    store_layout: gl.constexpr = gl.BlockedLayout([1, 8], [HEAD_DIM // 8, 256 // HEAD_DIM],
                                                  [4, 1], [1, 0])
    out = gl.convert_layout(out, store_layout)
    rows = first_row + gl.arange(0, ROWS, layout=gl.SliceLayout(1, store_layout))
    dims = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, store_layout))
    ptrs = Out + (q_start + rows).to(gl.int64)[:, None] * stride_o_tok \
        + head * stride_o_head + dims[None, :]
    gl.store(ptrs, out, mask=(rows < q_len)[:, None])
    if HAS_LSE:
        lse = (m_o + gl.log2(l_o)) * 0.6931471805599453
        lrows = first_row + gl.arange(0, ROWS, layout=row_o)
        gl.store(Lse + (q_start + lrows).to(gl.int64) * stride_lse_tok + head, lse,
                 mask=lrows < q_len)


@gluon.jit
def prefill_hopper_kernel(
    q_desc, k_desc, v_desc, Out, Lse, Sinks, PageTable, QIndptr, KvLens, Work,
    sm_scale, logit_cap, window_left, oob_slot,
    stride_o_tok, stride_o_head, stride_lse_tok, stride_page_row,
    GROUP: gl.constexpr, PAGE_SIZE: gl.constexpr, HEAD_DIM: gl.constexpr,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
    HAS_WINDOW: gl.constexpr, HAS_SINKS: gl.constexpr, HAS_CAP: gl.constexpr,
    HAS_LSE: gl.constexpr,
):
    head = gl.program_id(0)  # heads fastest: one query block's heads share K/V in L2
    item = gl.program_id(1)
    req = gl.load(Work + 2 * item)
    if req < 0:
        return
    q_block = gl.load(Work + 2 * item + 1)
    q_start = gl.load(QIndptr + req)
    q_len = gl.load(QIndptr + req + 1) - q_start
    kv_len = gl.load(KvLens + req)
    prefix = kv_len - q_len
    kv_head = head // GROUP
    first_pos = prefix + q_block * BLOCK_M
    last_pos = gl.minimum(first_pos + BLOCK_M, kv_len) - 1
    hi = last_pos + 1
    diag = ((first_pos + 1) // BLOCK_N) * BLOCK_N  # keys below: visible to every row
    lo = 0
    win_end = 0
    if HAS_WINDOW:
        lo = (gl.maximum(first_pos - window_left, 0) // BLOCK_N) * BLOCK_N
        win_end = gl.cdiv(gl.maximum(last_pos - window_left, 0), BLOCK_N) * BLOCK_N
        win_end = gl.maximum(gl.minimum(win_end, diag), lo)
        diag = gl.maximum(diag, win_end)
    page_row = PageTable + req.to(gl.int64) * stride_page_row

    PAGE_TILE: gl.constexpr = k_desc.block_type.shape[0]
    dtype: gl.constexpr = q_desc.dtype
    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    clean_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    mbarrier.init(clean_bar, count=2)
    for s in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(s), count=1)
        mbarrier.init(v_ready.index(s), count=1)
        mbarrier.init(k_empty.index(s), count=2)  # both consumers release a tile
        mbarrier.init(v_empty.index(s), count=2)

    gl.warp_specialize([  # the first consumer runs in the kernel's own 4 warps
        (_consumer, (0, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, k_empty,
                     v_empty, clean_bar, Out, Lse, Sinks, q_start, q_len, q_block, prefix, head,
                     kv_len, lo, hi, diag, win_end, sm_scale, logit_cap, window_left,
                     stride_o_tok, stride_o_head, stride_lse_tok, BLOCK_M, BLOCK_N, HEAD_DIM,
                     STAGES, HAS_WINDOW, HAS_SINKS, HAS_CAP, HAS_LSE)),
        (_consumer, (1, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, k_empty,
                     v_empty, clean_bar, Out, Lse, Sinks, q_start, q_len, q_block, prefix, head,
                     kv_len, lo, hi, diag, win_end, sm_scale, logit_cap, window_left,
                     stride_o_tok, stride_o_head, stride_lse_tok, BLOCK_M, BLOCK_N, HEAD_DIM,
                     STAGES, HAS_WINDOW, HAS_SINKS, HAS_CAP, HAS_LSE)),
        (_producer, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready,
                     v_ready, k_empty, v_empty, page_row, q_start + q_block * BLOCK_M,
                     head * HEAD_DIM, kv_head * HEAD_DIM, lo, hi, kv_len, oob_slot,
                     PAGE_SIZE, BLOCK_N, PAGE_TILE, STAGES)),
    ], [4, 1], [240, 24])
