"""greedy_sample on the GPU (Triton) against torch.argmax: model vocabularies (151936,
128256, 201088) and odd ones, dtypes, batches of 1 to 300 rows, planted ties (the first
maximum wins), NaN rows, strided rows; the future-buffer write; PDL on and off; replay in
a CUDA graph on fresh logits."""

from __future__ import annotations

import pytest
import torch

from fuseinfer.ops import greedy_sample


def _logits(rows: int, vocab: int, dtype: torch.dtype) -> torch.Tensor:
    x = torch.randn(rows, vocab + 24, device="cuda", dtype=dtype)[:, :vocab]  # strided
    top = x.float().max() + 1
    if rows > 1:
        x[1, [vocab // 2, 3, vocab - 1]] = top.to(dtype)  # ties: index 3 wins
    if rows > 2:
        x[2, [vocab - 5, 17]] = float("nan")
    return x


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows, vocab", [(1, 151936), (7, 151936), (64, 128256),
                                         (3, 201088), (300, 32000), (5, 1000), (2, 8200)])
def test_greedy_sample_matches_argmax(dtype, rows, vocab):
    x = _logits(rows, vocab, dtype)
    want = x.argmax(dim=-1)
    for pdl in (True, False):
        future = torch.full((rows + 9,), -7, dtype=torch.int64, device="cuda")
        tokens = greedy_sample(x, future, future_offset=5, enable_pdl=pdl)
        assert torch.equal(tokens, want)
        assert torch.equal(future[5:5 + rows], want)
        assert (future[:5] == -7).all() and (future[5 + rows:] == -7).all()
    if rows > 2:
        assert want[1].item() == 3 and want[2].item() == 17  # the planted cases, as argmax


def test_greedy_sample_replays_in_a_cuda_graph():
    x = torch.randn(4, 151936, device="cuda", dtype=torch.bfloat16)
    future = torch.zeros(16, dtype=torch.int64, device="cuda")
    tokens = torch.empty(4, dtype=torch.int64, device="cuda")
    torch.ops.fuseinfer.greedy_sample(tokens, x, future, 2)  # compiles outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        torch.ops.fuseinfer.greedy_sample(tokens, x, future, 2, enable_pdl=True)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        tokens.fill_(-1)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(tokens, x.argmax(dim=-1))
        assert torch.equal(future[2:6], tokens)
