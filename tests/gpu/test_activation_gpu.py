"""silu_and_mul and clamped_swiglu_and_mul on the GPU (Triton): silu_and_mul against its
float32 reference (itself checked against float64 in the CPU suite), the clamped SwiGLU
against float64 math, over model shapes (GPT-OSS: I = 2880), dtypes and strided views; PDL
on and off give identical bits; each replays inside a CUDA graph."""

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


def _float64_clamped(x: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    xd = x.double()
    inner = xd.size(-1) // 2
    g = xd[:, :inner].clamp(max=limit)
    u = xd[:, inner:].clamp(-limit, limit)
    return (u + 1) * g / (1 + torch.exp(-alpha * g))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows, inner", [(1, 2880), (7, 2880), (16384, 2880), (5, 1000)])
def test_clamped_swiglu_and_mul(dtype, rows, inner):
    from fuseinfer.ops import clamped_swiglu_and_mul

    x = (5 * torch.randn(rows, 2 * inner + 16, device="cuda")).to(dtype)[:, :2 * inner]
    want = _float64_clamped(x, 1.702, 7.0)
    outs = []
    for pdl in (True, False):
        out = torch.full((rows, inner), float("nan"), device="cuda", dtype=dtype)
        clamped_swiglu_and_mul(x, 1.702, 7.0, out=out, enable_pdl=pdl)
        outs.append(out)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(outs[0].double(), want, rtol=tol, atol=tol)
    assert torch.equal(outs[0], outs[1])


def test_clamped_swiglu_and_mul_replays_in_a_cuda_graph():
    from fuseinfer.ops import clamped_swiglu_and_mul

    x = torch.randn(8, 2 * 2880, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(8, 2880, device="cuda", dtype=torch.bfloat16)
    clamped_swiglu_and_mul(x, out=out)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        clamped_swiglu_and_mul(x, out=out)
    x.copy_(8 * torch.randn_like(x))
    out.fill_(float("nan"))
    graph.replay()
    torch.testing.assert_close(out.double(), _float64_clamped(x, 1.702, 7.0), rtol=2e-2,
                               atol=2e-2)
