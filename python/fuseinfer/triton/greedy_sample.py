"""Triton kernel: the greedy token of each logits row, written where the runtime reads it.

A row's vocabulary is split into `chunks` spans of chunk_len (a multiple of BLOCK), one
program each, so a small batch still spreads its rows over many SMs; a program walks its
span in BLOCK-wide tiles (Triton's pipelined loop) and keeps, per lane, the largest key
seen and its first index. A key is the float's bits made orderable as a signed int (NaN
above everything and -0 equal to +0, as torch.argmax ranks them); a program's answer is
packed as key << 32 | (INT32_MAX - index), so the largest packed value is the largest
key at its smallest index: the first maximum, like torch.argmax. With several chunks,
each program stores its packed answer, counts itself in the row's arrival counter, and
the last to arrive takes the largest of the row's answers and sets the counter back to
0 (for the next call or graph replay). The token goes to Tokens[row] and, with
HAS_FUTURE, to Future[future_offset + row] (the runner's buffer of tokens sampled by
steps still in flight), so the step needs no copy kernel after it.
"""

from __future__ import annotations

import triton
import triton.language as tl

_INT32_MIN = tl.constexpr(-2147483648)
_INT32_MAX = tl.constexpr(2147483647)
_INT64_MIN = tl.constexpr(-9223372036854775808)


@triton.jit
def greedy_sample_kernel(Logits, Tokens, Future, Partial, Counters, V, stride_l,
                         future_offset, chunks, chunk_len,
                         BLOCK: tl.constexpr, CHUNKS_PAD: tl.constexpr, STAGES: tl.constexpr,
                         HAS_FUTURE: tl.constexpr, USE_PDL: tl.constexpr):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    cols = tl.arange(0, BLOCK)
    base = Logits + row.to(tl.int64) * stride_l
    begin = chunk * chunk_len
    end = tl.minimum(V, begin + chunk_len)
    best_key = tl.full([BLOCK], _INT32_MIN, tl.int32)
    best_idx = tl.zeros([BLOCK], tl.int32)
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    for start in tl.range(begin, end, BLOCK, num_stages=STAGES):
        idx = start + cols
        ok = idx < end
        x = tl.load(base + idx, mask=ok, other=0.0).to(tl.float32)
        bits = x.to(tl.int32, bitcast=True)
        key = bits ^ ((bits >> 31) & _INT32_MAX)  # negative floats: order reversed
        key = tl.where(x == 0.0, 0, key)  # -0 ranks as +0
        key = tl.where(x != x, _INT32_MAX, key)  # NaN: the largest
        key = tl.where(ok, key, _INT32_MIN)  # below any float, even -inf
        better = key > best_key  # strict: a lane keeps its first maximum
        best_key = tl.where(better, key, best_key)
        best_idx = tl.where(better, idx, best_idx)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    packed = (best_key.to(tl.int64) << 32) + (-best_idx + _INT32_MAX).to(tl.int64)
    best = tl.max(packed, axis=0)
    if chunks > 1:
        tl.store(Partial + row * chunks + chunk, best)
        tl.debug_barrier()  # the answer is stored before the count releases it
        arrived = tl.atomic_add(Counters + row, 1, sem="acq_rel", scope="gpu")
        if arrived == chunks - 1:
            at = tl.arange(0, CHUNKS_PAD)
            parts = tl.load(Partial + row * chunks + at, mask=at < chunks, other=_INT64_MIN,
                            cache_modifier=".cg")
            best = tl.max(parts, axis=0)
            tl.atomic_xchg(Counters + row, 0, sem="relaxed", scope="gpu")
            _store(Tokens, Future, row, future_offset, best, HAS_FUTURE)
    else:
        _store(Tokens, Future, row, future_offset, best, HAS_FUTURE)


@triton.jit
def _store(Tokens, Future, row, future_offset, best, HAS_FUTURE: tl.constexpr):
    """The token of a row's packed answer, to Tokens (and Future)."""
    token = -(best & 0xFFFFFFFF) + _INT32_MAX
    tl.store(Tokens + row, token)
    if HAS_FUTURE:
        tl.store(Future + future_offset + row, token)
