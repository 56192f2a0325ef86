"""`fuseinfer bench fp4-quant` on the CPU: cases and byte counts, the buffer sets, the
suite's error check (the CPU op passes, an unwritten row is caught), the whole loop
host-timed with the torch baselines and FlashInfer's absence noted, its report, its
registration and its options."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

import fuseinfer  # noqa: F401  (registers the ops)
from fuseinfer.bench import fp4_quant_baselines
from fuseinfer.bench.suites import fp4_quant as suite


def test_cases_pad_gpt_oss_for_mxfp8_only():
    todo = suite.cases(suite.OPS, [2880, 7168], [1, 4096])
    assert len(todo) == 3 * 2 * 2
    widths = {(c.op, c.hidden): c.out_hidden for c in todo}
    assert widths[("mxfp8", 2880)] == 3072 and widths[("nvfp4", 2880)] == 2880
    assert widths[("mxfp8", 7168)] == 7168
    assert all(c.out_hidden == c.hidden for c in suite.cases(["mxfp8"], [2880], [1], False))


def test_bytes_moved():
    t, k = 16, 4096
    assert suite.bytes_moved(suite.Case("nvfp4", t, k, k), 2) == t * k * 2 + t * k // 2 + \
        t * k // 16
    assert suite.bytes_moved(suite.Case("mxfp4", t, k, k), 2) == t * k * 2 + t * k // 2 + \
        t * k // 32
    assert suite.bytes_moved(suite.Case("mxfp8", t, 2880, 3072), 2) == t * 2880 * 2 + \
        t * 3072 + t * 96


def test_sets_have_the_ops_default_layouts():
    s = suite.make_sets(suite.Case("nvfp4", 5, 256, 256), torch.bfloat16, 2, "cpu")[1]
    assert s["q"].shape == (5, 128) and s["s"].shape == (128, 16) and s["gs"].shape == (1,)
    m = suite.make_sets(suite.Case("mxfp8", 3, 2880, 3072), torch.bfloat16, 1, "cpu")[0]
    assert m["q"].shape == (3, 3072) and m["s"].shape == (3, 96)


@pytest.mark.parametrize("op", suite.OPS)
def test_check_of_the_cpu_op_is_small(op):
    case = suite.cases([op], [2880], [7])[0]
    err = suite.check(case, torch.bfloat16, lambda s: suite.ours(op, s, None), "cpu")
    assert err < (0.04 if op == "mxfp8" else 0.2)


def test_check_catches_an_unwritten_row():
    def all_but_the_last_row(s):
        q, sc = s["q"][:-1], torch.empty(3, 8, dtype=torch.uint8)
        torch.ops.fuseinfer.mxfp4_quantize(q, sc, s["x"][:-1])
        s["s"][:-1] = sc

    err = suite.check(suite.Case("mxfp4", 4, 256, 256), torch.bfloat16, all_but_the_last_row,
                      "cpu")
    assert math.isnan(err) or err > 1


def test_flashinfer_without_fp4_modules_is_noted():
    call, note = fp4_quant_baselines.flashinfer_call("nvfp4")
    if call is None:
        assert note.startswith("unavailable")
    with pytest.raises(ValueError, match="unknown baseline"):
        fp4_quant_baselines.baseline_call("liger", "nvfp4")


def test_run_builds_rows_with_host_timing(monkeypatch):
    from fuseinfer.bench.report import format_table
    from fuseinfer.bench.timing import time_eager_cpu

    def host_timed(calls, config):
        return time_eager_cpu(lambda: [call() for call in calls], repeats=1)

    monkeypatch.setattr(suite, "time_calls", host_timed)
    monkeypatch.setattr(fp4_quant_baselines, "flashinfer_call",
                        lambda op: (None, "unavailable: test"))
    rows = suite.run(suite.cases(suite.OPS, [2880], [3]), ["eager", "flashinfer"],
                     copy_gbps=1000.0, device="cpu")
    assert [r["op"] for r in rows] == list(suite.OPS)
    for r in rows:
        assert r["us"] > 0 and r["eager_us"] > 0 and r["vs_eager"] > 0
        assert r["flashinfer_note"] == "unavailable: test" and "vs_flashinfer" not in r
        assert r["pct_copy"] == pytest.approx(100 * r["gbps"] / 1000.0)
        assert r["rel_err"] < 0.2 and r["l2"] == "warm"
    assert rows[2]["out_hidden"] == 3072
    assert "x flashinfer" in format_table(rows, suite.COLUMNS)


def test_a_baseline_that_writes_nothing_is_not_timed(monkeypatch):
    """A baseline whose packed output disagrees with ours (as FlashInfer's fp4_quantize on
    Hopper, whose kernel body is compiled for sm_100+ only) keeps a note, not a time; one
    that agrees keeps its time."""
    from fuseinfer.bench.timing import time_eager_cpu

    def host_timed(calls, config):
        return time_eager_cpu(lambda: [call() for call in calls], repeats=1)

    def empty_kernel(s):  # what an empty kernel leaves: untouched fresh buffers
        return torch.full_like(s["q"].view(torch.uint8), 0x5A), s["s"].clone()

    def same_as_ours(s):
        q, sc = torch.empty_like(s["q"]), torch.empty_like(s["s"])
        torch.ops.fuseinfer.nvfp4_quantize(q, sc, s["x"], s["gs"], True)
        return q, sc

    monkeypatch.setattr(suite, "time_calls", host_timed)
    case = suite.cases(["nvfp4"], [256], [5])[0]
    assert suite.agreement(case, torch.bfloat16, empty_kernel, None, "cpu") < 0.2
    assert suite.agreement(case, torch.bfloat16, same_as_ours, None, "cpu") == 1.0
    for call, timed in ((empty_kernel, False), (same_as_ours, True)):
        monkeypatch.setattr(fp4_quant_baselines, "flashinfer_call",
                            lambda op, c=call: (c, "ok"))
        row = suite.run([case], ["flashinfer"], copy_gbps=1000.0, device="cpu")[0]
        assert ("flashinfer_us" in row) is timed and ("vs_flashinfer" in row) is timed
        assert ("flashinfer_note" in row) is not timed
        if not timed:
            assert row["flashinfer_note"].startswith("output disagrees")


def test_report_records_a_run(tmp_path, monkeypatch, capsys):
    from fuseinfer.bench import report
    from fuseinfer.bench.kernel_suite import report_run

    monkeypatch.setattr(report, "repo_dir", lambda: tmp_path)
    monkeypatch.setattr(report, "bench_environment", lambda: {"gpu_key": "h200"})
    rows = [{"op": "nvfp4", "model": "DeepSeek-V3", "hidden": 7168, "out_hidden": 7168,
             "tokens": 4096, "us": 30.0, "gbps": 4000.0, "pct_copy": 85.0, "l2": "cold",
             "rel_err": 0.09, "flashinfer_note": "unavailable: test"}]
    args = argparse.Namespace(pdl="auto", cold=False, json=None, record=True)
    assert report_run("fp4_quant", suite.COLUMNS, rows, 4700.0, args) == 0
    assert "% copy" in capsys.readouterr().out
    recorded = tmp_path / "microbench" / "results" / "h200" / "fp4_quant.json"
    assert json.loads(recorded.read_text())["runs"][0]["rows"] == rows


def test_suite_is_registered_with_a_quick_set():
    from fuseinfer.bench.registry import find_suite, kernel_suites

    registered = find_suite("fp4-quant")
    assert registered.records == "fp4_quant" and registered.needs_gpu
    assert registered.quick_args == ("--hidden", "7168", "--tokens", "1", "16", "4096")
    assert registered in kernel_suites()


@pytest.mark.parametrize("args, message", [
    (["--ops", "nope"], r"unknown op\(s\) \['nope'\]"),
    (["--baselines", "liger"], r"unknown baseline\(s\) \['liger'\]"),
    (["--hidden", "100"], "multiples of 32"),
])
def test_bad_options_are_reported_before_any_gpu_work(monkeypatch, args, message):
    from fuseinfer.bench import cli as bench_cli
    from fuseinfer.cli import main

    monkeypatch.setattr(bench_cli, "has_cuda_gpu", lambda: True)
    with pytest.raises(SystemExit, match=message):
        main(["bench", "fp4-quant", *args])
