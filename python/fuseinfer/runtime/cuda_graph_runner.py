"""CUDA graphs for decode steps.

One graph per batch size in `batch_sizes` (1, 2, 4, 8, then every 8 up to
`cuda_graph_max_bs`). Each graph reads fixed input buffers (token ids, positions, KV
slots, the request page-table rows, the attention lengths) and writes fixed logits. A
decode batch is padded up to the next captured size: padded rows have kv_len 0 (zeros
from attention), write their KV into the reserved pad page 0, and their logits are
ignored. The garbage collector is off during capture.

A step is `prepare` (inputs into the fixed buffers and the attention plan of the step's
lengths, planned into the captured plan's buffers: `PagedAttention.plan_decode` keeps
their addresses), then `replay` of that prepared step.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch

from ..models.decoder import DecoderModel, ForwardBatch
from ..ops.attention import DecodePlan
from .gc_control import gc_disabled


def graph_batch_sizes(max_bs: int) -> list[int]:
    sizes = [b for b in (1, 2, 4) if b < max_bs] + list(range(8, max_bs + 1, 8))
    if not sizes or sizes[-1] != max_bs:
        sizes.append(max_bs)
    return sorted(set(sizes))


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    logits: torch.Tensor


@dataclass(frozen=True)
class PreparedDecode:
    """A decode step loaded into a graph's input buffers, ready to replay."""

    batch: int  # real rows
    size: int  # the captured (padded) batch size replayed
    plan: DecodePlan  # the step's lengths, in the captured plan's buffers
    # which prepare() filled the shared buffers: only the latest one can be replayed
    generation: int = 0


class DecodeGraphRunner:
    def __init__(self, model: DecoderModel, page_table_width: int, max_bs: int) -> None:
        self.model = model
        self.max_bs = max_bs
        self.batch_sizes = graph_batch_sizes(max_bs)
        dev = model.weights.embed.device
        self.input_ids = torch.zeros(max_bs, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(max_bs, dtype=torch.int64, device=dev)
        self.cache_loc = torch.zeros(max_bs, dtype=torch.int64, device=dev)
        self.page_table = torch.zeros(max_bs, page_table_width, dtype=torch.int32, device=dev)
        self.rows = torch.arange(max_bs, dtype=torch.int64, device=dev)
        self.graphs: dict[int, _Graph] = {}
        self.pool = None
        self._generation = 0  # prepare() calls so far

    def padded_size(self, bs: int) -> int | None:
        i = bisect.bisect_left(self.batch_sizes, bs)
        return self.batch_sizes[i] if i < len(self.batch_sizes) else None

    def _batch(self, plan: DecodePlan) -> ForwardBatch:
        bs = plan.batch
        return ForwardBatch(self.input_ids[:bs], self.positions[:bs], self.cache_loc[:bs],
                            plan, self.rows[:bs])

    def _plan(self, kv_lens: list[int]) -> DecodePlan:
        return self.model.attention.plan_decode(kv_lens, self.page_table[:len(kv_lens)])

    def capture(self) -> None:
        """Capture every batch size, largest first (smaller graphs share its memory)."""
        torch.cuda.synchronize()
        with gc_disabled():
            for bs in reversed(self.batch_sizes):
                batch = self._batch(self._plan([1] * bs))
                self.model.forward(batch)  # warm-up: Triton compiles outside the capture
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool):
                    logits = self.model.forward(batch)
                if self.pool is None:
                    self.pool = graph.pool()
                self.graphs[bs] = _Graph(graph, logits)
        torch.cuda.synchronize()

    def prepare(self, input_ids: torch.Tensor, positions: list[int], cache_loc: list[int],
                page_table: torch.Tensor, slots: torch.Tensor, kv_lens: list[int]
                ) -> PreparedDecode:
        """Load one decode step into the buffers of its padded graph: input_ids is a device
        tensor (it may hold tokens sampled by a step still in flight); the requests' rows
        `slots` (device) of `page_table` are gathered into the graph's; the lengths are
        planned into the captured plan's buffers. No host sync."""
        bs = input_ids.numel()
        size = self.padded_size(bs)
        if size is None or size not in self.graphs:
            raise ValueError(f"no graph for batch size {bs} (max {self.max_bs})")
        pad = size - bs
        host = torch.tensor([positions + [0] * pad, cache_loc + [0] * pad],
                            dtype=torch.int64, pin_memory=True)
        self.input_ids[:bs].copy_(input_ids)
        self.input_ids[bs:size].zero_()
        self.positions[:size].copy_(host[0], non_blocking=True)
        self.cache_loc[:size].copy_(host[1], non_blocking=True)
        torch.index_select(page_table, 0, slots, out=self.page_table[:bs])
        self.page_table[bs:size].zero_()
        self._generation += 1
        return PreparedDecode(bs, size, self._plan(kv_lens + [0] * pad), self._generation)

    def replay(self, step: PreparedDecode) -> torch.Tensor:
        """Logits [batch, vocab] of a prepared decode step. The inputs live in buffers
        shared by every step, so only the step prepared last can be replayed."""
        if step.generation != self._generation:
            raise ValueError("replay of a decode step that a later prepare() overwrote")
        g = self.graphs[step.size]
        g.graph.replay()
        return g.logits[:step.batch]
