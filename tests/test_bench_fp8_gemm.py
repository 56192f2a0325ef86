"""`fuseinfer bench fp8-gemm` and `fuseinfer tune fp8-gemm` on the CPU: the model shapes, the
operands' layouts, every baseline checked against the float32 reference on its own scales
(a wrong one reported, never timed), our own mismatch reported, the rates, the whole suite
loop host-timed, and the tuner's choice, merge, N split and entry."""

from __future__ import annotations

import sys
import types

import pytest
import torch

import fuseinfer  # noqa: F401  (registers the ops)
from fuseinfer.bench import fp8_gemm_baselines as baselines
from fuseinfer.bench.suites import fp8_gemm as suite
from fuseinfer.bench.suites import fp8_gemm_tune as tune
from fuseinfer.bench.timing import time_eager_cpu
from fuseinfer.ops.gemm.fp8_blockwise_mm import (
    reference_fp8_blockwise_mm,
    tma_aligned_activation_scales,
)
from fuseinfer.ops.gemm.fp8_gemm_dispatch import SM90_CONFIGS, Fp8GemmDispatch

SMALL = suite.GemmShape("tiny", "proj", 200, 256)  # N not a multiple of 128 on purpose


def test_model_shapes_are_the_issues():
    nk = {(s.model, s.proj): (s.n, s.k) for s in suite.SHAPES}
    assert {nk[("DeepSeek-V3", p)] for p in ("q_b", "kv_b", "o", "expert_gate_up", "qkv_a",
                                             "expert_down")} == {
        (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (2112, 7168), (7168, 2048)}
    assert nk[("Qwen3-8B", "qkv")] == (4096 + 2 * 1024, 4096)
    assert nk[("Qwen3-32B", "gate_up")] == (51200, 5120)
    assert nk[("Llama-3-70B", "down")] == (8192, 28672)
    assert nk[("square", "7168x7168")] == (7168, 7168)
    assert len(suite.SHAPES) == 6 + 4 * 4 + 1
    assert suite.M_VALUES == (1, 4, 16, 64, 128, 512, 2048, 4096, 8192)


def test_select_shapes_by_model_and_nk():
    picked = suite.select_shapes(["DeepSeek-V3", "square"], suite.parse_nk(["7168x7168",
                                                                            "2112x7168"]))
    assert [(s.model, s.n, s.k) for s in picked] == [("DeepSeek-V3", 2112, 7168),
                                                     ("square", 7168, 7168)]
    assert len(suite.select_shapes(["Qwen3-8B"])) == 4
    with pytest.raises(SystemExit, match="no shapes left"):
        suite.select_shapes(["square"], [(1, 2)])
    with pytest.raises(SystemExit, match="expected NxK"):
        suite.parse_nk(["7168"])


def test_operands_are_in_the_kernels_layouts():
    ops = baselines.make_operands(5, 200, 256, "cpu")
    assert ops.mnk == (5, 200, 256) and ops.out.dtype == torch.bfloat16
    assert ops.a_scales.shape == (5, 2) and ops.a_scales.stride() == (1, 8)
    assert tma_aligned_activation_scales(ops.a_scales) is ops.a_scales  # no copy per call
    assert ops.b_scales.shape == (2, 2) and ops.b_scales.stride() == (1, 2)
    assert baselines.operand_bytes(5, 200, 256) == 5 * 256 + 200 * 256 + 2 * 5 * 200 + \
        4 * 2 * (5 + 2)


def test_check_rows_samples_large_m():
    assert baselines.check_rows(7).tolist() == list(range(7))
    rows = baselines.check_rows(8192)
    assert len(rows) == baselines.CHECK_ROWS and rows[0] == 0 and rows[-1] == 8191
    assert bool((rows[1:] > rows[:-1]).all())


@pytest.mark.parametrize("name", ["cublas_tensor", "cublas_row", "bf16"])
def test_baselines_match_the_reference_on_their_own_scales(name):
    ops = baselines.make_operands(6, 200, 256, "cpu")
    call = baselines.PREPARE[name](ops)
    assert baselines.checked_rel_err(call, ops, name) < 5e-3
    if name != "bf16":  # coarser scales: not the blockwise product
        assert baselines.checked_rel_err(call, ops, "ours") > 0.1


def test_coarse_reference_scales_are_the_baselines_scales():
    ops = baselines.make_operands(3, 200, 256, "cpu")
    a, b = baselines.reference_scales("cublas_row", ops)
    assert torch.equal(a[:, 1], ops.a_scales[:, 0]) and torch.equal(b[:, 1], ops.b_scales[:, 0])
    a, b = baselines.reference_scales("cublas_tensor", ops)
    assert bool((a == ops.a_scales[0, 0]).all()) and bool((b == ops.b_scales[0, 0]).all())
    assert baselines.reference_scales("cublas_block", ops)[0] is ops.a_scales


def _host_timed(calls, config):
    return time_eager_cpu(lambda: [call() for call in calls], repeats=1)


@pytest.fixture
def cpu_suite(monkeypatch):
    monkeypatch.setattr(suite, "time_calls", _host_timed)
    monkeypatch.setattr(suite, "buffer_sets", lambda *args, **kwargs: 2)
    monkeypatch.setattr(suite, "dispatched_config", lambda m, n, k: f"cfg-m{m}")


def test_run_builds_rows_and_reports_what_could_not_be_timed(cpu_suite):
    from fuseinfer.bench.report import format_table

    rows = suite.run([SMALL], [1, 300], list(baselines.BASELINES), suite.Peaks(1000.0, 3000.0),
                     device="cpu")
    assert [(r["m"], r["config"]) for r in rows] == [(1, "cfg-m1"), (300, "cfg-m300")]
    for row in rows:
        assert row["rel_err"] < 5e-3 and row["us"] > 0 and row["rotated_sets"] == 2
        for name in ("cublas_tensor", "cublas_row", "bf16"):
            assert row[f"vs_{name}"] == pytest.approx(row[f"{name}_us"] / row["us"])
        # cuBLAS blockwise has no CPU kernel: reported with its error text, not timed
        assert "cublas_block_us" not in row and row["cublas_block_error"]
        assert "cublas_block" in row["not_timed"] and "flashinfer" not in row["not_timed"]
        assert row["tflops"] == pytest.approx(2 * row["m"] * 200 * 256 / row["us"] / 1e6)
    table = format_table(rows, suite.COLUMNS)
    assert "x cuBLAS block" in table and "cfg-m300" in table


def test_our_mismatch_is_reported_not_timed(cpu_suite, monkeypatch):
    def wrong(sets, enable_pdl, config=None):
        return [lambda s=s: s.out.zero_() for s in sets]

    monkeypatch.setattr(suite, "ours", wrong)
    row = suite.run([SMALL], [4], ["bf16"], suite.Peaks(None, None), device="cpu")[0]
    assert row["note"].startswith("MISMATCH") and row["rel_err"] == pytest.approx(1.0)
    assert "us" not in row and "bf16_us" not in row


def test_a_disagreeing_baseline_is_not_timed(cpu_suite, monkeypatch):
    good = baselines.PREPARE["cublas_row"]
    monkeypatch.setitem(baselines.PREPARE, "cublas_row", lambda ops: lambda: 2 * good(ops)())
    row = suite.run([SMALL], [4], ["cublas_row"], suite.Peaks(None, None), device="cpu")[0]
    assert "disagrees" in row["cublas_row_error"] and "cublas_row_us" not in row
    assert row["cublas_row_rel_err"] == pytest.approx(1.0, rel=1e-2)


def _fake_flashinfer(monkeypatch, scale: float) -> None:
    """A `flashinfer.gemm` computing the reference (times `scale`) from the layouts its
    kernels read: the Hopper GEMM's activation scales as [K/128, M rounded up to 4] M-major
    (only the pointer is used), bmm_fp8's [1, K, N] column-major weight and 1-element
    scales."""
    def fp8_blockscale_gemm_sm90(a, b, a_scale, b_scale, out=None, out_dtype=None):
        m, groups = a.shape[0], a.shape[1] // 128
        assert a_scale.is_contiguous() and a_scale.shape[0] == groups
        assert a_scale.shape[1] >= m and a_scale.shape[1] % 4 == 0
        assert b_scale.is_contiguous() and b_scale.shape == (-(-b.shape[0] // 128), groups)
        out.copy_(scale * reference_fp8_blockwise_mm(a, a_scale[:, :m].t(), b, b_scale))
        return out

    def bmm_fp8(a, b, a_scale, b_scale, dtype, out=None, backend="cublas"):
        assert a.dim() == b.dim() == 3 and b.stride(1) == 1 and a_scale.numel() == 1
        want = (a[0].float() * a_scale) @ (b[0].float() * b_scale)
        out.copy_(scale * want.unsqueeze(0))
        return out

    package = types.ModuleType("flashinfer")
    gemm = types.ModuleType("flashinfer.gemm")
    gemm.fp8_blockscale_gemm_sm90 = fp8_blockscale_gemm_sm90
    gemm.bmm_fp8 = bmm_fp8
    package.gemm = gemm
    monkeypatch.setitem(sys.modules, "flashinfer", package)
    monkeypatch.setitem(sys.modules, "flashinfer.gemm", gemm)
    monkeypatch.setattr(baselines, "_sm90", lambda device: True)


@pytest.mark.parametrize("name", ["flashinfer", "flashinfer_tensor"])
@pytest.mark.parametrize("scale, timed", [(1.0, True), (1.5, False)])
def test_flashinfer_is_checked_then_timed(cpu_suite, monkeypatch, name, scale, timed):
    _fake_flashinfer(monkeypatch, scale)
    for m in (3, 9):  # padded scale pitch (4 -> 4, 9 -> 12)
        row = suite.run([SMALL], [m], [name], suite.Peaks(None, None), device="cpu")[0]
        assert (f"vs_{name}" in row) == timed, row.get(f"{name}_error")
        assert (f"{name}_error" in row) == (not timed)


def test_a_baseline_that_cannot_build_is_tried_once(cpu_suite, monkeypatch):
    tried = []

    def unbuildable(ops):
        tried.append(ops.mnk)
        raise RuntimeError("ninja: build stopped: subcommand failed")

    monkeypatch.setitem(baselines.PREPARE, "flashinfer", unbuildable)
    monkeypatch.setattr(baselines, "available", lambda name: True)
    rows = suite.run([SMALL], [1, 2], ["flashinfer", "bf16"], suite.Peaks(None, None),
                     device="cpu")
    assert len(tried) == 1 and all("ninja" in r["flashinfer_error"] for r in rows)
    assert all("vs_bf16" in r for r in rows)


def test_without_flashinfer_no_column_values(cpu_suite, monkeypatch):
    monkeypatch.setitem(sys.modules, "flashinfer", None)  # import fails
    row = suite.run([SMALL], [3], ["flashinfer"], suite.Peaks(None, None), device="cpu")[0]
    assert not any(key.startswith(("flashinfer", "vs_flashinfer")) for key in row)


def test_rates_against_the_ceilings():
    # 2*M*N*K = 2e12 flop in 1e6 us: 2 TFLOP/s; weights 1e9 bytes / 1 s = 1 GB/s
    r = suite.rates(1000, 1000, 1_000_000, 1e6, suite.Peaks(fp8_tflops=4.0, copy_gbps=None))
    assert r["tflops"] == pytest.approx(2.0) and r["pct_fp8"] == pytest.approx(50.0)
    assert r["weight_gbps"] == pytest.approx(1.0) and r["pct_roofline"] == pytest.approx(50.0)
    # decode: bandwidth binds; the roofline takes the larger floor
    r = suite.rates(1, 4096, 4096, 10.0, suite.Peaks(fp8_tflops=1000.0, copy_gbps=4000.0))
    floor_us = baselines.operand_bytes(1, 4096, 4096) / 4000.0 / 1e3
    assert r["pct_roofline"] == pytest.approx(100 * floor_us / 10.0)
    assert suite.rates(1, 8, 128, 1.0, suite.Peaks(None, None))["pct_roofline"] is None


def test_bench_all_shows_the_roofline_as_the_ceiling(cpu_suite):
    from fuseinfer.bench.suites.all import SuiteResult, summary_table

    rows = suite.run([SMALL], [2], ["bf16", "cublas_block"], suite.Peaks(1e9, 1e-3),
                     device="cpu")
    table = summary_table([SuiteResult("fp8-gemm", [], ["bf16", "cublas_block"], rows)])
    assert table[0]["pct_ceiling"] == pytest.approx(rows[0]["pct_roofline"])
    assert table[0]["pct_ceiling"] != pytest.approx(rows[0]["pct_fp8"])
    assert table[0]["best"] == "bf16" and "cublas_block not timed" in table[0]["note"]
    assert "M=2 N=200 K=256" in table[0]["shape"]


# ---- the tuner ------------------------------------------------------------------------------
SHAPES = [(2112, 7168), (4096, 4096), (24576, 1536), (57344, 8192)]
A, B, C = SM90_CONFIGS[:3]


def _times(speed: dict[str, float], small_n_speed: dict[str, float] | None = None,
           missing: tuple[str, tuple[int, int]] | None = None):
    """µs = speed[config] x m for every key of every bucket; small_n_speed for N <= 4096."""
    times = {}
    for config, s in speed.items():
        times[config] = {}
        for n, k in SHAPES:
            for _, ms in tune.BUCKETS:
                for m in ms:
                    if missing == (config, (n, k)):
                        continue
                    factor = (small_n_speed or speed)[config] if n <= 4096 else s
                    times[config][(n, k, m)] = factor * m
    return times


def _always(config, m, shapes):
    return True


def test_one_winner_everywhere_merges_into_one_unbounded_rule():
    choices = tune.choose(_times({A: 1.0, B: 2.0, C: 3.0}), SHAPES, _always)
    assert choices == [tune.BucketChoice(None, A)]
    rules = tune.rules(choices)
    assert [(r.max_m, r.max_n, r.config) for r in rules] == [(None, None, A)]


def test_a_config_that_failed_a_shape_is_not_chosen():
    times = _times({A: 1.0, B: 2.0}, missing=(A, (2112, 7168)))
    assert tune.choose(times, SHAPES, _always) == [tune.BucketChoice(None, B)]


def test_a_winner_failing_the_reference_gives_way():
    checked = []

    def check(config, m, shapes):
        checked.append((config, m))
        return config != A or m > 16

    choices = tune.choose(_times({A: 1.0, B: 2.0}), SHAPES, check)
    assert choices[0] == tune.BucketChoice(16, B) and choices[-1] == tune.BucketChoice(None, A)
    assert (A, 1) in checked and (B, 1) in checked
    rules = tune.rules(choices)
    assert (rules[0].max_m, rules[0].config) == (16, B)
    assert rules[-1].max_m is None
    Fp8GemmDispatch("t", True, rules).validate("test")


def test_small_n_rule_only_when_it_wins_clearly():
    clear = tune.choose(_times({A: 1.0, B: 3.0}, small_n_speed={A: 1.0, B: 0.5}), SHAPES,
                        _always)
    assert clear == [tune.BucketChoice(None, A, small_n_config=B)]
    rules = tune.rules(clear)
    assert [(r.max_m, r.max_n, r.config) for r in rules] == [(None, 4096, B), (None, None, A)]
    entry = Fp8GemmDispatch("t", True, rules)
    entry.validate("test")
    assert entry.config_for(8, 2112, 7168) == B and entry.config_for(8, 57344, 8192) == A
    close = tune.choose(_times({A: 1.0, B: 2.0}, small_n_speed={A: 1.0, B: 0.98}), SHAPES,
                        _always)
    assert close == [tune.BucketChoice(None, A)]


def test_written_entry_loads_back(tmp_path):
    from fuseinfer.dispatch import write_entry
    from fuseinfer.dispatch.tables import parse_table

    rules = tune.rules([tune.BucketChoice(16, A), tune.BucketChoice(None, B)])
    path = tmp_path / "h200.json"
    write_entry(path, "fp8_gemm", Fp8GemmDispatch("tuned on test", True, rules), key="h200")
    import json

    loaded = parse_table(json.loads(path.read_text()), "h200.json")["fp8_gemm"]
    assert loaded.config_for(16, 7168, 7168) == A and loaded.config_for(17, 7168, 7168) == B


def test_measure_logs_every_time_and_skips_a_failing_config(monkeypatch):
    monkeypatch.setattr(tune, "BUCKETS", ((16, (1,)), (None, (130,))))
    monkeypatch.setattr(tune, "buffer_sets", lambda *args, **kwargs: 1)

    def timer(calls, config):
        calls[0]()
        if timer.config == B:
            raise RuntimeError("config cannot run this shape")
        return time_eager_cpu(lambda: None, repeats=1)

    def ours(sets, enable_pdl, config=None):
        timer.config = config
        return suite.ours(sets, enable_pdl, None)

    monkeypatch.setattr(tune, "time_calls", timer)
    monkeypatch.setattr(tune, "ours", ours)
    log = []
    times = tune.measure([(200, 256)], [A, B], None, log, device="cpu")
    assert set(times[A]) == {(200, 256, 1), (200, 256, 130)} and times[B] == {}
    assert len(log) == 4 and all("us" in e for e in log if e["config"] == A)
    assert all("cannot run" in e["error"] for e in log if e["config"] == B)
    check = tune.reference_check(log, device="cpu")
    assert check(A, 3, [(200, 256)]) and log[-1]["rel_err"] < 5e-3


def test_quick_args_parse_and_bad_names_fail_before_gpu_work(monkeypatch):
    import argparse

    from fuseinfer.bench import cli as bench_cli
    from fuseinfer.bench.registry import find_suite
    from fuseinfer.cli import main

    registered = find_suite("fp8-gemm")
    parser = argparse.ArgumentParser()
    registered.add_arguments(parser)
    args = parser.parse_args(list(registered.quick_args))
    assert len(suite.select_shapes(args.models, suite.parse_nk(args.nk))) == 3
    assert args.m == [1, 16, 128, 4096] and args.cold is True
    assert registered.records == "fp8_gemm" and registered.tune is not None
    monkeypatch.setattr(bench_cli, "has_cuda_gpu", lambda: True)
    with pytest.raises(SystemExit, match=r"unknown model\(s\) \['Nope'\]"):
        main(["bench", "fp8-gemm", "--models", "Nope"])
    with pytest.raises(SystemExit, match=r"unknown baseline\(s\) \['cutlass'\]"):
        main(["bench", "fp8-gemm", "--baselines", "cutlass"])
