"""The plots of `fuseinfer bench summary` (bench/plots.py): panels derived from recorded rows
alone, one deterministic SVG per (gpu, suite), and a summary that still writes its tables
without matplotlib."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from fuseinfer.bench.plot_panels import implementations, suite_panels
from fuseinfer.bench.plots import plot_results
from fuseinfer.bench.report import record_run
from fuseinfer.bench.summary import BEGIN_MARKER, END_MARKER, main, update_benchmarks_doc

ENV = {"date": "2026-01-02T03:04:05+00:00", "gpu": "NVIDIA H200", "driver": "580",
       "torch": "2.11.0"}


def _norm_rows() -> list[dict[str, Any]]:
    rows = []
    for model, hidden in (("Qwen3-0.6B", 1024), ("Llama-3-8B", 4096)):
        for tokens in (1, 64, 4096):
            nbytes = 4 * hidden * tokens
            rows.append({
                "op": "rmsnorm", "model": model, "hidden": hidden, "tokens": tokens,
                "dtype": "bfloat16", "bytes": nbytes, "us": 2.0, "gbps": nbytes / 2e3,
                "eager_us": 8.0, "vs_eager": 4.0, "compile_us": 2.5, "vs_compile": 1.25,
                # a baseline column added later is drawn with no code change
                "flashinfer_us": 1.6, "vs_flashinfer": 0.8,
                "l2": "warm",
            })
    return rows


def _attention_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for shape, us in (("1x1024", 5.0), ("1x4096", 8.0), ("8x1024", 9.0)):
        rows.append({"kind": "decode", "model": "Llama-3-8B", "shape": shape,
                     "dtype": "bfloat16", "us": us, "bytes": 1_000_000,
                     "sdpa_us": 2 * us, "vs_sdpa": 2.0,
                     "no_sink_us": us, "feature_cost_pct": 0.0})  # a cost, not a baseline
    rows.append({"kind": "decode", "model": "Llama-3-8B", "shape": "8x65536",
                 "note": "skipped: too large"})
    for shape in ("1x4k", "extend 2k on 4k"):
        rows.append({"kind": "prefill", "model": "Llama-3-8B", "shape": shape,
                     "dtype": "bfloat16", "us": 100.0, "flops": 50e12 * 100e-6,
                     "sdpa_us": 200.0, "vs_sdpa": 2.0})
    return rows


def _results_tree(root: Path) -> Path:
    results = root / "results"
    ceilings = {"copy_gbps": 4000.0, "bf16_tflops": 800.0, "fp8_tflops": None}
    record_run(results / "h200" / "norm.json",
               {"suite": "norm", "environment": ENV, "ceilings": ceilings, "rows": []})
    record_run(results / "h200" / "norm.json",
               {"suite": "norm", "environment": ENV, "ceilings": ceilings,
                "rows": _norm_rows()})
    record_run(results / "h100" / "attention.json",
               {"suite": "attention", "environment": ENV, "ceilings": ceilings,
                "rows": _attention_rows()})
    # rows without bytes or FLOPs: a table, no plot
    record_run(results / "h200" / "runtime.json",
               {"suite": "runtime", "environment": ENV, "ceilings": None,
                "rows": [{"workload": "offline", "output_tok_per_s": 100.0}]})
    return results


# ---- panels: derived from the rows alone (no matplotlib needed) -------------------------
def test_implementations_are_timed_columns_with_a_ratio():
    assert implementations(_norm_rows()) == ["ours", "eager", "compile", "flashinfer"]
    assert implementations(_attention_rows()) == ["ours", "sdpa"]  # no_sink_us has no ratio


def test_norm_panels_give_gbps_per_implementation_against_tokens():
    run = {"ceilings": {"copy_gbps": 4000.0}, "rows": _norm_rows()}
    panels = suite_panels(run)
    assert [p.title for p in panels] == ["rmsnorm, Qwen3-0.6B", "rmsnorm, Llama-3-8B"]
    panel = panels[1]
    assert (panel.unit, panel.x_label, panel.categories) == ("GB/s", "tokens", None)
    assert (panel.ceiling, panel.ceiling_label) == (4000.0, "copy bandwidth (4000 GB/s)")
    rates = {s.implementation: s.points for s in panel.series}
    assert list(rates) == ["ours", "eager", "compile", "flashinfer"]
    nbytes = 4 * 4096 * 64
    assert rates["ours"][1] == (64.0, pytest.approx(nbytes / 2.0 / 1e3))
    assert rates["eager"][1] == (64.0, pytest.approx(nbytes / 8.0 / 1e3))
    assert rates["flashinfer"][1] == (64.0, pytest.approx(nbytes / 1.6 / 1e3))


def test_a_baseline_reported_as_failed_is_not_plotted():
    rows = _norm_rows()[:3]
    rows[1] = dict(rows[1], flashinfer_error="disagrees with ours: rel err 1e-01")
    panel = suite_panels({"rows": rows})[0]
    flashinfer = next(s for s in panel.series if s.implementation == "flashinfer")
    assert [x for x, _ in flashinfer.points] == [1.0, 4096.0]
    assert panel.ceiling is None  # no ceilings recorded: no dashed line


def test_attention_panels_split_decode_by_batch_and_keep_prefill_shapes():
    run = {"ceilings": {"copy_gbps": 4000.0, "bf16_tflops": 800.0}, "rows": _attention_rows()}
    panels = {p.title: p for p in suite_panels(run)}
    assert list(panels) == ["decode, Llama-3-8B, batch 1", "decode, Llama-3-8B, batch 8",
                            "prefill, Llama-3-8B"]
    batch1 = panels["decode, Llama-3-8B, batch 1"]
    assert [x for x, _ in batch1.series[0].points] == [1024.0, 4096.0]
    assert [x for x, _ in panels["decode, Llama-3-8B, batch 8"].series[0].points] == [1024.0]
    prefill = panels["prefill, Llama-3-8B"]
    assert prefill.categories == ("1x4k", "extend 2k on 4k")
    assert (prefill.unit, prefill.ceiling) == ("TFLOP/s", 800.0)
    assert prefill.series[0].points == ((0.0, pytest.approx(50.0)), (1.0, pytest.approx(50.0)))
    assert prefill.series[1].implementation == "sdpa"


def test_rows_without_bytes_or_flops_give_no_panels():
    assert suite_panels({"rows": [{"workload": "offline", "us": 3.0}]}) == []


# ---- drawing -------------------------------------------------------------------------------
def _legend_and_dashes(svg: Path) -> tuple[set[str], bool]:
    root = ElementTree.fromstring(svg.read_text())  # well-formed
    texts = {el.text for el in root.iter("{http://www.w3.org/2000/svg}text") if el.text}
    return texts, "stroke-dasharray" in svg.read_text()


def test_plot_step_writes_one_stable_svg_per_gpu_and_suite(tmp_path):
    pytest.importorskip("matplotlib")
    results = _results_tree(tmp_path)
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "h100_gone.svg").write_text("<svg/>")  # a suite no longer recorded
    drawn = plot_results(results, plots)
    assert drawn == {("h100", "attention"): plots / "h100_attention.svg",
                     ("h200", "norm"): plots / "h200_norm.svg"}
    assert sorted(p.name for p in plots.iterdir()) == ["h100_attention.svg", "h200_norm.svg"]

    texts, dashed = _legend_and_dashes(plots / "h200_norm.svg")
    assert {"fuseinfer", "torch eager", "torch.compile", "FlashInfer"} <= texts
    assert "measured copy bandwidth (4000 GB/s)" in texts and dashed
    assert {"rmsnorm, Qwen3-0.6B", "rmsnorm, Llama-3-8B", "GB/s", "tokens"} <= texts
    texts, dashed = _legend_and_dashes(plots / "h100_attention.svg")
    assert {"fuseinfer", "torch SDPA", "TFLOP/s", "extend 2k on 4k"} <= texts and dashed
    assert not any("no_sink" in t for t in texts)

    first = {p.name: p.read_bytes() for p in plots.iterdir()}
    assert all(b"Date" not in data and b"Matplotlib v" not in data for data in first.values())
    assert max(len(data) for data in first.values()) < 30_000
    plot_results(results, plots)
    assert {p.name: p.read_bytes() for p in plots.iterdir()} == first


def test_summary_embeds_the_plots_with_relative_links(tmp_path):
    pytest.importorskip("matplotlib")
    results = _results_tree(tmp_path)
    doc = tmp_path / "docs" / "benchmarks.md"
    doc.parent.mkdir()
    doc.write_text(f"# Benchmarks\n{BEGIN_MARKER}\n{END_MARKER}\n")
    note = update_benchmarks_doc(doc, results, doc.parent / "plots")
    assert note == f"drew 2 plots in {doc.parent / 'plots'}"
    text = doc.read_text()
    assert "![norm on h200](plots/h200_norm.svg)" in text
    assert "![attention on h100](plots/h100_attention.svg)" in text
    assert "runtime on h200" in text and "plots/h200_runtime.svg" not in text
    section = text.split("### norm on h200")[1]
    assert section.index("![norm on h200]") < section.index("| op |")  # plot, then table


def test_summary_without_matplotlib_writes_tables_and_says_plots_were_skipped(
        tmp_path, monkeypatch, capsys):
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)  # `import matplotlib` now fails
    results = _results_tree(tmp_path)
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n{BEGIN_MARKER}\nstale\n{END_MARKER}\n")
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "h200_norm.svg").write_text("<svg/>")  # drawn earlier: kept and still embedded
    assert main(["--results", str(results), "--doc", str(doc), "--plots", str(plots)]) == 0
    out = capsys.readouterr().out.splitlines()
    skipped = [line for line in out if "plots skipped" in line]
    assert len(skipped) == 1 and "pip install 'fuseinfer[plot]'" in skipped[0]
    text = doc.read_text()
    assert "stale" not in text and "| rmsnorm | Qwen3-0.6B |" in text
    assert "![norm on h200](plots/h200_norm.svg)" in text
    assert "plots/h100_attention.svg" not in text
    assert sorted(p.name for p in plots.iterdir()) == ["h200_norm.svg"]
    assert (plots / "h200_norm.svg").read_text() == "<svg/>"
