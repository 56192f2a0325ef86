"""`fuseinfer bench rope` on the CPU: shapes and byte counts, the baselines against our CPU
ops (cache contents included, store_kv_cache's from suites/kvcache.py), the suite's own
check, its report and its options."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fuseinfer  # noqa: F401  (registers the ops)
from fuseinfer.bench import rope_baselines
from fuseinfer.bench.suites import kvcache
from fuseinfer.bench.suites import rope as suite

REPO = Path(__file__).resolve().parents[1]
LLAMA = suite.MODELS["Llama-3-8B"]
DEEPSEEK = suite.MODELS["DeepSeek-V3"]


def test_cases_put_rope_rows_first_and_skip_store_without_a_cache():
    todo = suite.cases(list(suite.MODELS.values()), (1, 8))
    ops = [(c.op, c.model.name, c.tokens) for c in todo]
    assert ops[:2] == [("rope+kv", "Llama-3-8B", 1), ("rope+kv", "Llama-3-8B", 8)]
    assert ("rope", "DeepSeek-V3", 8) in ops
    assert ("store_kv", "DeepSeek-V3", 1) not in ops
    assert ("rope+kv", "DeepSeek-V3", 1) not in ops
    assert len(ops) == 4 * 2 + 3 * 2
    assert all(c.op == "store_kv" for c in todo[8:])


def test_model_shapes():
    shapes = {m.name: (m.q_heads, m.kv_heads, m.head_size, m.rotary_dim, m.is_neox)
              for m in suite.MODELS.values()}
    assert shapes == {"Llama-3-8B": (32, 8, 128, 128, True),
                      "Qwen3-0.6B": (16, 8, 128, 128, True),
                      "GPT-OSS-120B": (64, 8, 64, 64, True),
                      "DeepSeek-V3": (128, 1, 64, 64, False)}
    assert not DEEPSEEK.kv_cache and "latent" in DEEPSEEK.note
    assert suite.TOKENS == (1, 8, 32, 128, 512, 4096, 16384)


def test_bytes_moved():
    # Llama, 1 token, bf16: q (32 heads) and k (8) read and written, v read, k and v
    # written to the cache; int64 position and 128 float32 cos/sin values.
    assert suite.bytes_moved(suite.Case("rope+kv", LLAMA, 1), 2) == \
        (64 + 16 + 8 + 16) * 128 * 2 + 8 + 128 * 4
    assert suite.bytes_moved(suite.Case("rope+kv", LLAMA, 100), 2) == \
        100 * suite.bytes_moved(suite.Case("rope+kv", LLAMA, 1), 2)
    assert suite.bytes_moved(suite.Case("store_kv", LLAMA, 3), 2) == 4 * 8 * 128 * 3 * 2
    assert kvcache.store_bytes(8, 128, 3, 2) == 4 * 8 * 128 * 3 * 2
    assert suite.bytes_moved(suite.Case("rope", DEEPSEEK, 2), 2) == \
        2 * ((256 + 2) * 64 * 2 + 8 + 64 * 4)


def test_cos_sin_cache_layout():
    cache = suite.cos_sin_cache(50, 8, 10_000.0)
    assert cache.dtype == torch.float32 and cache.shape == (50, 8)
    p, i = 37, 3
    angle = p * 10_000.0 ** (-2 * i / 8)
    assert cache[p, i].item() == pytest.approx(math.cos(angle), abs=1e-7)
    assert cache[p, 4 + i].item() == pytest.approx(math.sin(angle), abs=1e-7)


def test_sets_are_strided_slices_of_one_qkv_buffer():
    s = suite.make_sets(LLAMA, 5, torch.bfloat16, 2, device="cpu")[1]
    width = (32 + 2 * 8) * 128
    assert s["qkv"].shape == (5, width)
    for name, offset in (("q", 0), ("k", 32 * 128), ("v", 40 * 128)):
        assert s[name].stride() == (width, 1)
        assert s[name].data_ptr() == s["qkv"].data_ptr() + 2 * offset
    assert s["k_cache"].shape == (10, 8, 128) and s["positions"].dtype == torch.int64
    assert s["loc"].unique().numel() == 5 and int(s["loc"].max()) < 10
    deepseek = suite.make_sets(DEEPSEEK, 3, torch.bfloat16, 1, device="cpu")[0]
    assert "k_cache" not in deepseek and "v" not in deepseek


def float64_rope(positions: torch.Tensor, x: torch.Tensor, m: suite.Model) -> torch.Tensor:
    """x [tokens, heads * head_size] rotated in float64 from the angles themselves: each
    pair of dims as a complex number times e^(i * position * inv_freq)."""
    heads = x.double().unflatten(-1, (-1, m.head_size))
    rot, rest = heads[..., :m.rotary_dim], heads[..., m.rotary_dim:]
    re, im = rot.chunk(2, dim=-1) if m.is_neox else (rot[..., 0::2], rot[..., 1::2])
    exponent = torch.arange(0, m.rotary_dim, 2, dtype=torch.float64) / m.rotary_dim
    angle = positions.double()[:, None, None] * m.theta ** -exponent
    z = torch.complex(re, im) * torch.polar(torch.ones_like(angle), angle)
    if m.is_neox:
        rot = torch.cat((z.real, z.imag), dim=-1)
    else:
        rot = torch.stack((z.real, z.imag), dim=-1).flatten(-2)
    return torch.cat((rot, rest), dim=-1).flatten(1)


def _small(is_neox: bool, rotary_dim: int) -> suite.Model:
    return suite.Model("small", 4, 2, 32, rotary_dim, is_neox, 10_000.0)


@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("rotary_dim", [32, 16])
def test_eager_baseline_matches_cpu_op_including_cache(is_neox, rotary_dim):
    m = _small(is_neox, rotary_dim)
    s = suite.make_sets(m, 7, torch.bfloat16, 1, device="cpu")[0]
    for name in ("k_cache", "v_cache"):
        s[name].fill_(float("nan"))
    ref = {name: t.clone() for name, t in s.items()}
    q_ref, k_ref = rope_baselines.torch_rope(*suite._rope_args(ref, m))
    suite.OURS["fused"](s, m, None)

    torch.testing.assert_close(s["q"], q_ref)
    torch.testing.assert_close(s["k"], k_ref)
    loc = s["loc"]
    for name in ("k_cache", "v_cache"):
        torch.testing.assert_close(s[name][loc], ref[name][loc])
        assert not s[name][loc].isnan().any()
    torch.testing.assert_close(s["k_cache"][loc].flatten(1), k_ref)
    torch.testing.assert_close(s["v_cache"][loc].flatten(1), ref["v"])
    # Slots outside loc stay untouched (poisoned) in both.
    others = torch.ones(14, dtype=torch.bool)
    others[loc] = False
    assert s["k_cache"][others].isnan().all() and ref["k_cache"][others].isnan().all()
    # Both agree with the float64 textbook rotation to bf16 rounding.
    want = float64_rope(ref["positions"], ref["q"], m)
    assert ((s["q"].double() - want).norm() / want.norm()).item() < 5e-3


def test_eager_store_matches_cpu_op():
    s = suite.make_sets(LLAMA, 6, torch.bfloat16, 1, device="cpu")[0]
    ref = {name: t.clone() for name, t in s.items()}
    rope_baselines.torch_store_kv(*kvcache.store_args(ref))
    suite.OURS["store"](s, LLAMA, None)
    loc = s["loc"]
    assert torch.equal(s["k_cache"][loc], ref["k_cache"][loc])
    assert torch.equal(s["v_cache"][loc].flatten(1), s["v"])


def test_separate_writes_what_fused_writes():
    m = _small(True, 32)
    fused = suite.make_sets(m, 5, torch.bfloat16, 1, device="cpu")[0]
    separate = {name: t.clone() for name, t in fused.items()}
    suite.OURS["fused"](fused, m, None)
    suite.OURS["separate"](separate, m, None)
    loc = fused["loc"]
    for name in ("q", "k"):
        assert torch.equal(fused[name], separate[name])
    for name in ("k_cache", "v_cache"):
        assert torch.equal(fused[name][loc], separate[name][loc])


@pytest.mark.parametrize("op, model", [("rope+kv", "Qwen3-0.6B"), ("store_kv", "GPT-OSS-120B"),
                                       ("rope", "DeepSeek-V3")])
def test_suite_check_on_cpu(op, model):
    err = suite.check(suite.Case(op, suite.MODELS[model], 4), torch.bfloat16, None, "cpu")
    assert err < 1e-3


def test_check_catches_an_unwritten_cache_row(monkeypatch):
    def all_but_last_row(s, m, pdl):
        torch.ops.fuseinfer.rope_with_cos_sin_cache(*suite._rope_args(s, m)[:6], None, None,
                                                    None, None, None, None, pdl)
        torch.ops.fuseinfer.store_kv_cache(s["k_cache"], s["v_cache"], s["loc"][:-1],
                                           s["k"][:-1], s["v"][:-1], None, None, pdl)

    monkeypatch.setattr(suite, "_fused", all_but_last_row)
    err = suite.check(suite.Case("rope+kv", _small(True, 32), 4), torch.bfloat16, None, "cpu")
    assert math.isnan(err)


def test_baseline_names():
    assert rope_baselines.baseline_fn("eager", "store_kv") is rope_baselines.torch_store_kv
    assert rope_baselines.baseline_fn("flashinfer", "store_kv") is None
    with pytest.raises(ValueError, match="unknown baseline"):
        rope_baselines.baseline_fn("liger", "rope+kv")
    sets = suite.make_sets(LLAMA, 2, torch.bfloat16, 1, device="cpu")
    assert suite.baseline("flashinfer", "store_kv", LLAMA, sets) is None


def test_run_builds_rows_with_host_timing(monkeypatch):
    """The whole suite loop on the CPU, host-timed: rows, ratios, notes and the table."""
    from fuseinfer.bench.report import format_table
    from fuseinfer.bench.timing import time_eager_cpu

    def host_timed(calls, config):
        return time_eager_cpu(lambda: [call() for call in calls], repeats=1)

    make_sets = suite.make_sets
    monkeypatch.setattr(suite, "time_calls", host_timed)
    monkeypatch.setattr(suite, "make_sets", lambda *args: make_sets(*args[:4], device="cpu"))
    rows = suite.run([LLAMA, DEEPSEEK], [2], ["eager", "flashinfer"], copy_gbps=1000.0)
    assert [(r["op"], r["model"]) for r in rows] == [
        ("rope+kv", "Llama-3-8B"), ("rope", "DeepSeek-V3"), ("store_kv", "Llama-3-8B")]
    fused, deepseek, store = rows
    assert fused["vs_separate"] > 0 and fused["vs_eager"] > 0 and "vs_flashinfer" not in fused
    assert "vs_separate" not in deepseek and "latent" in deepseek["note"]
    assert "vs_separate" not in store and store["bytes"] == 4 * 8 * 128 * 2 * 2
    assert all(r["rel_err"] < 1e-3 and r["l2"] == "warm" for r in rows)
    assert fused["pct_copy"] == pytest.approx(100 * fused["gbps"] / 1000.0)
    table = format_table(rows, suite.COLUMNS)
    assert "x separate" in table and "DeepSeek-V3" in table


def test_report_writes_json_and_records_a_rope_run(tmp_path, monkeypatch, capsys):
    import argparse
    import json

    from fuseinfer.bench import report
    from fuseinfer.bench.kernel_suite import report_run
    from fuseinfer.bench.summary import render_summary

    monkeypatch.setattr(report, "repo_dir", lambda: tmp_path)
    monkeypatch.setattr(report, "bench_environment", lambda: {"gpu_key": "h100"})
    rows = [{"op": "rope+kv", "model": "Llama-3-8B", "tokens": 8, "us": 3.5, "gbps": 61.0,
             "vs_separate": 1.4, "vs_eager": 5.0, "l2": "warm", "rel_err": 1e-4}]
    args = argparse.Namespace(pdl="auto", cold=False, json=tmp_path / "run.json", record=True)
    assert report_run("rope", suite.COLUMNS, rows, 3000.0, args) == 0
    assert "x separate" in capsys.readouterr().out
    written = json.loads((tmp_path / "run.json").read_text())
    assert written["suite"] == "rope" and written["rows"] == rows
    recorded = tmp_path / "microbench" / "results" / "h100" / "rope.json"
    assert json.loads(recorded.read_text())["runs"][0]["pdl"] == "auto"
    assert "rope+kv" in render_summary(tmp_path / "microbench" / "results")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"), CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", "fuseinfer.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_help():
    proc = run_cli("bench", "rope", "--help")
    assert proc.returncode == 0 and "usage: fuseinfer" in proc.stdout
    for flag in ("--models", "--tokens", "--json", "--record", "--cold", "--pdl",
                 "--baselines"):
        assert flag in proc.stdout



@pytest.mark.parametrize("args, message", [
    (["--models", "Nope"], r"unknown model\(s\) \['Nope'\]; choose from \['Llama-3-8B'"),
    (["--baselines", "liger"], r"unknown baseline\(s\) \['liger'\]"),
    (["--tokens", "0"], "token counts must be positive"),
])
def test_bad_names_are_reported_before_any_gpu_work(monkeypatch, args, message):
    from fuseinfer.bench import cli as bench_cli
    from fuseinfer.cli import main

    monkeypatch.setattr(bench_cli, "has_cuda_gpu", lambda: True)
    with pytest.raises(SystemExit, match=message):
        main(["bench", "rope", *args])
