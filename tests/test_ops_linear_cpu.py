"""small_batch_linear on the CPU: the op (plain up to 64 rows, with the SiLU-and-mul
prologue, with the RMSNorm and add + RMSNorm prologues) against float64 math written here,
the argument errors and meta shapes, the `linear` table's rules, and both Triton kernels
(gemv, split_k with its last-arrival reduction) run by Triton's interpreter against the
reference (poisoned outputs, strided rows, K tails, counters left at zero)."""

from __future__ import annotations

import os

import pytest
import torch

from fuseinfer.dispatch import TableError
from fuseinfer.dispatch.schema import parse_dataclass
from fuseinfer.ops import small_batch_linear
from fuseinfer.ops.linear.dispatch import BUILTIN, LinearDispatch, LinearRule
from fuseinfer.ops.linear.small_batch_linear import (
    launch_small_batch_linear,
    launch_small_m_matmul,
    reference_small_batch_linear,
)

needs_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="a GPU is present: the GPU suite runs these kernels natively")

EPS = 1e-6


def float64_rmsnorm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    xd = x.double()
    return xd / torch.sqrt((xd * xd).mean(-1, keepdim=True) + EPS) * w.double()


def test_small_batch_linear_op_and_errors():
    x, w = torch.randn(3, 40, dtype=torch.float64), torch.randn(24, 40, dtype=torch.float64)
    xb, wb = x.to(torch.bfloat16), w.to(torch.bfloat16)
    out = small_batch_linear(xb, wb)
    want = (xb.double() @ wb.double().t()).to(torch.bfloat16)
    torch.testing.assert_close(out, want)
    with pytest.raises(ValueError, match="M <= 64"):
        small_batch_linear(torch.randn(65, 40), torch.randn(24, 40))
    with pytest.raises(ValueError, match=r"M <= 64"):
        small_batch_linear(torch.randn(65, 40), torch.randn(24, 40), norm_weight=torch.ones(40))
    with pytest.raises(ValueError, match=r"add must be \[2, 24\] or \[24\]"):
        small_batch_linear(torch.randn(2, 40), torch.randn(24, 40), add=torch.randn(3, 24))
    # prologues and the epilogue now take any M <= 64 and any K (split_k past the gemv)
    x, w, nw = torch.randn(20, 300), torch.randn(24, 300), torch.rand(300) + 0.5
    res, bias = torch.randn(20, 300), torch.randn(24)
    out, new_res = small_batch_linear(x, w, norm_weight=nw, residual=res, add=bias)
    xd = x.double() + res.double()
    torch.testing.assert_close(new_res, xd.float())
    want = float64_rmsnorm(xd, nw) @ w.double().t() + bias.double()
    torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match=r"weight must be \[N, 40\]"):
        small_batch_linear(torch.randn(2, 40), torch.randn(24, 41))
    with pytest.raises(ValueError, match="share a float dtype"):
        small_batch_linear(torch.randn(2, 40), torch.randn(24, 40, dtype=torch.float16))
    with pytest.raises(ValueError, match="contiguous last dim"):
        small_batch_linear(torch.randn(2, 40), torch.randn(40, 24).t())
    assert small_batch_linear(torch.empty(2, 40, device="meta"),
                              torch.empty(24, 40, device="meta")).shape == (2, 24)


@pytest.mark.parametrize("m, k", [(64, 40), (17, 20000), (9, 3)])
def test_small_batch_linear_plain_up_to_64_rows_any_k(m, k):
    x, w = torch.randn(m, k), torch.randn(30, k)
    want = x.double() @ w.double().t()
    torch.testing.assert_close(small_batch_linear(x, w).double(), want, rtol=1e-4, atol=1e-3)


def test_linear_rules_split_k_and_table_checks():
    rule = LinearRule(None, "split_k", 64, 128, 264, 4, 4, 4)
    # few tiles: split until ~264 programs, each slice >= 4 k steps of 128
    # (slices, K per slice): few tiles split until ~264 programs, each slice >= 4 k steps
    assert rule.split_k(1024, 4096) == (8, 512)   # 16 tiles -> 17 wanted, 32 steps / 4 = 8
    assert rule.split_k(4096, 4096) == (5, 896)   # 64 tiles -> 5 slices of 7 steps
    assert rule.split_k(151936, 4096) == (1, 4096)  # 2374 tiles: no split
    assert rule.split_k(1024, 100) == (1, 128)    # one k step: nothing to split
    # 9 steps wanted in 4 slices: slices of 3 steps, so 3 slices run (none empty)
    assert LinearRule(None, "split_k", 64, 128, 10**4, 2, 4, 4).split_k(64, 9 * 128) == \
        (3, 384)
    assert BUILTIN.rule(1).kernel == "gemv" and BUILTIN.rule(2).kernel == "cublas"
    assert BUILTIN.rule(64).kernel == "cublas"  # untuned: no untimed split_k tile
    entry = {"source": "t", "enable_pdl": True, "rules": [
        {"max_m": 8, "kernel": "gemv", "block_n": 64, "block_k": 128, "min_programs": 100,
         "min_k_steps": 2, "num_warps": 4, "num_stages": 3},
        {"max_m": 32, "kernel": "split_k", "block_n": 128, "block_k": 64,
         "min_programs": 300, "min_k_steps": 4, "num_warps": 8, "num_stages": 4},
        {"max_m": None, "kernel": "cublas", "block_n": 64, "block_k": 128,
         "min_programs": 1, "min_k_steps": 1, "num_warps": 4, "num_stages": 3}]}
    parsed = parse_dataclass(LinearDispatch, entry, "linear")
    assert parsed.rule(8).kernel == "gemv" and parsed.rule(9).block_n == 128
    assert parsed.rule(33).kernel == "cublas"
    bad = dict(entry, rules=[dict(entry["rules"][2], kernel="cutlass")])
    with pytest.raises(TableError, match="kernel: must be one of"):
        parse_dataclass(LinearDispatch, bad, "linear")
    with pytest.raises(TableError, match="last with max_m null"):
        parse_dataclass(LinearDispatch, dict(entry, rules=entry["rules"][:2]), "linear")
    with pytest.raises(TableError, match="max_m must increase"):
        parse_dataclass(LinearDispatch, dict(entry, rules=[entry["rules"][0],
                                                           dict(entry["rules"][0], max_m=4),
                                                           entry["rules"][2]]), "linear")
    with pytest.raises(TableError, match=r"max_m: must be >= 1"):
        parse_dataclass(LinearDispatch, dict(entry, rules=[dict(entry["rules"][0], max_m=0),
                                                           entry["rules"][2]]), "linear")
    with pytest.raises(TableError, match="block_n: must be a power of two"):
        parse_dataclass(LinearDispatch, dict(entry, rules=[dict(entry["rules"][2],
                                                                 block_n=96)]), "linear")
    # the SiLU-prologue limit: optional (8192), never negative
    assert parsed.gemv_silu_max_k == 8192
    assert parse_dataclass(LinearDispatch, dict(entry, gemv_silu_max_k=0),
                           "linear").gemv_silu_max_k == 0
    with pytest.raises(TableError, match="gemv_silu_max_k: must be >= 0"):
        parse_dataclass(LinearDispatch, dict(entry, gemv_silu_max_k=-1), "linear")


def test_shape_rules_come_first_and_hold_for_their_shape_only():
    general = [dict(max_m=8, kernel="split_k", block_n=64, block_k=64, min_programs=264,
                    min_k_steps=4, num_warps=4, num_stages=5),
               dict(max_m=None, kernel="cublas", block_n=64, block_k=128, min_programs=264,
                    min_k_steps=4, num_warps=4, num_stages=4)]
    shaped = [dict(general[1], max_m=2, n=4096, k=4096),
              dict(general[0], max_m=8, n=4096, k=4096)]
    entry = {"source": "t", "enable_pdl": True, "rules": shaped + general}
    parsed = parse_dataclass(LinearDispatch, entry, "linear")
    assert parsed.rule(2, 4096, 4096).kernel == "cublas"  # its own rule
    assert parsed.rule(2, 6144, 4096).kernel == "split_k"  # another shape: the general
    assert parsed.rule(2).kernel == "split_k"  # shape unknown: the general rules only
    assert parsed.rule(16, 4096, 4096).kernel == "cublas"  # past its ladder: the general
    bad = [({"rules": general[:1] + shaped + general[1:]}, "shape rules come before"),
           ({"rules": [shaped[1], shaped[0]] + general}, "max_m must increase"),
           ({"rules": [dict(shaped[0], k=None)] + general}, "n and k name a shape"),
           ({"rules": shaped[:1] + [dict(general[1], n=1, k=1)]}, "the last with max_m null")]
    for change, message in bad:
        with pytest.raises(TableError, match=message):
            parse_dataclass(LinearDispatch, dict(entry, **change), "linear")


def test_takes_fused_follows_the_weights_shape_rule(monkeypatch):
    import fuseinfer.ops.linear.dispatch as dispatch
    from fuseinfer.ops.linear.small_batch_linear import takes_fused

    split = LinearRule(8, "split_k", 64, 64, 264, 4, 4, 5)
    cublas = LinearRule(None, "cublas", 64, 128, 264, 4, 4, 4)
    table = LinearDispatch("t", True, (LinearRule(8, "cublas", 64, 128, 264, 4, 4, 4,
                                                   n=48, k=64), split, cublas))
    monkeypatch.setattr(dispatch, "effective", lambda device=None: table)
    gpu = torch.device("cuda", 0)
    assert takes_fused(4, gpu, torch.bfloat16)  # no weight: the general split_k rule
    assert not takes_fused(4, gpu, torch.bfloat16, torch.empty(48, 64))  # its cuBLAS rule
    assert takes_fused(4, gpu, torch.bfloat16, torch.empty(32, 64))
    assert not takes_fused(16, gpu, torch.bfloat16, torch.empty(32, 64))


def test_gemv_takes_silu_up_to_the_tables_k(monkeypatch):
    import fuseinfer.ops.linear.dispatch as dispatch
    from fuseinfer.ops.linear.small_batch_linear import gemv_takes_silu

    table = LinearDispatch("t", True, BUILTIN.rules, gemv_silu_max_k=4096)
    monkeypatch.setattr(dispatch, "effective", lambda device=None: table)
    gpu = torch.device("cuda", 0)
    assert gemv_takes_silu(4096, gpu) and not gemv_takes_silu(4097, gpu)
    assert gemv_takes_silu(1 << 20, torch.device("cpu"))  # the reference takes any


def test_small_batch_linear_with_silu_mul():
    x, w = torch.randn(2, 2 * 24), torch.randn(10, 24)
    xd = x.double()
    act = xd[:, :24] / (1.0 + torch.exp(-xd[:, :24])) * xd[:, 24:]
    want = act @ w.double().t()
    got = small_batch_linear(x, w, silu_mul=True)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"weight must be \[N, 24\]"):
        small_batch_linear(x, torch.randn(10, 48), silu_mul=True)


def test_small_batch_linear_norm_prologues():
    x, res, w = torch.randn(2, 32), torch.randn(2, 32), torch.randn(12, 32)
    nw = torch.rand(32) + 0.5
    wd = w.double().t()
    torch.testing.assert_close(small_batch_linear(x, w, norm_weight=nw).double(),
                               float64_rmsnorm(x, nw) @ wd, rtol=1e-5, atol=1e-5)
    out, new_res = small_batch_linear(x, w, norm_weight=nw, residual=res)
    torch.testing.assert_close(new_res.double(), x.double() + res.double())
    torch.testing.assert_close(out.double(), float64_rmsnorm(new_res, nw) @ wd, rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match="needs norm_weight"):
        torch.ops.fuseinfer.small_batch_linear(torch.empty(2, 12), x, w, residual=res,
                                               residual_out=torch.empty(2, 32))
    with pytest.raises(ValueError, match="residual_out must not overlap"):
        torch.ops.fuseinfer.small_batch_linear(torch.empty(2, 12), x, w, norm_weight=nw,
                                               residual=res, residual_out=res)
    with pytest.raises(ValueError, match="norm_weight must be"):
        small_batch_linear(x, w, norm_weight=torch.ones(31))


def test_small_batch_linear_bf16_prologues_round_like_their_own_kernels():
    """With bf16 x, each prologue's result is rounded to bf16 before the matmul, as the
    kernel it replaces would store it: the add's sum exactly, then the norm."""
    x, res = torch.randn(3, 64).bfloat16(), torch.randn(3, 64).bfloat16()
    w, nw = torch.randn(16, 64).bfloat16(), (torch.rand(64) + 0.5).bfloat16()
    out, new_res = small_batch_linear(x, w, norm_weight=nw, residual=res)
    assert torch.equal(new_res, (x.double() + res.double()).bfloat16())
    normed = float64_rmsnorm(new_res, nw).bfloat16().double()
    torch.testing.assert_close(out.double(), normed @ w.double().t(), rtol=1e-2, atol=2e-2)


@needs_interpreter
@pytest.mark.parametrize("m, n, k, programs", [(1, 70, 1000, 2), (1, 37, 1000, 64),
                                               (8, 70, 64, 1), (5, 16, 3000, 2)])
def test_small_batch_linear_kernel_interpreted(m, n, k, programs):
    # programs: a grid smaller than the tiles (each program walks several, unevenly) or
    # larger (a tile per program)
    x = torch.randn(m, k + 8)[:, :k]  # strided rows
    w = torch.randn(n, k)
    out = torch.full((m, n), float("nan"))
    launch_small_batch_linear(out, x, w, pdl=False, programs=programs)
    torch.testing.assert_close(out, reference_small_batch_linear(x, w)[0], rtol=1e-4, atol=1e-3)


@needs_interpreter
@pytest.mark.parametrize("prologue", ["silu", "add_norm"])
def test_gemv_past_8192_padded_k_interpreted(prologue):
    """K padded past _FIRST_LAST_MAX_K: the first tile reduced before the walk (the other
    order), one row per tile, five tiles over two programs."""
    k, n = 9000, 5
    x = torch.randn(1, 2 * k if prologue == "silu" else k)
    w, nw, res = torch.randn(n, k), torch.rand(k) + 0.5, torch.randn(1, k)
    out, res_out = torch.full((1, n), float("nan")), torch.full((1, k), float("nan"))
    kw = {"silu_mul": True} if prologue == "silu" else \
        {"norm_weight": nw, "residual": res, "residual_out": res_out}
    launch_small_batch_linear(out, x, w, pdl=False, **kw)
    want, want_res = reference_small_batch_linear(
        x, w, silu_mul=prologue == "silu", norm_weight=kw.get("norm_weight"),
        residual=kw.get("residual"))
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-3)
    if prologue == "add_norm":
        torch.testing.assert_close(res_out, want_res)


def test_a_gemv_rule_launches_with_its_grid_and_stages(monkeypatch):
    """launch_rule (the op's plain calls, tune gemm's candidates) hands the gemv the rule's
    min_programs, num_stages and num_warps, not another rule's."""
    import fuseinfer.ops.linear.small_batch_linear as sbl
    from fuseinfer.ops.linear.dispatch import LinearRule

    seen = []
    monkeypatch.setattr(sbl, "launch_small_batch_linear",
                        lambda *a, **kw: seen.append((kw["programs"], kw["stages"],
                                                      kw["warps"])))
    x, w = torch.randn(2, 64), torch.randn(32, 64)
    sbl.launch_rule(torch.empty(2, 32), x, w, LinearRule(8, "gemv", 64, 128, 7, 4, 2, 3),
                    pdl=False)
    assert seen == [(7, 3, 2)]


@needs_interpreter
@pytest.mark.parametrize("m", [1, 3])  # one row: the prologue once per program
def test_small_batch_linear_silu_mul_kernel_interpreted(m):
    x, w = torch.randn(m, 2 * 300), torch.randn(100, 300)  # several tiles per program (2)
    out = torch.full((m, 100), float("nan"))
    launch_small_batch_linear(out, x, w, pdl=False, silu_mul=True)
    torch.testing.assert_close(out, reference_small_batch_linear(x, w, silu_mul=True)[0],
                               rtol=1e-4, atol=1e-3)


@needs_interpreter
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("with_residual", [False, True])
def test_small_batch_linear_norm_kernel_interpreted(m, with_residual):
    x, w = torch.randn(m, 300), torch.randn(100, 300)  # several tiles per program (2)
    nw, res = torch.rand(300) + 0.5, torch.randn(m, 300)
    out = torch.full((m, 100), float("nan"))
    res_out = torch.full((m, 300), float("nan")) if with_residual else None
    launch_small_batch_linear(out, x, w, pdl=False, norm_weight=nw,
                              residual=res if with_residual else None, residual_out=res_out)
    want, want_res = reference_small_batch_linear(x, w, norm_weight=nw,
                                                  residual=res if with_residual else None)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-3)
    if with_residual:
        torch.testing.assert_close(res_out, want_res)


@needs_interpreter
@pytest.mark.parametrize("m, n, k, block_n, block_k, min_programs", [
    (1, 37, 1000, 16, 64, 1),      # no split, K tail
    (5, 70, 3000, 32, 128, 64),    # split into slices, N and K tails
    (17, 40, 700, 16, 32, 100),    # block_m 32, a last short slice
    (64, 24, 256, 16, 32, 1000),   # block_m 64, as many slices as steps allow
])
def test_split_k_kernel_interpreted(m, n, k, block_n, block_k, min_programs):
    rule = LinearRule(None, "split_k", block_n, block_k, min_programs, 1, 4, 2)
    x = torch.randn(m, k + 8)[:, :k]  # strided rows
    w = torch.randn(n, k)
    counters = torch.zeros(64, dtype=torch.int32)
    want = reference_small_batch_linear(x, w)[0]
    for _ in range(2):  # the counters must be back at zero for the second call
        out = torch.full((m, n), float("nan"))
        launch_small_m_matmul(out, x, w, rule, pdl=False, counters=counters)
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-3)
        assert not counters.any()


@needs_interpreter
@pytest.mark.parametrize("prologue", ["silu_mul", "norm", "add_norm"])
@pytest.mark.parametrize("add", [None, "bias", "full"])
@pytest.mark.parametrize("m, n, k, min_programs", [(5, 70, 3000, 64), (17, 40, 700, 1)])
def test_split_k_prologues_and_epilogue_interpreted(prologue, add, m, n, k, min_programs):
    """split_k with the decoder's prologues (sliced K: the per-slice sums of squares meet
    in the last program) and the epilogue add, against a float64 composition."""
    rule = LinearRule(None, "split_k", 16, 64, min_programs, 1, 4, 2)
    split = rule.split_k(n, k)[0]
    assert (split > 1) == (min_programs > 1)
    x = torch.randn(m, 2 * k if prologue == "silu_mul" else k)
    w, nw = torch.randn(n, k) / k ** 0.5, torch.rand(k) + 0.5
    res = torch.randn(m, k) if prologue == "add_norm" else None
    extra = {"bias": torch.randn(n), "full": torch.randn(m, n), None: None}[add]
    xd = x.double()
    if prologue == "silu_mul":
        gate, up = xd[:, :k], xd[:, k:]
        a = gate * torch.sigmoid(gate) * up
    else:
        a = float64_rmsnorm(xd + (res.double() if res is not None else 0), nw)
    want = a @ w.double().t() + (extra.double() if extra is not None else 0)
    counters = torch.zeros(64, dtype=torch.int32)
    out = torch.full((m, n), float("nan"))
    res_out = torch.full((m, k), float("nan")) if res is not None else None
    launch_small_m_matmul(out, x, w, rule, False, counters, prologue == "silu_mul",
                          nw if prologue != "silu_mul" else None, res, res_out, EPS, extra)
    torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-4)
    if res is not None:
        torch.testing.assert_close(res_out, x + res)
    assert not counters.any()


@needs_interpreter
@pytest.mark.parametrize("prologue", [None, "silu_mul", "add_norm"])
@pytest.mark.parametrize("add", ["bias", "full"])
@pytest.mark.parametrize("m, programs", [(1, 2), (1, 64), (3, 2)])
def test_gemv_epilogue_add_interpreted(prologue, add, m, programs):
    """The gemv's epilogue add (a bias, or a residual [M, N]) after its prologue, a grid
    walking several tiles or one per program, against a float64 composition."""
    n, k = 70, 300
    x = torch.randn(m, 2 * k if prologue == "silu_mul" else k)
    w, nw = torch.randn(n, k) / k ** 0.5, torch.rand(k) + 0.5
    res = torch.randn(m, k) if prologue == "add_norm" else None
    extra = torch.randn(n) if add == "bias" else torch.randn(m, n + 3)[:, :n]  # strided
    xd = x.double()
    if prologue == "silu_mul":
        a = xd[:, :k] * torch.sigmoid(xd[:, :k]) * xd[:, k:]
    elif prologue == "add_norm":
        a = float64_rmsnorm(xd + res.double(), nw)
    else:
        a = xd
    want = a @ w.double().t() + extra.double()
    out = torch.full((m, n), float("nan"))
    res_out = torch.full((m, k), float("nan")) if res is not None else None
    kw = dict(silu_mul=prologue == "silu_mul", residual=res, residual_out=res_out,
              norm_weight=nw if prologue == "add_norm" else None)
    launch_small_batch_linear(out, x, w, pdl=False, programs=programs, add=extra, **kw)
    torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-4)
    if res is not None:
        torch.testing.assert_close(res_out, x + res)


def test_outputs_may_not_overlap_inputs_and_norm_weight_is_contiguous():
    x, w = torch.randn(4, 64), torch.randn(8, 64)
    nw, res = torch.rand(64) + 0.5, torch.randn(4, 64)
    op = torch.ops.fuseinfer.small_batch_linear
    with pytest.raises(ValueError, match="residual_out must not overlap"):
        op(torch.empty(4, 8), x, w, norm_weight=nw, residual=res, residual_out=x)
    with pytest.raises(ValueError, match="residual_out must not overlap"):
        op(torch.empty(4, 8), x, w, norm_weight=nw, residual=res, residual_out=res)
    wide = torch.randn(4, 72)
    with pytest.raises(ValueError, match="out must not overlap"):
        op(wide[:, 64:], wide[:, :64], w)  # out shares x's rows
    with pytest.raises(ValueError, match="contiguous \\[64\\]"):
        op(torch.empty(4, 8), x, w, norm_weight=torch.rand(128)[::2])
    # disjoint views of one buffer are fine
    buf = torch.randn(4, 72)
    op(buf[:, 64:], buf[:, :64].contiguous(), w)
