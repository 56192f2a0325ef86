"""Triton kernel: the greedy token of each logits row, written where the runtime reads it.

One program per row walks the vocabulary in BLOCK-wide tiles (Triton's pipelined loop, so
several tiles are in flight) and keeps, per lane, the largest key seen and its first
index. A key is the float's bits made orderable as a signed int (NaN above everything and
-0 equal to +0, as torch.argmax ranks them), so the row's answer is the smallest index
holding the largest key: the first maximum, like torch.argmax. The token goes to Tokens
[row] and, with HAS_FUTURE, to Future[future_offset + row] (the runner's buffer of
tokens sampled by steps still in flight), so the step needs no copy kernel after it.
"""

from __future__ import annotations

import triton
import triton.language as tl

_INT32_MIN = tl.constexpr(-2147483648)
_INT32_MAX = tl.constexpr(2147483647)


@triton.jit
def greedy_sample_kernel(Logits, Tokens, Future, V, stride_l, future_offset,
                         BLOCK: tl.constexpr, STAGES: tl.constexpr,
                         HAS_FUTURE: tl.constexpr, USE_PDL: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    base = Logits + row.to(tl.int64) * stride_l
    best_key = tl.full([BLOCK], _INT32_MIN, tl.int32)
    best_idx = tl.zeros([BLOCK], tl.int32)
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    for start in tl.range(0, V, BLOCK, num_stages=STAGES):
        idx = start + cols
        ok = idx < V
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
    top = tl.max(best_key, axis=0)
    token = tl.min(tl.where(best_key == top, best_idx, _INT32_MAX), axis=0).to(tl.int64)
    tl.store(Tokens + row, token)
    if HAS_FUTURE:
        tl.store(Future + future_offset + row, token)
