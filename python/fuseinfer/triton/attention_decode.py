"""Triton kernels: paged split-KV decode attention (flash-decoding) and its merge.

Stage 1: program (request, head or KV group, split) attends over one piece of the
request's visible KV range and writes an unnormalized partial: the running max m (base 2),
the weights' sum l and acc = sum exp2(s - m) v, as out = acc / l and lse = m + log2(l).
How many pieces a request gets is decided here from its length (at most the grid's
split count, each at least MIN_CHUNK tokens), so one launch shape serves every length.
Stage 2 merges a request's pieces, adds the sink to the denominator and scales by
v_scale. A request that fits one piece is finished by stage 1 directly. With FUSED_MERGE
there is no stage 2 launch: each piece counts itself in a per-(request, head group)
counter after storing its partial, and the last to arrive merges the pieces, in piece
order (so the result does not depend on which finishes last), and sets the counter back
to zero.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _e4m3_to_f16(x):
    """float8 e4m3 -> float16, two at a time with Hopper's paired convert, for the V tile.
    Written as inline assembly (not pure, so it stays where it is): with a plain cast the
    compiler moves the 8-bit tile into p @ v's transposed operand layout first, through
    shared memory one byte per load (64 byte loads per thread per block for head_dim 128),
    which made an FP8 cache slower to read than a bf16 one. K needs no such care: its
    operand layout keeps each thread's bytes contiguous, so the plain cast converts after
    a wide shared-memory load."""
    return tl.inline_asm_elementwise("cvt.rn.f16x2.e4m3x2 $0, $1;", "=r,h", [x],
                                     dtype=tl.float16, is_pure=False, pack=2)


@triton.jit
def _split_range(kv_len, window_left, split, num_splits_max, MIN_CHUNK: tl.constexpr,
                 BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """(start, end, first, pieces): this split's KV range, empty when the split is unused,
    starting at a multiple of BLOCK_N; keys below `first` (the window's) are masked."""
    first = 0
    if HAS_WINDOW:
        first = tl.maximum(kv_len - 1 - window_left, 0)
    aligned = (first // BLOCK_N) * BLOCK_N
    visible = kv_len - aligned
    pieces = tl.minimum(tl.cdiv(visible, MIN_CHUNK), num_splits_max)
    pieces = tl.maximum(pieces, 1)
    chunk = tl.cdiv(tl.cdiv(visible, pieces), BLOCK_N) * BLOCK_N
    start = aligned + split * chunk
    end = tl.minimum(start + chunk, kv_len)
    return start, end, first, pieces


@triton.jit
def _finish(acc, m_i, l_i, Sinks, heads, head_ok, VScale, HAS_SINKS: tl.constexpr,
            KV_SCALED: tl.constexpr):
    """Normalize a complete softmax: the sink joins the denominator, v_scale (VScale: a
    pointer per row) scales the output; returns (out, lse)."""
    if HAS_SINKS:  # a request with no keys (a padded row) keeps zeros and lse -inf
        seen = l_i > 0
        sink = tl.load(Sinks + heads, mask=head_ok, other=0.0).to(tl.float32) \
            * 1.4426950408889634
        m_fin = tl.where(seen, tl.maximum(m_i, sink), 0.0)
        alpha = tl.where(seen, tl.math.exp2(m_i - m_fin), 0.0)
        acc = acc * alpha[:, None]
        l_i = tl.where(seen, l_i * alpha + tl.math.exp2(sink - m_fin), 0.0)
        m_i = m_fin
    inv_l = tl.where(l_i > 0, 1.0 / l_i, 0.0)
    if KV_SCALED:
        inv_l = inv_l * tl.load(VScale)
    lse = tl.where(l_i > 0, (m_i + tl.math.log2(l_i)) * 0.6931471805599453, float("-inf"))
    return acc * inv_l[:, None], lse


@triton.jit
def _program_rows(unit, ROWS: tl.constexpr, GROUP: tl.constexpr,
                  KV_PER_PROGRAM: tl.constexpr, USE_DOT: tl.constexpr):
    """(q heads, real rows, each row's KV head from the program's first) of ROWS rows of
    program `unit`: KV_PER_PROGRAM KV groups of GROUP rows (USE_DOT), else one q head.
    Padding rows past the group take the last KV head: their results are never stored,
    but their scale loads must stay in bounds."""
    rows = tl.arange(0, ROWS)
    if USE_DOT:
        heads = unit * (GROUP * KV_PER_PROGRAM) + rows
        ok = rows < GROUP * KV_PER_PROGRAM
        row_kv = tl.minimum(rows // GROUP, KV_PER_PROGRAM - 1)
    else:
        heads = unit + rows
        ok = rows < 1
        row_kv = rows * 0
    return heads, ok, row_kv


@triton.jit
def _merge_pieces(PartO, PartLse, piece0, pieces, stride_part_split, rows_ok,
                  HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr, CHUNK: tl.constexpr):
    """(acc, l, m) of a request's pieces for the rows at `piece0` (their partials' offsets
    at piece 0 from PartLse / PartO, the request's: 32-bit, which keeps the tiles'
    addresses in half the registers; rows_ok: the real rows): m the largest piece lse
    (base 2), acc and l their outputs and weights scaled by 2^(lse - m), as merge_kernel
    sums them. Every piece's lse comes in one load and the outputs CHUNK pieces at a time,
    so the last piece's merge waits on a few rounds of loads, not two per piece (one piece
    at a time, it made decode slower than a second kernel)."""
    offs_s = tl.arange(0, SPLITS)
    every = (offs_s[:, None] < pieces) & rows_ok[None, :]
    lse = tl.load(PartLse + piece0[None, :] + offs_s[:, None] * stride_part_split, mask=every,
                  other=float("-inf"), cache_modifier=".cg")
    m = tl.where(rows_ok, tl.max(lse, 0), 0.0)
    offs_c = tl.arange(0, CHUNK)
    offs_d = tl.arange(0, HEAD_DIM)
    acc = tl.zeros([piece0.shape[0], HEAD_DIM], tl.float32)
    l_sum = tl.zeros([piece0.shape[0]], tl.float32)
    for s0 in range(0, pieces, CHUNK):
        s = s0 + offs_c
        ok = (s[:, None] < pieces) & rows_ok[None, :]
        at = piece0[None, :] + s[:, None] * stride_part_split
        w = tl.where(ok, tl.math.exp2(tl.load(PartLse + at, mask=ok, other=0.0,
                                              cache_modifier=".cg") - m[None, :]), 0.0)
        o = tl.load(PartO + at[:, :, None] * HEAD_DIM + offs_d[None, None, :],
                    mask=ok[:, :, None], other=0.0, cache_modifier=".cg")
        acc += tl.sum(o * w[:, :, None], 0)
        l_sum += tl.sum(w, 0)
    return acc, l_sum, m


@triton.jit
def _finish_merged(acc, l_sum, m, Out, Lse, Sinks, VScale, out_at, lse_at, heads, head_ok,
                   offs_d, HAS_SINKS: tl.constexpr, HAS_LSE: tl.constexpr,
                   KV_SCALED: tl.constexpr):
    """Store merged pieces: the sink joins the denominator, v_scale scales the output."""
    if HAS_SINKS:
        sink = tl.load(Sinks + heads, mask=head_ok, other=0.0).to(tl.float32) \
            * 1.4426950408889634
        m_fin = tl.maximum(m, sink)
        scale = tl.math.exp2(m - m_fin)
        acc = acc * scale[:, None]
        l_sum = l_sum * scale + tl.math.exp2(sink - m_fin)
        m = m_fin
    out = acc / l_sum[:, None]
    if KV_SCALED:  # VScale: each row's scale
        out = out * tl.load(VScale)[:, None]
    tl.store(Out + out_at[:, None] + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=head_ok[:, None])
    if HAS_LSE:
        tl.store(Lse + lse_at, (m + tl.math.log2(l_sum)) * 0.6931471805599453, mask=head_ok)


@triton.jit
def decode_kernel(
    Q, K, V, Out, Lse, PartO, PartLse, Sinks, PageTable, KvLens, KScale, VScale, Counters,
    sm_scale, logit_cap, window_left, num_q_heads, num_splits_max, k_scale_stride,
    v_scale_stride, stride_q_req, stride_q_head, stride_k_slot, stride_k_head, stride_v_slot,
    stride_v_head, stride_o_req, stride_o_head, stride_lse_req, stride_page_row,
    stride_part_req, stride_part_head, stride_part_split,
    GROUP: tl.constexpr, HEADS_PER_PROGRAM: tl.constexpr, USE_DOT: tl.constexpr,
    KV_PER_PROGRAM: tl.constexpr,
    PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
    MIN_CHUNK: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SINKS: tl.constexpr,
    HAS_CAP: tl.constexpr, HAS_LSE: tl.constexpr, KV_SCALED: tl.constexpr,
    FUSED_MERGE: tl.constexpr, USE_PDL: tl.constexpr, DOT_F32: tl.constexpr,
    MERGE_ROWS: tl.constexpr = 1, MERGE_SPLITS: tl.constexpr = 1,
    MERGE_CHUNK: tl.constexpr = 1,
):
    req = tl.program_id(0)
    unit = tl.program_id(1)  # a KV group (USE_DOT) or a single q head
    split = tl.program_id(2)
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    kv_len = tl.load(KvLens + req)
    start, end, first, pieces = _split_range(kv_len, window_left, split, num_splits_max,
                                             MIN_CHUNK, BLOCK_N, HAS_WINDOW)
    # KV_PER_PROGRAM KV heads, GROUP q rows each (USE_DOT), else one q head; the first
    kv_head = unit * KV_PER_PROGRAM if USE_DOT else unit // GROUP
    heads, head_ok, row_kv = _program_rows(unit, HEADS_PER_PROGRAM, GROUP, KV_PER_PROGRAM,
                                           USE_DOT)
    # The program's KV heads side by side, WIDTH wide: each key row read is one contiguous
    # run of KV_PER_PROGRAM heads. Row r's q sits in its own head's columns (zeros
    # elsewhere), so q . k gives each row its own head's logits in one dot; p @ v gives
    # every head's columns, of which each row keeps its own.
    WIDTH: tl.constexpr = KV_PER_PROGRAM * HEAD_DIM
    # An FP8 cache on tensor cores: the dots run in float16 (one convert instruction per
    # pair of FP8 values; p is in [0, 1]); the interpreter casts instead.
    F16_FROM_FP8: tl.constexpr = KV_SCALED and USE_DOT and not DOT_F32
    offs_w = tl.arange(0, WIDTH)
    w_head = offs_w // HEAD_DIM
    w_dim = offs_w % HEAD_DIM
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    m_i = tl.full([HEADS_PER_PROGRAM], float("-inf"), tl.float32)
    l_i = tl.zeros([HEADS_PER_PROGRAM], tl.float32)
    acc = tl.zeros([HEADS_PER_PROGRAM, WIDTH], tl.float32)
    if start < end:
        own = head_ok[:, None] & (w_head[None, :] == row_kv[:, None])
        q = tl.load(Q + req.to(tl.int64) * stride_q_req + heads[:, None] * stride_q_head
                    + w_dim[None, :], mask=own, other=0.0)
        if DOT_F32:  # the interpreter's dot mishandles bfloat16
            q = q.to(tl.float32)
        elif F16_FROM_FP8:  # q rounds to float16 for the dots (p is in [0, 1])
            q = q.to(tl.float16)
        qk_scale = tl.full([HEADS_PER_PROGRAM], sm_scale, tl.float32)
        if KV_SCALED:  # each row's KV head's scale (stride 0: one for all)
            qk_scale = qk_scale * tl.load(KScale + (kv_head + row_kv) * k_scale_stride)
        page_row = PageTable + req.to(tl.int64) * stride_page_row
        k_offs = offs_n[:, None] * stride_k_slot + (kv_head + w_head)[None, :] * stride_k_head \
            + w_dim[None, :]
        v_offs = offs_n[:, None] * stride_v_slot + (kv_head + w_head)[None, :] * stride_v_head \
            + w_dim[None, :]
        for block in range(start, end, BLOCK_N):
            pos = block + offs_n
            valid = pos < end
            if HAS_WINDOW:
                valid &= pos >= first
            if PAGE_SIZE % BLOCK_N == 0:  # the block lies in one page: a scalar base
                page = tl.load(page_row + block // PAGE_SIZE).to(tl.int64)
                row = page * PAGE_SIZE + block % PAGE_SIZE
                k_ptrs = K + row * stride_k_slot + k_offs
                v_ptrs = V + row * stride_v_slot + v_offs
            else:
                page = tl.load(page_row + pos // PAGE_SIZE, mask=valid, other=0)
                slot = page.to(tl.int64) * PAGE_SIZE + pos % PAGE_SIZE
                k_ptrs = K + slot[:, None] * stride_k_slot + (k_offs - offs_n[:, None]
                                                              * stride_k_slot)
                v_ptrs = V + slot[:, None] * stride_v_slot + (v_offs - offs_n[:, None]
                                                              * stride_v_slot)
            k = tl.load(k_ptrs, mask=valid[:, None], other=0.0)
            if USE_DOT:
                s = tl.dot(q, tl.trans(k.to(q.dtype)))
            else:
                s = tl.sum(q.to(tl.float32) * k.to(tl.float32), 1)[None, :]
            s = s * qk_scale[:, None]
            if HAS_CAP:
                s = logit_cap * (2.0 * tl.sigmoid(2.0 * s / logit_cap) - 1.0)
            s = tl.where(valid[None, :], s * 1.4426950408889634, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.math.exp2(m_i - m_new)
            p = tl.math.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_ptrs, mask=valid[:, None], other=0.0)
            if F16_FROM_FP8:
                acc = tl.dot(p.to(q.dtype), _e4m3_to_f16(v), acc * alpha[:, None])
            elif USE_DOT:
                acc = tl.dot(p.to(q.dtype), v.to(q.dtype), acc * alpha[:, None])
            else:
                acc = acc * alpha[:, None] + tl.sum(tl.sum(p, 0)[:, None] * v.to(tl.float32),
                                                    0)[None, :]
            m_i = m_new
    if KV_PER_PROGRAM > 1:  # each row keeps its own head's columns
        acc = tl.where((w_head[None, :] == row_kv[:, None]), acc, 0.0)
        acc = tl.sum(tl.reshape(acc, (HEADS_PER_PROGRAM, KV_PER_PROGRAM, HEAD_DIM)), 1)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    v_scale_at = VScale + (kv_head + row_kv) * v_scale_stride  # each row's KV head's
    if pieces == 1:
        if split == 0:
            out, lse = _finish(acc, m_i, l_i, Sinks, heads, head_ok, v_scale_at, HAS_SINKS,
                               KV_SCALED)
            tl.store(Out + req.to(tl.int64) * stride_o_req + heads[:, None] * stride_o_head
                     + offs_d[None, :], out.to(Out.dtype.element_ty), mask=head_ok[:, None])
            if HAS_LSE:
                tl.store(Lse + req.to(tl.int64) * stride_lse_req + heads, lse, mask=head_ok)
    elif split < pieces:
        part = req.to(tl.int64) * stride_part_req + heads * stride_part_head \
            + split * stride_part_split
        inv_l = tl.where(l_i > 0, 1.0 / l_i, 0.0)
        tl.store(PartO + part[:, None] * HEAD_DIM + offs_d[None, :], acc * inv_l[:, None],
                 mask=head_ok[:, None])
        part_lse = tl.where(l_i > 0, m_i + tl.math.log2(l_i), float("-inf"))
        tl.store(PartLse + part, part_lse, mask=head_ok)
        if FUSED_MERGE:
            tl.debug_barrier()  # every thread's partial is stored before the count releases it
            counter = Counters + req.to(tl.int64) * num_q_heads + unit
            arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
            if arrived == pieces - 1:  # the last piece: the others' partials are visible
                tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")
                # the program's real rows only (MERGE_ROWS: their count to a power of two,
                # not the 16 the dots pad to)
                m_heads, m_ok, m_kv = _program_rows(unit, MERGE_ROWS, GROUP, KV_PER_PROGRAM,
                                                    USE_DOT)
                req_part = req.to(tl.int64) * stride_part_req
                # new names: the merge's tiles are MERGE_ROWS tall, acc HEADS_PER_PROGRAM
                m_acc, m_l, m_max = _merge_pieces(PartO + req_part * HEAD_DIM,
                                                  PartLse + req_part,
                                                  m_heads * stride_part_head, pieces,
                                                  stride_part_split, m_ok, HEAD_DIM,
                                                  MERGE_SPLITS, MERGE_CHUNK)
                _finish_merged(m_acc, m_l, m_max, Out, Lse, Sinks,
                               VScale + (kv_head + m_kv) * v_scale_stride,
                               req.to(tl.int64) * stride_o_req + m_heads * stride_o_head,
                               req.to(tl.int64) * stride_lse_req + m_heads, m_heads, m_ok,
                               offs_d, HAS_SINKS, HAS_LSE, KV_SCALED)


@triton.jit
def merge_kernel(
    Out, Lse, PartO, PartLse, Sinks, KvLens, VScale, window_left, num_splits_max,
    v_scale_stride, kv_group, stride_o_req, stride_o_head, stride_lse_req,
    stride_part_req, stride_part_head, stride_part_split,
    HEAD_DIM: tl.constexpr, SPLITS_POW2: tl.constexpr, MIN_CHUNK: tl.constexpr,
    BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SINKS: tl.constexpr,
    HAS_LSE: tl.constexpr, KV_SCALED: tl.constexpr, USE_PDL: tl.constexpr,
):
    req = tl.program_id(0)
    head = tl.program_id(1)
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    kv_len = tl.load(KvLens + req)
    _, _, _, pieces = _split_range(kv_len, window_left, 0, num_splits_max, MIN_CHUNK, BLOCK_N,
                                HAS_WINDOW)
    if pieces > 1:
        offs_s = tl.arange(0, SPLITS_POW2)
        used = offs_s < pieces
        part = req.to(tl.int64) * stride_part_req + head * stride_part_head \
            + offs_s * stride_part_split
        lse = tl.load(PartLse + part, mask=used, other=float("-inf"))
        m = tl.max(lse, 0)
        w = tl.where(used, tl.math.exp2(lse - m), 0.0)
        offs_d = tl.arange(0, HEAD_DIM)
        parts = tl.load(PartO + part[:, None] * HEAD_DIM + offs_d[None, :],
                        mask=used[:, None], other=0.0)
        acc = tl.sum(parts * w[:, None], 0)
        l_sum = tl.sum(w, 0)
        if HAS_SINKS:
            sink = tl.load(Sinks + head).to(tl.float32) * 1.4426950408889634
            m_fin = tl.maximum(m, sink)
            scale = tl.math.exp2(m - m_fin)
            acc = acc * scale
            l_sum = l_sum * scale + tl.math.exp2(sink - m_fin)
            m = m_fin
        out = acc / l_sum
        if KV_SCALED:  # the head's KV head's scale (stride 0: one for all)
            out = out * tl.load(VScale + (head // kv_group) * v_scale_stride)
        tl.store(Out + req.to(tl.int64) * stride_o_req + head * stride_o_head + offs_d,
                 out.to(Out.dtype.element_ty))
        if HAS_LSE:
            tl.store(Lse + req.to(tl.int64) * stride_lse_req + head,
                     (m + tl.math.log2(l_sum)) * 0.6931471805599453)
