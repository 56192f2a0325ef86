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


@pytest.mark.parametrize("programs", [1, 7, 264, 100000])
@pytest.mark.parametrize("m, prologue, k, dtype", [
    (1, None, 4096, torch.bfloat16), (1, "silu", 4096, torch.bfloat16),
    (1, "add_norm", 4096, torch.bfloat16), (4, None, 4096, torch.bfloat16),
    (3, "add_norm", 4096, torch.bfloat16),
    # K padded past 8192 (the first tile before the walk), fp32 (fewer stages fit)
    (1, "silu", 12288, torch.bfloat16), (1, "add_norm", 12288, torch.bfloat16),
    (1, "add_norm", 4096, torch.float32), (1, None, 16384, torch.float32)])
def test_gemv_grid_walk_in_a_graph_with_pdl(programs, m, prologue, k, dtype):
    """The gemv's programs walking every programs-th tile (one program for all of them,
    a grid that does not divide the tiles, more programs than tiles), its prologue once per
    program at one token: the same result as the reference, replayed in a graph with PDL,
    the residual sum written once."""
    from fuseinfer.ops.linear.small_batch_linear import launch_small_batch_linear

    n = 6144 + 4  # a last, partial tile
    x = torch.randn(m, 2 * k if prologue == "silu" else k, device="cuda", dtype=dtype)
    w = torch.randn(n, k, device="cuda", dtype=dtype) / k ** 0.5
    nw = torch.rand(k, device="cuda", dtype=dtype) + 0.5
    res = torch.randn(m, k, device="cuda", dtype=dtype)
    res_out = torch.full_like(res, float("nan"))
    out = torch.full((m, n), float("nan"), device="cuda", dtype=dtype)
    kw = {"silu": {"silu_mul": True},
          "add_norm": {"norm_weight": nw, "residual": res, "residual_out": res_out},
          None: {}}[prologue]
    launch_small_batch_linear(out, x, w, True, programs=programs, **kw)  # warm (compile)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        launch_small_batch_linear(out, x, w, True, programs=programs, **kw)
    x.copy_(torch.randn_like(x))
    out.fill_(float("nan"))
    res_out.fill_(float("nan"))
    graph.replay()
    want, want_res = reference_small_batch_linear(
        x, w, silu_mul=prologue == "silu", norm_weight=nw if prologue == "add_norm" else None,
        residual=res if prologue == "add_norm" else None)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), want, rtol=tol, atol=tol)
    if prologue == "add_norm":
        assert torch.equal(res_out, want_res)


@pytest.mark.parametrize("m, k", [(1, 3072), (5, 3072), (16, 3072), (64, 3072), (3, 28672)])
def test_small_batch_linear_with_silu_mul(m, k):
    """SiLU * up in the matmul's prologue (the gemv at one token, split_k past it or past
    the gemv's K) against silu_and_mul, then the plain matmul."""
    from fuseinfer.ops import silu_and_mul

    x = torch.randn(m, 2 * k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(1024, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
    got = small_batch_linear(x, w, silu_mul=True)
    want = reference_small_batch_linear(x, w, silu_mul=True)[0]
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got.float(), small_batch_linear(silu_and_mul(x), w).float(),
                               rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("m, with_residual", [(1, False), (1, True), (6, True), (16, False),
                                              (16, True), (33, True), (64, True)])
@pytest.mark.parametrize("k", [1024, 4096])
def test_small_batch_linear_with_norm_prologue(m, with_residual, k):
    """rmsnorm(x (+ residual)) @ W.T in one kernel matches the two-kernel path it replaces:
    fuseinfer's fused_add_rmsnorm (or rmsnorm), then the matmul."""
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    res = torch.randn_like(x)
    nw = torch.rand(k, device="cuda", dtype=torch.bfloat16) + 0.5
    w = torch.randn(4096, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
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


@pytest.mark.parametrize("m", [1, 8, 40])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("prologue", [None, "silu", "add_norm"])
def test_small_batch_linear_epilogue_add(m, bias, prologue):
    """out = prologue(x) @ W.T + add (a bias row or a residual [M, N]) in one rounding; at
    one token the gemv runs it (its epilogue after its prologue), else split_k."""
    k = 4096
    x = torch.randn(m, 2 * k if prologue == "silu" else k, device="cuda",
                    dtype=torch.bfloat16)
    w = torch.randn(6144, k, device="cuda", dtype=torch.bfloat16) / 64
    add = torch.randn(6144 if bias else (m, 6144), device="cuda", dtype=torch.bfloat16)
    nw = torch.rand(k, device="cuda", dtype=torch.bfloat16) + 0.5
    res = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    kw = {"silu": {"silu_mul": True}, "add_norm": {"norm_weight": nw, "residual": res},
          None: {}}[prologue]
    got = small_batch_linear(x, w, add=add, **kw)
    got = got[0] if prologue == "add_norm" else got
    want = reference_small_batch_linear(x, w, add=add, **kw)[0]
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("min_programs", [1, 528])
def test_split_k_norm_prologue_in_a_graph_with_pdl(min_programs):
    """The add+norm prologue with K sliced (the slices' sums of squares meet in the last
    program) or whole, captured and replayed, PDL on and off giving the same bits."""
    from fuseinfer.ops.linear.dispatch import LinearRule
    from fuseinfer.ops.linear.small_batch_linear import launch_small_m_matmul

    rule = LinearRule(None, "split_k", 32, 128, min_programs, 2, 4, 4)
    m, n, k = 12, 4096, 4096
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    res = torch.randn_like(x)
    nw = torch.rand(k, device="cuda", dtype=torch.bfloat16) + 0.5
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / 64
    want, want_res = reference_small_batch_linear(x, w, norm_weight=nw, residual=res)
    outs = []
    for pdl in (True, False):
        out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
        res_out = torch.full_like(res, float("nan"))
        launch_small_m_matmul(out, x, w, rule, pdl, None, False, nw, res, res_out, 1e-6)
        torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)
        assert torch.equal(res_out, want_res)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    captured = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    res_out = torch.full_like(res, float("nan"))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        launch_small_m_matmul(captured, x, w, rule, True, None, False, nw, res, res_out, 1e-6)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        graph.replay()
        want, want_res = reference_small_batch_linear(x, w, norm_weight=nw, residual=res)
        torch.testing.assert_close(captured.float(), want, rtol=2e-2, atol=2e-2)
        assert torch.equal(res_out, want_res)


# --- the split_k kernel (plain calls past one token) --------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m, n, k", [(2, 4096, 4096), (16, 1024, 4096), (64, 12288, 4096),
                                     (8, 8192, 28672), (33, 151936, 1024), (4, 1000, 2000)])
def test_split_k_kernel_on_model_shapes(dtype, m, n, k):
    from fuseinfer.ops.linear.dispatch import LinearRule
    from fuseinfer.ops.linear.small_batch_linear import launch_small_m_matmul

    x = torch.randn(m, k + 8, device="cuda", dtype=dtype)[:, :k]
    w = torch.randn(n, k, device="cuda", dtype=dtype) / k ** 0.5
    want = reference_small_batch_linear(x, w)[0]
    outs = []
    for rule, pdl in ((LinearRule(None, "split_k", 64, 128, 264, 4, 4, 4), True),
                      (LinearRule(None, "split_k", 64, 128, 264, 4, 4, 4), False),
                      (LinearRule(None, "split_k", 128, 64, 1, 1, 4, 3), True),      # no split
                      (LinearRule(None, "split_k", 32, 256, 100000, 1, 4, 3), True)):  # most
        out = torch.full((m, n), float("nan"), device="cuda", dtype=dtype)
        launch_small_m_matmul(out, x, w, rule, pdl)
        tol = 1e-4 if dtype == torch.float32 else 2e-2  # fp32: the IEEE dot
        torch.testing.assert_close(out.float(), want, rtol=tol, atol=tol)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])  # PDL on / off: the same bits (slice order fixed)


@pytest.mark.parametrize("kernel", ["cublas", "gemv", "split_k"])
@pytest.mark.parametrize("m, k", [(1, 4096), (8, 4096), (33, 4096), (2, 28672)])
def test_each_rule_kernel_runs_what_it_names(kernel, m, k):
    from fuseinfer.ops.linear.dispatch import LinearRule
    from fuseinfer.ops.linear.small_batch_linear import launch_rule

    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(3000, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
    out = torch.full((m, 3000), float("nan"), device="cuda", dtype=torch.bfloat16)
    launch_rule(out, x, w, LinearRule(None, kernel, 64, 128, 264, 4, 4, 4), True)
    torch.testing.assert_close(out.float(), reference_small_batch_linear(x, w)[0],
                               rtol=2e-2, atol=2e-2)
    if kernel == "cublas":
        assert torch.equal(out, torch.mm(x, w.t()))


def test_split_k_in_cuda_graphs_and_on_two_streams(monkeypatch):
    from fuseinfer.ops.linear import dispatch

    # the op as a table naming split_k at 16 rows runs it (any GPU's table may say cuBLAS)
    rule = dispatch.LinearRule(None, "split_k", 64, 128, 264, 4, 4, 4)
    monkeypatch.setattr(dispatch, "effective",
                        lambda device=None: dispatch.LinearDispatch("test", True, (rule,)))
    x = torch.randn(16, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2048, 4096, device="cuda", dtype=torch.bfloat16) / 64
    assert rule.split_k(2048, 4096)[0] > 1  # the reduction runs
    small_batch_linear(x, w)  # eager first: the counters exist before any capture
    graphs, outs = [], []
    for _ in range(2):  # two graphs on the same counters, the second replayed first
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs.append(small_batch_linear(x, w))
        graphs.append(graph)
    for i in (1, 0, 1, 1, 0):  # every replay finds the counters at zero again
        x.copy_(torch.randn_like(x))
        outs[i].fill_(float("nan"))
        graphs[i].replay()
        torch.testing.assert_close(outs[i].float(), reference_small_batch_linear(x, w)[0],
                                   rtol=2e-2, atol=2e-2)
    side = torch.cuda.Stream()
    x2 = torch.randn_like(x)
    side.wait_stream(torch.cuda.current_stream())  # x2 is written on the default stream
    with torch.cuda.stream(side):
        outs2 = [small_batch_linear(x2, w) for _ in range(20)]
    outs1 = [small_batch_linear(x, w) for _ in range(20)]
    torch.cuda.synchronize()
    want1, want2 = (reference_small_batch_linear(v, w)[0] for v in (x, x2))
    for o1, o2 in zip(outs1, outs2, strict=True):
        torch.testing.assert_close(o1.float(), want1, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(o2.float(), want2, rtol=2e-2, atol=2e-2)


def test_split_k_on_more_streams_than_before_and_fresh_capture_streams():
    """As the bench's timing loop does it: each round warms up on a new pool stream, then
    captures (torch.cuda.graph on a stream of its own); more rounds than torch's stream
    pools hold, so streams recur and new ones appear inside capture."""
    from fuseinfer.ops.linear.dispatch import LinearRule
    from fuseinfer.ops.linear.small_batch_linear import launch_small_m_matmul

    rule = LinearRule(None, "split_k", 64, 128, 264, 4, 4, 4)
    w = torch.randn(2048, 4096, device="cuda", dtype=torch.bfloat16) / 64
    assert rule.split_k(2048, 4096)[0] > 1
    main = torch.cuda.current_stream()
    for _ in range(40):
        x = torch.randn(8, 4096, device="cuda", dtype=torch.bfloat16)
        want = reference_small_batch_linear(x, w)[0]
        side = torch.cuda.Stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out = torch.full((8, 2048), float("nan"), device="cuda", dtype=torch.bfloat16)
            launch_small_m_matmul(out, x, w, rule, True)
        main.wait_stream(side)
        torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)
        captured = torch.full((8, 2048), float("nan"), device="cuda", dtype=torch.bfloat16)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            launch_small_m_matmul(captured, x, w, rule, True)
        graph.replay()
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(captured.float(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("m", [4, 24])
def test_fp16_norm_prologue_past_the_gemv_stays_finite(m):
    """fp16 with the (add +) RMSNorm prologue past one token takes the prologue as its own
    kernels (split_k would round x * norm_weight before the 1/rms, past fp16's range on
    large activations): finite and equal to the two-kernel path."""
    x = torch.randn(m, 4096, device="cuda", dtype=torch.float16) * 3000
    res = torch.randn_like(x) * 3000
    nw = torch.rand(4096, device="cuda", dtype=torch.float16) * 20 + 10
    w = torch.randn(2048, 4096, device="cuda", dtype=torch.float16) / 64
    out, new_res = small_batch_linear(x, w, norm_weight=nw, residual=res)
    h, r = x.clone(), res.clone()
    fused_add_rmsnorm(h, r, nw, 1e-6)
    assert torch.isfinite(out).all() and torch.equal(new_res, r)
    torch.testing.assert_close(out.float(), small_batch_linear(h, w).float(), rtol=2e-2,
                               atol=2e-2)
