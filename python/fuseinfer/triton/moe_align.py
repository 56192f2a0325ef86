"""Triton kernels: group the flattened (token, slot) rows of top-k routing by expert, each
expert's segment padded to a multiple of block_size (moe_align_block_size).

Two launches, one program per expert each, no atomics, so the result is deterministic:
  count:   program e counts the ids equal to e;
  scatter: program e reads every count, finds its segment start (a prefix sum over the
           padded counts), writes its rows in flattened order (stable), the sentinel into its
           padding and e into its blocks' expert ids; program 0 also writes the total and
           the sentinel / -1 tail up to the fixed capacity.
The segments are disjoint, so no position is written twice. Ids outside [0, E) match no
program and are dropped. Every program reads all ids, which stays in L2 for the sizes of
one batch (T * k of a few 10^4).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def moe_count_kernel(IDS, COUNTS, numel, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    e = tl.program_id(0)
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    count = 0
    for start in range(0, numel, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ids = tl.load(IDS + offs, mask=offs < numel, other=-1)
        count += tl.sum((ids == e).to(tl.int32), axis=0)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    tl.store(COUNTS + e, count)


@triton.jit
def moe_align_scatter_kernel(IDS, COUNTS, SORTED, EXPERT_IDS, NUM_POST, numel, num_experts,
                             block_size, max_padded, max_blocks, E_PAD: tl.constexpr,
                             BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    e = tl.program_id(0)
    experts = tl.arange(0, E_PAD)
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    counts = tl.load(COUNTS + experts, mask=experts < num_experts, other=0)
    padded = (counts + block_size - 1) // block_size * block_size
    ends = tl.cumsum(padded, axis=0)
    mine = experts == e
    start = tl.sum(tl.where(mine, ends - padded, 0), axis=0)
    count = tl.sum(tl.where(mine, counts, 0), axis=0)
    end = tl.sum(tl.where(mine, ends, 0), axis=0)
    # this expert's rows, in flattened order: rank within a chunk by a running sum
    placed = 0
    for chunk in range(0, numel, BLOCK):
        offs = chunk + tl.arange(0, BLOCK)
        ids = tl.load(IDS + offs, mask=offs < numel, other=-1)
        hit = (ids == e).to(tl.int32)
        rank = tl.cumsum(hit, axis=0) - 1
        tl.store(SORTED + start + placed + rank, offs.to(tl.int32), mask=hit != 0)
        placed += tl.sum(hit, axis=0)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    for pos in range(start + count, end, BLOCK):
        offs = pos + tl.arange(0, BLOCK)
        tl.store(SORTED + offs, (offs * 0 + numel).to(tl.int32), mask=offs < end)
    for b in range(start // block_size, end // block_size, BLOCK):
        offs = b + tl.arange(0, BLOCK)
        tl.store(EXPERT_IDS + offs, e + offs * 0, mask=offs < end // block_size)
    if e == 0:
        total = tl.sum(padded, axis=0)
        tl.store(NUM_POST, total)
        for pos in range(total, max_padded, BLOCK):
            offs = pos + tl.arange(0, BLOCK)
            tl.store(SORTED + offs, (offs * 0 + numel).to(tl.int32), mask=offs < max_padded)
        for b in range(total // block_size, max_blocks, BLOCK):
            offs = b + tl.arange(0, BLOCK)
            tl.store(EXPERT_IDS + offs, offs * 0 - 1, mask=offs < max_blocks)
