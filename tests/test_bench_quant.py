"""`fuseinfer bench quant` on the CPU: cases and byte counts, the buffer sets' layouts, the
suite's error check (against an interpreted Triton kernel, and catching an unwritten
value), the unfused baselines against float64 math, the whole loop host-timed with
stand-ins for the CUDA kernels, its report and its options."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

import fuseinfer  # noqa: F401  (registers the ops)
from fuseinfer.bench import quant_baselines
from fuseinfer.bench.suites import quant as suite

GROUP_OP = "per_token_group_quant_fp8"


def test_cases_and_model_shapes():
    assert suite.TOKENS == (1, 16, 128, 1024, 4096, 8192)
    assert sorted(suite.MODEL_HIDDEN) == [2048, 4096, 5120, 7168, 8192, 18432]
    todo = suite.cases(suite.OPS, [7168, 18432], [1, 128])
    ops = {(c.op, c.hidden) for c in todo}
    assert ("fused_add_rmsnorm_quant_fp8", 18432) not in ops  # beyond its register row
    assert ("fused_add_rmsnorm_quant_fp8", 7168) in ops and (GROUP_OP, 18432) in ops
    assert len(todo) == (5 * 2 - 1) * 2


def test_bytes_moved():
    t, k = 16, 4096
    groups = k // 128
    assert suite.bytes_moved(suite.Case(GROUP_OP, t, k), 2) == t * k * 2 + t * k + t * groups * 4
    assert suite.bytes_moved(suite.Case("silu_and_mul_quant_fp8", t, k), 2) == \
        t * 2 * k * 2 + t * k + t * groups * 4
    assert suite.bytes_moved(suite.Case("fused_add_rmsnorm_quant_fp8", t, k), 2) == \
        3 * t * k * 2 + k * 2 + t * k + t * groups * 4
    assert suite.bytes_moved(suite.Case("per_token_quant_fp8", t, k), 4) == \
        t * k * 4 + t * k + t * 4
    assert suite.bytes_moved(suite.Case("per_tensor_quant_fp8", t, k), 2) == t * k * 3 + 4


def test_sets_write_padded_m_major_scales():
    s = suite.make_sets(suite.Case("silu_and_mul_quant_fp8", 5, 256), torch.bfloat16, 2,
                        "cpu")[1]
    assert s["x"].shape == (5, 512) and s["q"].shape == (5, 256)
    assert s["s"].shape == (5, 2) and s["s"].stride() == (1, 8)
    assert s["mid"].shape == (5, 256)
    tensor = suite.make_sets(suite.Case("per_tensor_quant_fp8", 3, 128), torch.bfloat16, 1,
                             "cpu")[0]
    assert tensor["s"].shape == (1,)


@pytest.mark.parametrize("tokens", [1, 6])
def test_check_of_the_interpreted_triton_kernel_is_exact(tokens):
    err = suite.check(suite.Case(GROUP_OP, tokens, 512), torch.bfloat16,
                      lambda s: suite.GROUP_KERNELS["triton"](s, None), "cpu")
    assert err == 0.0


def test_check_catches_an_unwritten_row():
    def all_but_the_last_row(s):
        torch.ops.fuseinfer.per_token_group_quant_fp8(s["q"][:-1], s["s"][:-1], s["x"][:-1],
                                                      128)

    err = suite.check(suite.Case(GROUP_OP, 4, 256), torch.bfloat16, all_but_the_last_row,
                      "cpu")
    assert math.isnan(err)


def test_unfused_baselines_match_float64_math():
    s = suite.make_sets(suite.Case("silu_and_mul_quant_fp8", 3, 256), torch.bfloat16, 1,
                        "cpu")[0]
    quant_baselines.baseline_call("unfused", "silu_and_mul_quant_fp8", 128)(s)
    gate, up = s["x"].double().chunk(2, dim=-1)
    want = gate / (1 + torch.exp(-gate)) * up
    got = suite._dequantized(s["q"], s["s"]).double()
    assert ((got - want).norm() / want.norm()).item() < 3e-2

    n = suite.make_sets(suite.Case("fused_add_rmsnorm_quant_fp8", 3, 256), torch.bfloat16, 1,
                        "cpu")[0]
    summed = (n["x"].double() + n["r"].double())
    quant_baselines.baseline_call("unfused", "fused_add_rmsnorm_quant_fp8", 128)(n)
    want = summed * torch.rsqrt(summed.pow(2).mean(-1, keepdim=True) + 1e-6) * n["w"].double()
    got = suite._dequantized(n["q"], n["s"]).double()
    assert ((got - want).norm() / want.norm()).item() < 3e-2
    assert quant_baselines.baseline_call("unfused", GROUP_OP, 128) is None
    with pytest.raises(ValueError, match="unknown baseline"):
        quant_baselines.baseline_call("liger", GROUP_OP, 128)


def test_run_builds_rows_with_host_timing(monkeypatch):
    """The whole suite loop on the CPU, host-timed; the CUDA group kernels replaced by the
    interpreted Triton one (their stand-in), each timed under its own column."""
    from fuseinfer.bench.report import format_table, timed_baselines
    from fuseinfer.bench.timing import time_eager_cpu

    def host_timed(calls, config):
        return time_eager_cpu(lambda: [call() for call in calls], repeats=1)

    seen = []

    def stand_in(name):
        def call(s, pdl):
            seen.append(name)
            suite._group_triton(s, pdl)
        return call

    monkeypatch.setattr(suite, "time_calls", host_timed)
    monkeypatch.setattr(suite, "GROUP_KERNELS", {n: stand_in(n) for n in suite.GROUP_KERNELS})
    todo = suite.cases(suite.OPS, [256], [3])
    rows = suite.run(todo, ["eager", "unfused"], copy_gbps=1000.0, device="cpu")
    assert [r["op"] for r in rows] == list(suite.OPS)
    assert {"triton", "cuda", "cuda_fast_math"} <= set(seen)
    group = rows[0]
    for key in ("us_triton", "us_cuda", "us_cuda_fast_math"):
        assert group[key] > 0
    assert group["backend"] == "triton" and group["us"] == group["us_triton"]
    assert group["rel_err_cuda_fast_math"] == 0.0
    assert timed_baselines(group) == ["eager"]
    assert timed_baselines(rows[1]) == ["eager", "unfused"]
    assert all(r["rel_err"] < 1e-6 and r["l2"] == "warm" for r in rows)
    assert group["pct_copy"] == pytest.approx(100 * group["gbps"] / 1000.0)
    table = format_table(rows, suite.COLUMNS)
    assert "us cuda fm" in table and "x unfused" in table


def test_report_records_a_quant_run(tmp_path, monkeypatch, capsys):
    from fuseinfer.bench import report
    from fuseinfer.bench.kernel_suite import report_run

    monkeypatch.setattr(report, "repo_dir", lambda: tmp_path)
    monkeypatch.setattr(report, "bench_environment", lambda: {"gpu_key": "h200"})
    rows = [{"op": GROUP_OP, "model": "DeepSeek-V3", "hidden": 7168, "tokens": 128,
             "backend": "cuda", "us": 3.0, "us_triton": 3.5, "us_cuda": 3.0,
             "us_cuda_fast_math": 2.9, "gbps": 900.0, "eager_us": 30.0, "vs_eager": 10.0,
             "l2": "warm", "rel_err": 0.0}]
    args = argparse.Namespace(pdl="auto", cold=False, json=None, record=True)
    assert report_run("quant", suite.COLUMNS, rows, 4000.0, args) == 0
    assert "us triton" in capsys.readouterr().out
    recorded = tmp_path / "microbench" / "results" / "h200" / "quant.json"
    assert json.loads(recorded.read_text())["runs"][0]["rows"] == rows


def test_suite_is_registered_with_a_quick_set():
    from fuseinfer.bench.registry import find_suite

    registered = find_suite("quant")
    assert registered.records == "quant" and registered.needs_gpu
    assert registered.quick_args == ("--hidden", "7168", "--tokens", "1", "128", "4096")


@pytest.mark.parametrize("args, message", [
    (["--ops", "nope"], r"unknown op\(s\) \['nope'\]"),
    (["--baselines", "liger"], r"unknown baseline\(s\) \['liger'\]"),
    (["--hidden", "100"], "multiples of 128"),
    (["--ops", "fused_add_rmsnorm_quant_fp8", "--hidden", "18432"], "no cases left"),
])
def test_bad_options_are_reported_before_any_gpu_work(monkeypatch, args, message):
    from fuseinfer.bench import cli as bench_cli
    from fuseinfer.cli import main

    monkeypatch.setattr(bench_cli, "has_cuda_gpu", lambda: True)
    with pytest.raises(SystemExit, match=message):
        main(["bench", "quant", *args])
