"""silu_and_mul on the GPU (Triton) against its float32 reference (itself checked against
float64 in the CPU suite), over model shapes, dtypes and strided views; PDL on and off give
identical bits; it replays inside a CUDA graph."""

from __future__ import annotations

import pytest
import torch

from fuseinfer.ops import silu_and_mul
from fuseinfer.ops.activation.silu_and_mul import reference_silu_and_mul


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows, inner", [(1, 3072), (7, 3072), (300, 12288), (5, 1000)])
def test_silu_and_mul(dtype, rows, inner):
    x = torch.randn(rows, 2 * inner + 16, device="cuda", dtype=dtype)[:, :2 * inner]
    want = reference_silu_and_mul(x)
    outs = []
    for pdl in (True, False):
        out = torch.full((rows, inner), float("nan"), device="cuda", dtype=dtype)
        silu_and_mul(x, out=out, enable_pdl=pdl)
        outs.append(out)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(outs[0].float(), want, rtol=tol, atol=tol)
    assert torch.equal(outs[0], outs[1])


def test_silu_and_mul_replays_in_a_cuda_graph():
    x = torch.randn(8, 2 * 3072, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(8, 3072, device="cuda", dtype=torch.bfloat16)
    silu_and_mul(x, out=out)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        silu_and_mul(x, out=out)
    x.copy_(torch.randn_like(x))
    out.fill_(float("nan"))
    graph.replay()
    torch.testing.assert_close(out.float(), reference_silu_and_mul(x), rtol=1e-2, atol=1e-2)
