"""silu_and_mul, qk_rmsnorm and small_batch_linear on the GPU (Triton) against their float32
references, over model shapes, dtypes and strided views; PDL on and off give identical
bits; they replay inside a CUDA graph."""

from __future__ import annotations

import pytest
import torch

from fuseinfer.ops import qk_rmsnorm, silu_and_mul
from fuseinfer.ops.activation.silu_and_mul import reference_silu_and_mul
from fuseinfer.ops.norm.qk_rmsnorm import reference_qk_rmsnorm


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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("tokens, hq, hk, d", [(1, 16, 8, 128), (33, 32, 8, 128),
                                               (4, 64, 4, 64), (2, 8, 1, 256)])
def test_qk_rmsnorm(dtype, tokens, hq, hk, d):
    qkv = torch.randn(tokens, (hq + 2 * hk) * d, device="cuda", dtype=dtype)
    wq = torch.randn(d, device="cuda", dtype=dtype) * 0.3 + 1
    wk = torch.randn(d, device="cuda", dtype=dtype) * 0.3 + 1
    width = (hq + hk) * d
    want = reference_qk_rmsnorm(qkv[:, :width], wq, wk, hq, 1e-6)
    results = []
    for pdl in (True, False):
        buf = qkv.clone()
        qk_rmsnorm(buf[:, :width], wq, wk, hq, 1e-6, enable_pdl=pdl)
        assert torch.equal(buf[:, width:], qkv[:, width:])
        results.append(buf)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(results[0][:, :width].float(), want, rtol=tol, atol=tol)
    assert torch.equal(results[0], results[1])


def test_both_replay_in_a_cuda_graph():
    x = torch.randn(8, 2 * 3072, device="cuda", dtype=torch.bfloat16)
    qkv = torch.randn(8, 32 * 128, device="cuda", dtype=torch.bfloat16)
    wq = torch.rand(128, device="cuda", dtype=torch.bfloat16) + 0.5
    wk = torch.rand(128, device="cuda", dtype=torch.bfloat16) + 0.5
    out = torch.empty(8, 3072, device="cuda", dtype=torch.bfloat16)
    work = qkv.clone()
    silu_and_mul(x, out=out)
    qk_rmsnorm(work[:, :24 * 128], wq, wk, 16)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        silu_and_mul(x, out=out)
        qk_rmsnorm(work[:, :24 * 128], wq, wk, 16)
    x.copy_(torch.randn_like(x))
    work.copy_(qkv)
    out.fill_(float("nan"))
    graph.replay()
    torch.testing.assert_close(out.float(), reference_silu_and_mul(x), rtol=1e-2, atol=1e-2)
    want = reference_qk_rmsnorm(qkv[:, :24 * 128], wq, wk, 16, 1e-6)
    torch.testing.assert_close(work[:, :24 * 128].float(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m, n, k", [(1, 4096, 1024), (8, 1024, 3072), (3, 151936, 1024),
                                     (5, 1000, 2000), (2, 64, 16384)])
def test_small_batch_linear(dtype, m, n, k):
    from fuseinfer.ops import small_batch_linear
    from fuseinfer.ops.linear.small_batch_linear import reference_small_batch_linear

    x = torch.randn(m, k + 8, device="cuda", dtype=dtype)[:, :k]
    w = torch.randn(n, k, device="cuda", dtype=dtype) / k ** 0.5
    want = reference_small_batch_linear(x, w)[0]
    outs = [small_batch_linear(x, w, enable_pdl=pdl) for pdl in (True, False)]
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(outs[0].float(), want, rtol=tol, atol=tol)
    assert torch.equal(outs[0], outs[1])


def test_small_batch_linear_in_a_cuda_graph():
    from fuseinfer.ops import small_batch_linear
    from fuseinfer.ops.linear.small_batch_linear import reference_small_batch_linear

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
    from fuseinfer.ops import small_batch_linear
    from fuseinfer.ops.linear.small_batch_linear import reference_small_batch_linear

    x = torch.randn(m, 2 * 3072, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(1024, 3072, device="cuda", dtype=torch.bfloat16) / 55
    got = small_batch_linear(x, w, silu_mul=True)
    want = reference_small_batch_linear(x, w, silu_mul=True)[0]
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("m, with_residual", [(1, False), (1, True), (6, True)])
def test_small_batch_linear_with_norm_prologue(m, with_residual):
    """rmsnorm(x (+ residual)) @ W.T in one kernel matches the two-kernel path it replaces:
    fuseinfer's fused_add_rmsnorm (or rmsnorm), then the matmul."""
    from fuseinfer.ops import fused_add_rmsnorm, rmsnorm, small_batch_linear

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
