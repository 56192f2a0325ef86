"""small_batch_linear on the GPU (Triton) against its float32 reference (itself checked
against float64 in the CPU suite): model shapes, dtypes, strided rows, PDL on and off
identical, CUDA-graph replay, the SiLU-and-mul and (add +) RMSNorm prologues."""

from __future__ import annotations

import pytest
import torch

from fuseinfer.ops import fused_add_rmsnorm, rmsnorm, small_batch_linear
from fuseinfer.ops.linear.small_batch_linear import reference_small_batch_linear


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m, n, k", [(1, 4096, 1024), (8, 1024, 3072), (3, 151936, 1024),
                                     (5, 1000, 2000), (2, 64, 16384)])
def test_small_batch_linear(dtype, m, n, k):
    x = torch.randn(m, k + 8, device="cuda", dtype=dtype)[:, :k]
    w = torch.randn(n, k, device="cuda", dtype=dtype) / k ** 0.5
    want = reference_small_batch_linear(x, w)[0]
    outs = [small_batch_linear(x, w, enable_pdl=pdl) for pdl in (True, False)]
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(outs[0].float(), want, rtol=tol, atol=tol)
    assert torch.equal(outs[0], outs[1])


def test_small_batch_linear_in_a_cuda_graph():
    x = torch.randn(4, 1024, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(6144, 1024, device="cuda", dtype=torch.bfloat16) / 32
    small_batch_linear(x, w)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = small_batch_linear(x, w)
    x.copy_(torch.randn_like(x))
    out.fill_(float("nan"))
    graph.replay()
    torch.testing.assert_close(out.float(), reference_small_batch_linear(x, w)[0], rtol=2e-2,
                               atol=2e-2)


@pytest.mark.parametrize("m", [1, 5])
def test_small_batch_linear_with_silu_mul(m):
    x = torch.randn(m, 2 * 3072, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(1024, 3072, device="cuda", dtype=torch.bfloat16) / 55
    got = small_batch_linear(x, w, silu_mul=True)
    want = reference_small_batch_linear(x, w, silu_mul=True)[0]
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("m, with_residual", [(1, False), (1, True), (6, True)])
def test_small_batch_linear_with_norm_prologue(m, with_residual):
    """rmsnorm(x (+ residual)) @ W.T in one kernel matches the two-kernel path it replaces:
    fuseinfer's fused_add_rmsnorm (or rmsnorm), then the matmul."""
    x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
    res = torch.randn_like(x)
    nw = torch.rand(1024, device="cuda", dtype=torch.bfloat16) + 0.5
    w = torch.randn(4096, 1024, device="cuda", dtype=torch.bfloat16) / 32
    if with_residual:
        before = res.clone()
        out, new_res = small_batch_linear(x, w, norm_weight=nw, residual=res)
        h, r = x.clone(), res.clone()
        fused_add_rmsnorm(h, r, nw, 1e-6)
        assert torch.equal(new_res, r)  # the same rounded sum
        assert torch.equal(res, before)  # the input residual is left alone
    else:
        out = small_batch_linear(x, w, norm_weight=nw)
        h = rmsnorm(x, nw, 1e-6)
    want = small_batch_linear(h, w)
    torch.testing.assert_close(out.float(), want.float(), rtol=2e-2, atol=2e-2)
