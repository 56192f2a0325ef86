"""The attention family's table entry, bench-suite accounting, its options and recording
a suite in parts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_cli import run_cli  # noqa: E402  (tests/ is on sys.path under pytest)

from fuseinfer.bench.report import record_run
from fuseinfer.bench.suites import attention as suite
from fuseinfer.dispatch import TableError, lookup
from fuseinfer.dispatch.schema import parse_dataclass, to_json
from fuseinfer.dispatch.tables import load_table
from fuseinfer.ops.attention.dispatch import (
    ATTENTION_BUILTIN,
    AttentionDispatch,
    DecodeLaunchRule,
    PrefillLaunchRule,
)

REPO = Path(__file__).resolve().parents[1]


def test_h100_entry_is_tuned_and_picks_rules_by_head_dim():
    entry = load_table(REPO / "autotune_configs" / "h100.json")["attention"]
    assert entry.source.startswith("tuned on NVIDIA H100")
    assert entry.prefill_rule(128).max_head_dim == 128
    assert entry.prefill_rule(256).max_head_dim is None
    assert entry.decode_rule(64).max_head_dim == 64
    assert lookup("attention", None).entry is ATTENTION_BUILTIN  # no GPU: built-in


@pytest.mark.parametrize("change, message", [
    (dict(decode_rules=(DecodeLaunchRule(None, 48, 4, 2),)), "block_n: must be a power of two"),
    (dict(prefill_rules=(PrefillLaunchRule(128, 64, 64, 4, 2, True),)),
     "last rule must have max_head_dim null"),
    (dict(min_chunk=8), "min_chunk: must be >= 16"),
    (dict(decode_rules=(DecodeLaunchRule(None, 64, 4, 2, max_batch=8),)), "no max_batch"),
    (dict(decode_rules=(DecodeLaunchRule(64, 64, 4, 2, max_batch=0),
                        DecodeLaunchRule(None, 64, 4, 2))), "max_batch: must be >= 1"),
    (dict(prefill_rules=(PrefillLaunchRule(None, 64, 64, 4, 9, True),)), "num_stages"),
    (dict(decode_rules=(DecodeLaunchRule(None, 64, 4, 2, ctas_per_sm=0),)),
     "ctas_per_sm: must be in"),
])
def test_entry_validation(change, message):
    data = to_json(replace(ATTENTION_BUILTIN, **change))
    with pytest.raises(TableError, match=message):
        parse_dataclass(AttentionDispatch, data, "attention")


def test_visible_pairs_and_bytes():
    assert suite.visible(4, 4, None) == 10  # causal triangle
    assert suite.visible(2, 6, None) == 5 + 6  # extend: queries at positions 4 and 5
    assert suite.visible(4, 4, 1) == 1 + 2 + 2 + 2  # window of the key itself and one more
    case = suite.Case("decode", suite.MODELS["GPT-OSS-win128"], "2x1000", (1, 1), (1000, 50))
    # 128 visible tokens of the first request, 50 of the second; K and V, 8 heads x 64 dims
    assert suite.kv_bytes(case, 2) == 2 * (128 + 50) * 8 * 64 * 2 + 2 * 2 * 64 * 64 * 2
    cases = suite.decode_cases([suite.MODELS["Llama-3-8B"]], (1, 8), (1024,))
    assert [c.shape for c in cases] == ["1x1024", "8x1024", "1x8192", "50x300"]


def test_tune_attention_options():
    proc = run_cli("tune", "attention", "--help")
    assert proc.returncode == 0, proc.stderr
    for flag in ("--kinds", "--output", "--log"):
        assert flag in proc.stdout
    bad = run_cli("tune", "attention", "--kinds", "sideways")
    assert bad.returncode == 2 and "invalid choice: 'sideways'" in bad.stderr


def test_record_run_in_parts(tmp_path):
    env = {"gpu": "H100", "driver": "1", "torch": "2.11", "date": "d1"}
    first = {"suite": "attention", "environment": env, "columns": [{"key": "us"}],
             "rows": [{"us": 1.0}]}
    path = tmp_path / "attention.json"
    record_run(path, first)
    record_run(path, dict(first, environment=dict(env, date="d2"), rows=[{"us": 2.0}]),
               continue_last=True)
    data = json.loads(path.read_text())
    assert len(data["runs"]) == 1
    assert data["runs"][0]["rows"] == [{"us": 1.0}, {"us": 2.0}]
    assert data["runs"][0]["environment"]["continued"] == ["d2"]
    with pytest.raises(ValueError, match="no latest run with the same GPU"):
        record_run(path, dict(first, environment=dict(env, gpu="H200")), continue_last=True)


def test_a_run_cut_by_sigterm_keeps_its_finished_rows(tmp_path, monkeypatch):
    """SIGTERM mid-run (a device step's timeout): the rows finished before it are printed,
    written and recorded as a run cut short, nothing after it runs, exit code 3, and the
    SIGTERM handler is put back."""
    import os
    import signal

    from fuseinfer.bench import ceilings, report

    def fake_run(cases, *a, rows, **kw):
        for i, case in enumerate(cases):
            if i == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            rows.append({"kind": case.kind, "model": case.model.name, "shape": case.shape,
                         "us": float(i + 1)})
        return rows

    recorded = []
    monkeypatch.setattr(suite, "run", fake_run)
    monkeypatch.setattr(ceilings, "copy_bandwidth_gbps", lambda: 4000.0)
    monkeypatch.setattr(ceilings, "load_ceilings", lambda: None)
    monkeypatch.setattr(report, "record", lambda run, continue_last=False: recorded.append(run))
    handler = signal.getsignal(signal.SIGTERM)
    args = suite_args(["--kinds", "decode", "--models", "Llama-3-8B", "--batches", "1",
                       "--lengths", "1024", "--json", str(tmp_path / "run.json"), "--record"])
    assert suite.run_command(args) == 3
    written = json.loads((tmp_path / "run.json").read_text())
    assert [r["shape"] for r in written["rows"]] == ["1x1024", "1x8192"]
    assert written["cut_short"] == "after 2 of 3 cases (signal SIGTERM)"
    assert len(recorded) == 1 and recorded[0]["rows"] == written["rows"]
    assert signal.getsignal(signal.SIGTERM) is handler


def suite_args(argv):
    import argparse

    parser = argparse.ArgumentParser()
    suite.add_arguments(parser)
    return parser.parse_args(argv)


def test_build_only_builds_each_kind_and_model_once_and_times_nothing(monkeypatch, capsys):
    from fuseinfer.bench import ceilings

    built = []

    def fake_check(case, page_size, dtype, fp8=False, table=None):
        built.append(("ours fp8" if fp8 else "ours", case.kind, case.model.name))
        return 0.0

    def fake_plan(case, page_size, dtype):
        built.append(("flashinfer", case.kind, case.model.name))
        if case.model.sinks:
            raise RuntimeError("no sink variant here")

    monkeypatch.setattr(suite, "check", fake_check)
    monkeypatch.setattr(suite, "_plan_flashinfer", fake_plan)
    monkeypatch.setattr(suite.base, "installed", lambda names: list(names))
    monkeypatch.setattr(ceilings, "copy_bandwidth_gbps",
                        lambda: pytest.fail("--build-only must time nothing"))
    args = suite_args(["--models", "Llama-3-8B", "GPT-OSS", "--batches", "1", "8",
                       "--lengths", "1024", "--prefill", "1x4k", "--fp8-kv",
                       "--baselines", "sdpa", "flashinfer", "--build-only"])
    assert suite.run_command(args) == 1  # the GPT-OSS FlashInfer builds failed
    assert built == [(what, kind, model)
                     for kind, model in (("decode", "Llama-3-8B"), ("decode", "GPT-OSS"),
                                         ("prefill", "Llama-3-8B"), ("prefill", "GPT-OSS"))
                     for what in ("ours", "ours fp8", "flashinfer")
                     if not (what == "ours fp8" and kind == "prefill")]
    out = capsys.readouterr().out
    assert "[2/4] built decode GPT-OSS: ours, ours fp8, flashinfer FAILED (RuntimeError: " \
        "no sink variant here)" in out


