"""Norm kernels on the GPU against a float64 oracle: dtypes, odd sizes, strided rows,
poisoned outputs, every launch shape, the pushed table deciding the launch, PDL on and
off, CUDA graphs, torch.compile; and qk_rmsnorm (Triton) against its float32 reference
over model shapes, dtypes and strided views."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from norm_oracle import assert_close, oracle

import fuseinfer
from fuseinfer.bench.suites.norm_tune import candidates
from fuseinfer.ops import qk_rmsnorm
from fuseinfer.ops.norm.dispatch import NormDispatch, NormLaunchRule, effective, push_to_device
from fuseinfer.ops.norm.qk_rmsnorm import reference_qk_rmsnorm

EPS = 1e-6
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
HIDDEN = [1024, 2880, 4096, 5120, 7168, 8192, 1000, 4095, 33, 32768, 70001]
OFFSET = {"rmsnorm": 0.0, "gemma_rmsnorm": 1.0}


def _poisoned(shape, dtype):
    return torch.full(shape, float("nan"), device="cuda", dtype=dtype)


def _run_out_of_place(op, x, w, pdl=None, out=None):
    out = _poisoned(x.shape, x.dtype) if out is None else out
    getattr(torch.ops.fuseinfer, op)(out, x, w, EPS, pdl)
    return out


def _run_fused(op, x, r, w, pdl=None):
    getattr(torch.ops.fuseinfer, op)(x, r, w, EPS, pdl)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("tokens", [1, 7, 300])
@pytest.mark.parametrize("op", ["rmsnorm", "gemma_rmsnorm"])
def test_rmsnorm(op, tokens, hidden, dtype):
    x = torch.randn(tokens, hidden, device="cuda", dtype=dtype)
    w = torch.randn(hidden, device="cuda", dtype=dtype)
    out = _run_out_of_place(op, x, w)
    assert_close(out, oracle(x, w, EPS, OFFSET[op]), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("tokens", [1, 7, 300])
@pytest.mark.parametrize("op", ["fused_add_rmsnorm", "gemma_fused_add_rmsnorm"])
def test_fused_add_rmsnorm(op, tokens, hidden, dtype):
    x = torch.randn(tokens, hidden, device="cuda", dtype=dtype)
    r = torch.randn_like(x)
    w = torch.randn(hidden, device="cuda", dtype=dtype)
    summed = (x.double() + r.double()).to(dtype)
    want = oracle(summed, w, EPS, 1.0 if op.startswith("gemma") else 0.0)
    _run_fused(op, x, r, w)
    assert torch.equal(r, summed), "residual must hold the rounded sum exactly"
    assert_close(x, want, dtype)


@pytest.mark.parametrize("pad", [8, 3])  # 8: aligned rows (vector path); 3: misaligned
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_strided_rows(pad, dtype):
    tokens, hidden = 37, 4096
    buf_x = torch.randn(tokens, hidden + pad, device="cuda", dtype=dtype)
    buf_r = torch.randn(tokens, hidden + 2 * pad, device="cuda", dtype=dtype)
    buf_o = _poisoned((tokens, hidden + pad), dtype)
    x, r, out = buf_x[:, :hidden], buf_r[:, pad:pad + hidden], buf_o[:, :hidden]
    w = torch.randn(hidden, device="cuda", dtype=dtype)
    _run_out_of_place("rmsnorm", x, w, out=out)
    assert_close(out, oracle(x, w, EPS, 0.0), dtype)
    assert torch.isnan(buf_o[:, hidden:]).all(), "wrote outside the row"
    summed = (x.double() + r.double()).to(dtype)
    pad_before = buf_r[:, :pad].clone()
    _run_fused("fused_add_rmsnorm", x, r, w)
    assert torch.equal(r, summed)
    assert torch.equal(buf_r[:, :pad], pad_before)
    assert_close(x, oracle(summed, w, EPS, 0.0), dtype)


def test_three_dim_input():
    x = torch.randn(2, 5, 2880, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2880, device="cuda", dtype=torch.bfloat16)
    out = fuseinfer.ops.rmsnorm(x, w, EPS)
    assert_close(out, oracle(x, w, EPS, 0.0), torch.bfloat16)


@pytest.mark.parametrize("hidden", [1024, 4096, 7168])
def test_every_launch_shape(hidden):
    """Each shape the tuner may pick computes the same function."""
    device = torch.cuda.current_device()
    x = torch.randn(67, hidden, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16)
    want = oracle(x, w, EPS, 0.0)
    _run_out_of_place("rmsnorm", x, w)  # make sure the module is loaded
    try:
        for tpr, rpb in candidates(hidden):
            rule = NormLaunchRule(None, None, tpr, rpb)
            push_to_device(device, NormDispatch("test", True, (rule,), (rule,)))
            assert_close(_run_out_of_place("rmsnorm", x, w), want, torch.bfloat16)
    finally:
        push_to_device(device, effective(device))


def _kernel_launches(fn, tmp_path) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(grid, block) of every norm kernel `fn` launches, as the profiler recorded them."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    trace = tmp_path / "trace.json"
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    return [(tuple(e["args"]["grid"]), tuple(e["args"]["block"])) for e in events
            if e.get("cat") == "kernel" and "rmsnorm" in e["name"]]


@pytest.mark.parametrize("fused", [False, True])
def test_launch_follows_the_pushed_table(fused, tmp_path):
    """The C++ launcher takes the first rule of the op's kind whose bounds hold: each token
    count below gets its rule's (threads_per_row, rows_per_block) as its block shape, and
    the other kind's rules are never used. hidden 4096 bf16 takes the vector path with at
    most 4 vectors per thread, so the launcher keeps these shapes as they are."""
    device = torch.cuda.current_device()
    hidden = 4096
    rules = (NormLaunchRule(8192, 64, 128, 2), NormLaunchRule(2048, None, 512, 1),
             NormLaunchRule(None, 256, 64, 4), NormLaunchRule(None, None, 256, 1))
    other = (NormLaunchRule(None, None, 32, 8),)
    table = NormDispatch("test", True, other, rules) if fused else \
        NormDispatch("test", True, rules, other)
    w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16)
    _run_out_of_place("rmsnorm", torch.randn(1, hidden, device="cuda"), w.float())  # loaded
    want = {64: ((32, 1, 1), (128, 2, 1)), 200: ((50, 1, 1), (64, 4, 1)),
            300: ((300, 1, 1), (256, 1, 1))}
    try:
        push_to_device(device, table)
        for tokens, launch in want.items():
            x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
            r = torch.randn_like(x)
            call = partial(_run_fused, "fused_add_rmsnorm", x, r, w, False) if fused else \
                partial(_run_out_of_place, "rmsnorm", x, w, False)
            seen = _kernel_launches(call, tmp_path)
            assert seen == [launch], f"{tokens} tokens"
    finally:
        push_to_device(device, effective(device))


@pytest.mark.parametrize("op", ["rmsnorm", "fused_add_rmsnorm"])
@pytest.mark.parametrize("hidden", [4096, 4095])
def test_pdl_on_off_identical(op, hidden):
    x = torch.randn(129, hidden, device="cuda", dtype=torch.bfloat16)
    r = torch.randn_like(x)
    w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16)
    results = []
    for pdl in (True, False, None):
        if op == "rmsnorm":
            results.append(_run_out_of_place(op, x, w, pdl))
        else:
            xi, ri = x.clone(), r.clone()
            _run_fused(op, xi, ri, w, pdl)
            results.append(torch.cat([xi, ri]))
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_cuda_graph_capture_and_pdl_chain():
    """A chain of dependent PDL launches inside a graph gives the eager result."""
    x = torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16)
    r = torch.randn_like(x)
    w = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    xs, rs = x.clone(), r.clone()
    for _ in range(4):
        _run_fused("fused_add_rmsnorm", xs, rs, w, False)
    xg, rg = x.clone(), r.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(4):
            _run_fused("fused_add_rmsnorm", xg, rg, w, True)
    xg.copy_(x)
    rg.copy_(r)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(xg, xs) and torch.equal(rg, rs)


def test_torch_compile_fullgraph_inductor():
    w = torch.randn(1024, device="cuda", dtype=torch.bfloat16)

    def block(h, res):
        fuseinfer.ops.fused_add_rmsnorm(h, res, w, EPS)
        return fuseinfer.ops.rmsnorm(h * 2, w, EPS), res

    h = torch.randn(16, 1024, device="cuda", dtype=torch.bfloat16)
    res = torch.randn_like(h)
    want = block(h.clone(), res.clone())
    got = torch.compile(block, fullgraph=True)(h.clone(), res.clone())
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("case", ["dtype", "device", "shape", "contiguous", "out_shape",
                                  "overlap", "fused_overlap"])
def test_bad_input_errors(case):
    x = torch.randn(8, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(256, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(x)
    fuseinfer.ops.rmsnorm(x, w)  # loaded: the checks below run in the C++ launcher
    buf = torch.randn(9, 256, device="cuda", dtype=torch.bfloat16)
    bad = {
        "overlap": (buf[1:9], buf[:8], w, r"out must not overlap input"),
        "fused_overlap": (None, None, None, r"residual must not overlap input"),
        "dtype": (out, x, w.float(), r"weight must have dtype"),
        "device": (out, x, w.cpu(), r"weight must be on"),
        "shape": (out, x, w[:128], r"weight must have shape \[256\]"),
        "contiguous": (out, x.t().contiguous().t(), w, r"input must be contiguous in its last"),
        "out_shape": (out[:4], x, w, r"out must have shape"),
    }[case]
    with pytest.raises(ValueError, match=bad[3]):
        if case == "fused_overlap":
            torch.ops.fuseinfer.fused_add_rmsnorm(buf[:8], buf[1:9], w, EPS, None)
        else:
            torch.ops.fuseinfer.rmsnorm(bad[0], bad[1], bad[2], EPS, None)


# ---- qk_rmsnorm (Triton) ---------------------------------------------------------------------

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


def test_qk_rmsnorm_replays_in_a_cuda_graph():
    qkv = torch.randn(8, 32 * 128, device="cuda", dtype=torch.bfloat16)
    wq = torch.rand(128, device="cuda", dtype=torch.bfloat16) + 0.5
    wk = torch.rand(128, device="cuda", dtype=torch.bfloat16) + 0.5
    work = qkv.clone()
    qk_rmsnorm(work[:, :24 * 128], wq, wk, 16)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        qk_rmsnorm(work[:, :24 * 128], wq, wk, 16)
    work.copy_(qkv)
    graph.replay()
    want = reference_qk_rmsnorm(qkv[:, :24 * 128], wq, wk, 16, 1e-6)
    torch.testing.assert_close(work[:, :24 * 128].float(), want, rtol=2e-2, atol=2e-2)
    assert torch.equal(work[:, 24 * 128:], qkv[:, 24 * 128:])


def test_qk_rmsnorm_zero_tokens_is_a_no_op():
    qkv = torch.empty(0, (8 + 2 * 2) * 128, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(128, device="cuda", dtype=torch.bfloat16)
    qk_rmsnorm(qkv[:, :1280], w, w.clone(), 8)
    torch.cuda.synchronize()  # a zero-grid launch would surface here
    assert qkv.shape == (0, 1536)
