"""Gluon kernel (sm_90a): ragged paged prefill/extend attention, warp-specialized.

A tile is BLOCK_M queries of one request for one q head, like a program of the portable
kernel (attention_prefill.py), from the same work items; a program runs one tile per
wave of `programs` tiles (one wave when the grid has one program per tile; persistent
when it has one per SM: a tile's epilogue then overlaps the next tile's loads). Work items
come heaviest first, so waves alternate direction (program p takes wave w's tile p, then
wave w + 1's tile programs - 1 - p): each program's waves pair a heavy tile with a light
one and the programs finish together, where plain round-robin leaves program 0 with the
heaviest tile of every wave (12% over the mean at one 4k causal request, 32 heads). What
differs from the portable kernel is how:
- a producer warp brings the Q tile and each K and V tile into shared memory with bulk
  tensor copies (one per page the tile covers), STAGES tiles ahead, on mbarriers;
- BLOCK_M / 64 consumer warpgroups (64 query rows each: two at BLOCK_M 128, three at 192)
  run the dots as asynchronous warpgroup MMAs, P staying in registers as the second dot's
  A operand (a third consumer gives the tensor cores more MMAs to overlap the softmaxes
  with, where head_dim 64 leaves each consumer's dots short);
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
def _tile(w, num_tiles, num_q_heads, Work, Schedule, scheduled, QIndptr, KvLens, PageTable,
          stride_page_row, window_left, GROUP: gl.constexpr, BLOCK_M: gl.constexpr,
          BLOCK_N: gl.constexpr, HAS_WINDOW: gl.constexpr):
    """The program's tile of wave w, its request and key range (every partition computes
    the same): heads fastest, so tiles running side by side share K/V in L2. The plan's
    schedule names it (scheduled != 0: [waves, programs], -1 for none); else waves run in
    alternating directions. lo..hi is cut at diag (keys below are visible to every row)
    and win_end (keys from there on are inside every row's window). Not valid past the last
    tile or on a padded work item."""
    programs = gl.num_programs(0)
    pid = gl.program_id(0)
    t = w * programs + gl.where(w % 2 == 0, pid, programs - 1 - pid)
    if scheduled != 0:
        t = gl.load(Schedule + w * programs + pid)
    in_range = (t >= 0) & (t < num_tiles)
    t = gl.minimum(gl.maximum(t, 0), num_tiles - 1)
    head = t % num_q_heads
    item = t // num_q_heads
    req = gl.load(Work + 2 * item)
    valid = (req >= 0) & in_range  # padded work items are -1
    req = gl.maximum(req, 0)
    q_block = gl.load(Work + 2 * item + 1)
    q_start = gl.load(QIndptr + req)
    q_len = gl.load(QIndptr + req + 1) - q_start
    kv_len = gl.load(KvLens + req)
    prefix = kv_len - q_len
    first_pos = prefix + q_block * BLOCK_M
    last_pos = gl.minimum(first_pos + BLOCK_M, kv_len) - 1
    hi = last_pos + 1
    diag = ((first_pos + 1) // BLOCK_N) * BLOCK_N
    lo = hi * 0
    win_end = hi * 0
    if HAS_WINDOW:
        lo = (gl.maximum(first_pos - window_left, 0) // BLOCK_N) * BLOCK_N
        win_end = gl.cdiv(gl.maximum(last_pos - window_left, 0), BLOCK_N) * BLOCK_N
        win_end = gl.maximum(gl.minimum(win_end, diag), lo)
        diag = gl.maximum(diag, win_end)
    page_row = PageTable + req.to(gl.int64) * stride_page_row
    return (valid, head, head // GROUP, q_block, q_start, q_len, kv_len, prefix, lo, hi,
            diag, win_end, page_row)


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
def _producer(args, GROUP: gl.constexpr, PAGE_SIZE: gl.constexpr, HEAD_DIM: gl.constexpr,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, PAGE_TILE: gl.constexpr,
              STAGES: gl.constexpr, HAS_WINDOW: gl.constexpr):
    """One warp: per tile the Q tile (once every consumer is done with the last one),
    then K_j and V_j for every key block, STAGES ahead; the stage ring runs on across
    tiles."""
    (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, q_empty, k_ready, v_ready, k_empty,
     v_empty, num_tiles, num_q_heads, Work, Schedule, scheduled, QIndptr, KvLens, PageTable,
     stride_page_row, window_left, oob_slot) = args
    tile_bytes: gl.constexpr = BLOCK_N * k_desc.block_type.nbytes // PAGE_TILE
    it = 0  # key blocks loaded so far, all tiles
    done = 0  # tiles loaded so far
    for w in range(0, gl.cdiv(num_tiles, gl.num_programs(0))):
        (valid, head, kv_head, q_block, q_start, q_len, kv_len, prefix, lo, hi, diag,
         win_end, page_row) = _tile(w, num_tiles, num_q_heads, Work, Schedule, scheduled,
                                    QIndptr, KvLens, PageTable, stride_page_row, window_left,
                                    GROUP, BLOCK_M, BLOCK_N, HAS_WINDOW)
        if valid:
            for start in range(lo, hi, BLOCK_N):
                stage = it % STAGES
                phase = (it // STAGES) & 1
                mbarrier.wait(k_empty.index(stage), phase ^ 1)
                mbarrier.expect(k_ready.index(stage), tile_bytes)
                _load_kv(k_desc, k_ready.index(stage), k_smem.index(stage), page_row, start,
                         kv_len, oob_slot, kv_head * HEAD_DIM, PAGE_SIZE, BLOCK_N, PAGE_TILE)
                mbarrier.wait(v_empty.index(stage), phase ^ 1)
                mbarrier.expect(v_ready.index(stage), tile_bytes)
                _load_kv(v_desc, v_ready.index(stage), v_smem.index(stage), page_row, start,
                         kv_len, oob_slot, kv_head * HEAD_DIM, PAGE_SIZE, BLOCK_N, PAGE_TILE)
                if start == lo:
                    # the tile's Q once every consumer is done with the last one: its first
                    # K/V block is already on the way, overlapping their epilogue (a fresh
                    # barrier passes a wait on parity 1: the first tile does not wait)
                    mbarrier.wait(q_empty, (done & 1) ^ 1)
                    mbarrier.expect(q_bar, (BLOCK_M // 64) * q_desc.block_type.nbytes)
                    for c in gl.static_range(BLOCK_M // 64):  # a 64-row copy per consumer
                        _tma_load(q_desc, [q_start + q_block * BLOCK_M + c * 64,
                                           head * HEAD_DIM], q_bar, q_smem.index(c))
                it += 1
            done += 1


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


@gluon.constexpr_function
def _row_layout(head_dim):
    """Rows over a warpgroup, 16 bytes per thread, a row's threads side by side (a warp
    covers whole rows: 256-byte stores at head_dim 128)."""
    per_row = head_dim // 8
    return gl.BlockedLayout([1, 8], [32 // per_row, per_row], [4, 1], [1, 0])


@gluon.jit
def _zero_tail_rows(v_tile, start, kv_len, clean_bar, clean_phase, wg: gl.constexpr,
                    BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr):
    """Rows of the last V tile at or past kv_len to zero (P is 0 there, but 0 * NaN is
    NaN): consumers 0 and 1 clear half the rows each, then every consumer waits for both
    halves."""
    HALF: gl.constexpr = BLOCK_N // 2
    if wg < 2:
        layout: gl.constexpr = _row_layout(HEAD_DIM)
        half = v_tile.slice(wg * HALF, HALF)
        v = half.load(layout)
        rows = start + wg * HALF + gl.arange(0, HALF, layout=gl.SliceLayout(1, layout))
        half.store(gl.where((rows < kv_len)[:, None], v, gl.zeros_like(v)))
        fence_async_shared()  # the stores before the tensor cores' reads (async proxy)
    mbarrier.arrive(clean_bar)
    mbarrier.wait(clean_bar, clean_phase)


@gluon.jit
def _take_turn(turn, wg, r, PINGPONG: gl.constexpr):
    """Pingpong: wait until the consumer before this one (in a ring) has issued its MMAs of
    the round before (consumer 0's first round passes: its barrier was arrived on at the
    start)."""
    if PINGPONG:
        mbarrier.wait(turn.index(wg), r & 1)


@gluon.jit
def _pass_turn(turn, wg, CONSUMERS: gl.constexpr, PINGPONG: gl.constexpr):
    """Pingpong: this consumer's MMAs of the round are issued; the next may issue its."""
    if PINGPONG:
        mbarrier.arrive(turn.index((wg + 1) % CONSUMERS))


@gluon.jit
def _consume_tile(wg, it, rnd, cleans, done, q_smem, k_smem, v_smem, q_bar, q_empty,
                  k_ready, v_ready, k_empty, v_empty, clean_bar, turn, Out, Lse, Sinks,
                  head, q_block, q_start, q_len, kv_len, prefix, lo, hi, diag, win_end,
                  qk_scale, logit_cap, window_left, stride_o_tok, stride_o_head,
                  stride_lse_tok, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                  HEAD_DIM: gl.constexpr, STAGES: gl.constexpr, HAS_WINDOW: gl.constexpr,
                  HAS_SINKS: gl.constexpr, HAS_CAP: gl.constexpr, HAS_LSE: gl.constexpr,
                  PINGPONG: gl.constexpr):
    """One consumer warpgroup's part of one tile (query rows wg * 64 ...): the dots, the
    online softmax and the epilogue. `it` counts the key blocks consumed before (the stage
    ring), `rnd` the MMA rounds (pingpong's turns), `cleans` the tail clearings, `done` the
    tiles; returns them advanced. With PINGPONG the consumers take turns issuing their
    MMAs, round by round, so one's softmax runs while the tensor cores work through the
    others' MMAs."""
    ROWS: gl.constexpr = 64
    CONSUMERS: gl.constexpr = BLOCK_M // ROWS
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
    q_rows = q_smem.index(wg)
    mbarrier.wait(q_bar, done & 1)

    # block 0: S and its softmax (no P·V yet)
    stage = it % STAGES
    mbarrier.wait(k_ready.index(stage), (it // STAGES) & 1)
    _take_turn(turn, wg, rnd, PINGPONG)
    s = warpgroup_mma(q_rows, k_smem.index(stage).permute((1, 0)), s_zero, use_acc=False,
                      is_async=True)
    _pass_turn(turn, wg, CONSUMERS, PINGPONG)
    rnd += 1
    s = warpgroup_mma_wait(0, deps=(s,))
    mbarrier.arrive(k_empty.index(stage))
    s = _scores(s, lo, q_pos, kv_len, window_left, diag, win_end, qk_scale, logit_cap,
                s_layout, BLOCK_N, HAS_WINDOW, HAS_CAP)
    p, m_i, alpha, l_i = _softmax_step(s, m_i, l_i, c)
    p_op = gl.convert_layout(p.to(dtype), p_layout)

    for i in range(1, n_blocks):
        g = it + i
        start = lo + i * BLOCK_N
        stage = g % STAGES
        prev = (g - 1) % STAGES
        mbarrier.wait(k_ready.index(stage), (g // STAGES) & 1)
        _take_turn(turn, wg, rnd, PINGPONG)
        s_tok = warpgroup_mma(q_rows, k_smem.index(stage).permute((1, 0)), s_zero,
                              use_acc=False, is_async=True)
        mbarrier.wait(v_ready.index(prev), ((g - 1) // STAGES) & 1)
        o_tok = warpgroup_mma(p_op, v_smem.index(prev), acc, is_async=True)
        _pass_turn(turn, wg, CONSUMERS, PINGPONG)
        rnd += 1
        s = warpgroup_mma_wait(1, deps=(s_tok,))  # groups retire in order: S is done
        mbarrier.arrive(k_empty.index(stage))
        s = _scores(s, start, q_pos, kv_len, window_left, diag, win_end, qk_scale,
                    logit_cap, s_layout, BLOCK_N, HAS_WINDOW, HAS_CAP)
        p, m_i, alpha, l_i = _softmax_step(s, m_i, l_i, c)
        acc, p_op = warpgroup_mma_wait(0, deps=(o_tok, p_op))
        mbarrier.arrive(v_empty.index(prev))
        acc = acc * gl.convert_layout(alpha, row_o)[:, None]
        p_op = gl.convert_layout(p.to(dtype), p_layout)
    mbarrier.arrive(q_empty)  # every S of the tile is done: the next Q may come in

    g = it + n_blocks - 1
    stage = g % STAGES
    mbarrier.wait(v_ready.index(stage), (g // STAGES) & 1)
    last_start = lo + (n_blocks - 1) * BLOCK_N
    if last_start + BLOCK_N > kv_len:
        _zero_tail_rows(v_smem.index(stage), last_start, kv_len, clean_bar, cleans & 1, wg,
                        BLOCK_N, HEAD_DIM)
        cleans += 1
    _take_turn(turn, wg, rnd, PINGPONG)
    acc = warpgroup_mma(p_op, v_smem.index(stage), acc, is_async=True)
    _pass_turn(turn, wg, CONSUMERS, PINGPONG)
    rnd += 1
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
    store_layout: gl.constexpr = _row_layout(HEAD_DIM)
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
    return it + n_blocks, rnd, cleans, done + 1


@gluon.jit
def _consumer(wg: gl.constexpr, shared, GROUP: gl.constexpr, BLOCK_M: gl.constexpr,
              BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr,
              HAS_WINDOW: gl.constexpr, HAS_SINKS: gl.constexpr, HAS_CAP: gl.constexpr,
              HAS_LSE: gl.constexpr, PINGPONG: gl.constexpr):
    """One consumer warpgroup over the program's tiles (the producer's sequence). `shared`
    holds the arguments every consumer takes (one tuple: the kernel writes it once for two
    or three consumers; a tuple in a variable holds no constexprs, so those come apart)."""
    (q_smem, k_smem, v_smem, q_bar, q_empty, k_ready, v_ready, k_empty, v_empty, clean_bar,
     turn, Out, Lse, Sinks, num_tiles, num_q_heads, Work, Schedule, scheduled, QIndptr, KvLens,
     PageTable, stride_page_row, qk_scale, logit_cap, window_left, stride_o_tok, stride_o_head,
     stride_lse_tok) = shared
    it = 0
    rnd = 0
    cleans = 0
    done = 0
    for w in range(0, gl.cdiv(num_tiles, gl.num_programs(0))):
        (valid, head, kv_head, q_block, q_start, q_len, kv_len, prefix, lo, hi, diag,
         win_end, page_row) = _tile(w, num_tiles, num_q_heads, Work, Schedule, scheduled,
                                    QIndptr, KvLens, PageTable, stride_page_row, window_left,
                                    GROUP, BLOCK_M, BLOCK_N, HAS_WINDOW)
        if valid:
            it, rnd, cleans, done = _consume_tile(
                wg, it, rnd, cleans, done, q_smem, k_smem, v_smem, q_bar, q_empty, k_ready,
                v_ready, k_empty, v_empty, clean_bar, turn, Out, Lse, Sinks, head, q_block,
                q_start, q_len, kv_len, prefix, lo, hi, diag, win_end, qk_scale, logit_cap,
                window_left, stride_o_tok, stride_o_head, stride_lse_tok, BLOCK_M, BLOCK_N,
                HEAD_DIM, STAGES, HAS_WINDOW, HAS_SINKS, HAS_CAP, HAS_LSE, PINGPONG)


@gluon.jit
def prefill_hopper_kernel(
    q_desc, k_desc, v_desc, Out, Lse, Sinks, PageTable, QIndptr, KvLens, Work, Schedule,
    scheduled, sm_scale, logit_cap, window_left, oob_slot, num_tiles, num_q_heads,
    stride_o_tok, stride_o_head, stride_lse_tok, stride_page_row,
    GROUP: gl.constexpr, PAGE_SIZE: gl.constexpr, HEAD_DIM: gl.constexpr,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
    HAS_WINDOW: gl.constexpr, HAS_SINKS: gl.constexpr, HAS_CAP: gl.constexpr,
    HAS_LSE: gl.constexpr, PINGPONG: gl.constexpr,
):
    PAGE_TILE: gl.constexpr = k_desc.block_type.shape[0]
    dtype: gl.constexpr = q_desc.dtype
    # the Q tile as a 64-row piece per consumer (a copy's box is a power of 2, 192 is not)
    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M // 64, 64, HEAD_DIM], q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    clean_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    CONSUMERS: gl.constexpr = BLOCK_M // 64
    turn = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    mbarrier.init(q_empty, count=CONSUMERS)  # every consumer is done with a Q tile
    mbarrier.init(clean_bar, count=CONSUMERS)
    for c in gl.static_range(CONSUMERS):
        mbarrier.init(turn.index(c), count=1)
    if PINGPONG:
        mbarrier.arrive(turn.index(0))  # consumer 0 issues first
    for s in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(s), count=1)
        mbarrier.init(v_ready.index(s), count=1)
        mbarrier.init(k_empty.index(s), count=CONSUMERS)  # every consumer releases a tile
        mbarrier.init(v_empty.index(s), count=CONSUMERS)

    shared = (q_smem, k_smem, v_smem, q_bar, q_empty, k_ready, v_ready, k_empty, v_empty,
              clean_bar, turn, Out, Lse, Sinks, num_tiles, num_q_heads, Work, Schedule,
              scheduled, QIndptr, KvLens, PageTable, stride_page_row, sm_scale, logit_cap,
              window_left, stride_o_tok, stride_o_head, stride_lse_tok)
    producer = (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, q_empty, k_ready,
                v_ready, k_empty, v_empty, num_tiles, num_q_heads, Work, Schedule, scheduled,
                QIndptr, KvLens, PageTable, stride_page_row, window_left, oob_slot)
    # the first consumer runs in the kernel's own 4 warps; registers: the consumers hold
    # S, O and P (the producer only addresses)
    if CONSUMERS == 2:
        gl.warp_specialize([
            (_consumer, (0, shared, GROUP, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, HAS_WINDOW,
                         HAS_SINKS, HAS_CAP, HAS_LSE, PINGPONG)),
            (_consumer, (1, shared, GROUP, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, HAS_WINDOW,
                         HAS_SINKS, HAS_CAP, HAS_LSE, PINGPONG)),
            (_producer, (producer, GROUP, PAGE_SIZE, HEAD_DIM, BLOCK_M, BLOCK_N, PAGE_TILE,
                         STAGES, HAS_WINDOW))], [4, 1], [240, 24])
    else:
        gl.warp_specialize([
            (_consumer, (0, shared, GROUP, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, HAS_WINDOW,
                         HAS_SINKS, HAS_CAP, HAS_LSE, PINGPONG)),
            (_consumer, (1, shared, GROUP, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, HAS_WINDOW,
                         HAS_SINKS, HAS_CAP, HAS_LSE, PINGPONG)),
            (_consumer, (2, shared, GROUP, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, HAS_WINDOW,
                         HAS_SINKS, HAS_CAP, HAS_LSE, PINGPONG)),
            (_producer, (producer, GROUP, PAGE_SIZE, HEAD_DIM, BLOCK_M, BLOCK_N, PAGE_TILE,
                         STAGES, HAS_WINDOW))], [4, 4, 1], [160, 160, 24])
