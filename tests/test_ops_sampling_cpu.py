"""greedy_sample on the CPU: the op's tokens and future-buffer writes, its argument errors,
and the Triton kernel run by Triton's interpreter against a first-maximum oracle written
here in plain Python (ties, NaN, -inf rows, signed zeros, strided rows, vocabularies that
are not a multiple of the tile, rows split into chunks that meet in a counter, which is
left at zero)."""

from __future__ import annotations

import math
import os

import pytest
import torch

from fuseinfer.ops import greedy_sample
from fuseinfer.ops.sampling.greedy_sample import chunking, launch_greedy_sample

needs_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="a GPU is present: the GPU suite runs this kernel natively")


def first_maximum(logits: torch.Tensor) -> list[int]:
    """Per row: the first NaN, else the first index of the largest value (-0 == +0)."""
    out = []
    for row in logits.float().tolist():
        nans = [i for i, v in enumerate(row) if math.isnan(v)]
        out.append(nans[0] if nans else row.index(max(row)))
    return out


def hostile_rows(v: int, dtype: torch.dtype) -> torch.Tensor:
    """Random rows, then rows with planted ties, NaNs, all -inf, signed zeros."""
    logits = torch.randn(9, v).to(dtype)
    top = logits.float().max().item() + 1
    logits[1, [v // 3, v - 1]] = top  # a tie: the first wins
    logits[2, [5, 2]] = float("nan")  # the first NaN, even before a larger number
    logits[2, 0] = float("inf")
    logits[3] = float("-inf")  # every entry the same: index 0
    logits[4] = -1.0
    logits[4, [v - 2, 7]] = torch.tensor([0.0, -0.0], dtype=dtype)  # -0 ties with +0
    logits[5, v - 1] = top  # the last column
    logits[6] = logits[6].abs().neg() - 1  # all negative
    logits[6, v // 2] = -0.5
    logits[7, 0] = float("inf")
    logits[7, v - 1] = float("inf")
    return logits


def test_greedy_sample_tokens_and_future_buffer():
    logits = hostile_rows(301, torch.float32)
    future = torch.full((20,), -7, dtype=torch.int64)
    tokens = greedy_sample(logits, future, future_offset=4)
    want = first_maximum(logits)
    assert tokens.dtype == torch.int64 and tokens.tolist() == want
    assert future[4:13].tolist() == want
    assert (future[:4] == -7).all() and (future[13:] == -7).all()  # nothing else written
    assert greedy_sample(logits[:0]).shape == (0,)


def test_greedy_sample_errors():
    logits = torch.randn(3, 10)
    future = torch.zeros(8, dtype=torch.int64)
    with pytest.raises(ValueError, match="future_offset"):
        greedy_sample(logits, future, future_offset=6)
    with pytest.raises(ValueError, match="future_offset"):
        greedy_sample(logits, future, future_offset=-1)
    with pytest.raises(ValueError, match="future"):
        greedy_sample(logits, future.int())
    with pytest.raises(ValueError, match="logits"):
        greedy_sample(logits.to(torch.int32))
    with pytest.raises(ValueError, match="logits"):
        greedy_sample(torch.randn(3))
    with pytest.raises(ValueError, match="logits"):
        greedy_sample(torch.randn(10, 3).t())
    with pytest.raises(ValueError, match="tokens"):
        torch.ops.fuseinfer.greedy_sample(torch.empty(3, dtype=torch.int32), logits)
    meta = torch.ops.fuseinfer.greedy_sample(torch.empty(3, dtype=torch.int64,
                                                         device="meta"),
                                             logits.to("meta"))
    assert meta is None


def test_chunking_covers_the_vocabulary_with_nonempty_chunks():
    for rows in (1, 3, 8, 64, 255, 256, 5000, 20000):
        for vocab in (1, 2047, 2048, 2049, 151936, 201088):
            chunks, length = chunking(rows, vocab)
            assert length % 2048 == 0 and chunks >= 1
            assert (chunks - 1) * length < vocab <= chunks * length  # none empty
            assert rows * chunks <= max(rows, 256 + rows)  # about 256 programs at most
    assert chunking(1, 151936) == (75, 2048)  # one token: a tile per program
    assert chunking(20000, 151936)[0] == 1  # past the counted rows: a program per row


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("v, block", [(301, 64), (64, 64), (20, 32), (1000, 32)])
def test_greedy_sample_kernel_interpreted(dtype, v, block):
    logits = hostile_rows(v, dtype)
    strided = torch.randn(logits.size(0), v + 5).to(dtype)[:, :v]
    strided.copy_(logits)
    tokens = torch.full((logits.size(0),), -1, dtype=torch.int64)
    future = torch.full((logits.size(0) + 6,), -7, dtype=torch.int64)
    counters = torch.zeros(16, dtype=torch.int32)
    launch_greedy_sample(tokens, strided, future, 3, pdl=False, block=block,
                         counters=counters)
    want = first_maximum(logits)
    assert tokens.tolist() == want
    assert future[3:3 + len(want)].tolist() == want
    assert (future[:3] == -7).all() and (future[3 + len(want):] == -7).all()
    assert not counters.any()  # every row's last chunk set its counter back
    for rows in (1, 2, 9):  # fewer rows: more chunks per row
        alone = torch.full((rows,), -1, dtype=torch.int64)
        launch_greedy_sample(alone, strided[:rows], None, 0, pdl=False, block=block,
                             counters=counters)
        assert alone.tolist() == want[:rows]
        assert not counters.any()
