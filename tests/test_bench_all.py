"""`fuseinfer bench all`: without a GPU one line and a CPU demonstration (exit 0); the
summary table from suite rows (best baseline, rows with none, baselines reported as not
timed); every GPU kernel suite declares a quick shape set its own parser takes; the run
over stand-in suites (no GPU timing): progress per suite, one table, --json, nothing
recorded, a failing suite reported and the others still run."""

from __future__ import annotations

import argparse
import json

import pytest

from fuseinfer.bench import cli as bench_cli
from fuseinfer.bench import report
from fuseinfer.bench.registry import Suite, kernel_suites, registered_suites
from fuseinfer.bench.suites import all as bench_all
from fuseinfer.bench.suites.all import SuiteResult, best_baseline, summary_table
from fuseinfer.cli import main


def test_without_a_gpu_one_line_then_tokens_from_the_tiny_model(monkeypatch, capsys,
                                                                 isolated_cache):
    monkeypatch.setattr(bench_cli, "has_cuda_gpu", lambda: False)
    assert main(["bench", "all", "--quick"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("fuseinfer bench all: no CUDA GPU found")
    assert sum("no CUDA GPU" in line for line in out.splitlines() + err.splitlines()) == 1
    tokens = next(line for line in lines if line.startswith("tokens: "))
    ids = json.loads(tokens.removeprefix("tokens: "))
    assert len(ids) == bench_all.DEMO_TOKENS and all(isinstance(i, int) for i in ids)


# ---- the summary table on synthetic rows --------------------------------------------------
def _norm_row(**extra: object) -> dict[str, object]:
    return {"op": "rmsnorm", "model": "Llama-3-8B", "hidden": 4096, "tokens": 128,
            "us": 2.0, "pct_copy": 80.0, **extra}


def test_the_best_baseline_is_the_fastest_one_timed():
    row = _norm_row(eager_us=8.0, vs_eager=4.0, compile_us=2.4, vs_compile=1.2,
                    flashinfer_us=1.8, vs_flashinfer=0.9)
    assert best_baseline(row, ["eager", "compile", "flashinfer"]) == ("flashinfer", 0.9, [])
    (line,) = summary_table([SuiteResult("norm", [], ["eager", "compile", "flashinfer"],
                                         [row])])
    assert line == {"suite": "norm", "op": "rmsnorm", "shape": "Llama-3-8B tokens=128",
                    "us": 2.0, "pct_ceiling": 80.0, "best": "flashinfer", "vs_best": 0.9,
                    "note": None}


def test_a_row_with_no_baseline_keeps_our_time_and_has_no_ratio():
    (line,) = summary_table([SuiteResult("norm", [], ["eager"],
                                         [_norm_row(op="gemma_rmsnorm")])])
    assert line["us"] == 2.0 and line["pct_ceiling"] == 80.0
    assert line["best"] is None and line["vs_best"] is None


def test_a_baseline_reported_as_disagreeing_is_never_the_best():
    untimed = _norm_row(compile_us=2.4, vs_compile=1.2,
                        flashinfer_error="disagrees with ours: rel err 3.1e-01")
    # even where a ratio was left in the row beside the report
    with_ratio = {**untimed, "flashinfer_us": 1.0, "vs_flashinfer": 0.5}
    for row in (untimed, with_ratio):
        assert best_baseline(row, ["compile", "flashinfer"]) == ("compile", 1.2,
                                                                 ["flashinfer"])
    (line,) = summary_table([SuiteResult("norm", [], ["compile", "flashinfer"],
                                         [with_ratio])])
    assert line["best"] == "compile" and line["note"] == "flashinfer not timed"
    only = _norm_row(flashinfer_error="disagrees")
    assert best_baseline(only, ["flashinfer"]) == (None, None, ["flashinfer"])


def test_only_the_suites_baselines_count_and_other_ceilings_and_skips_show():
    # rope's `separate` is our own two-launch path, not a baseline
    rope = {"op": "rope+kv", "model": "Llama-3-8B", "tokens": 1, "us": 3.0,
            "pct_copy": None, "separate_us": 1.5, "vs_separate": 0.5,
            "eager_us": 6.0, "vs_eager": 2.0}
    attention = [{"kind": "decode", "model": "Llama-3-8B", "shape": "64x4096", "us": 100.0,
                  "pct_ceiling": 75.0, "sdpa_us": 150.0, "vs_sdpa": 1.5,
                  "flex_error": "RuntimeError: no"},
                 {"kind": "decode", "model": "Llama-3-8B", "shape": "256x65536",
                  "note": "skipped: 32 GiB of KV exceeds the budget"}]
    table = summary_table([SuiteResult("rope", [], ["eager", "compile"], [rope]),
                           SuiteResult("attention", [], ["sdpa", "flex"], attention)])
    assert [(t["best"], t["vs_best"]) for t in table] == [("eager", 2.0), ("sdpa", 1.5),
                                                         (None, None)]
    assert table[0]["pct_ceiling"] is None and table[1]["pct_ceiling"] == 75.0
    assert table[1]["op"] == "decode" and table[1]["shape"] == "Llama-3-8B 64x4096"
    assert table[1]["note"] == "flex not timed"
    assert table[2]["us"] is None and table[2]["note"].startswith("skipped")
    # a suite without --baselines: every ratio with a baseline time counts
    assert best_baseline(rope, None)[:2] == ("separate", 0.5)


def test_suite_lines_give_the_geomean_and_the_rows_behind():
    rows = [_norm_row(eager_us=4.0, vs_eager=2.0), _norm_row(eager_us=1.0, vs_eager=0.5),
            _norm_row()]
    lines = bench_all.suite_lines([SuiteResult("norm", [], ["eager"], rows, seconds=12.0),
                                   SuiteResult("rope", [], None, [], 3.0, "SystemExit: 2")])
    assert lines == ["norm: 3 rows in 12 s; x best geomean 1.00, behind (< 1.0) in 1/2; "
                     "baselines timed: eager",
                     "rope: FAILED after 3 s: SystemExit: 2"]


# ---- the registry hook --------------------------------------------------------------------
def test_every_gpu_kernel_suite_declares_a_quick_shape_set_its_parser_takes():
    suites = kernel_suites()
    names = [s.name for s in suites]
    assert {"norm", "rope", "attention"} <= set(names)
    assert "ceilings" not in names and "all" not in names
    # every GPU suite is a kernel suite but the ceilings (which time no op)
    assert {s.name for s in registered_suites() if s.needs_gpu} - set(names) == {"ceilings"}
    for suite in suites:
        assert suite.quick_args, f"{suite.name} declares no quick_args for bench all --quick"
        parser = argparse.ArgumentParser()
        suite.add_arguments(parser)
        args = parser.parse_args([*suite.quick_args, "--json", "x.json"])
        assert not args.record  # bench all records nothing


# ---- the run, over stand-in suites --------------------------------------------------------
def _stand_in(name: str, rows: list[dict[str, object]] | None, calls: list[list[str]]
              ) -> Suite:
    """A kernel suite that 'times' nothing: it writes `rows` to its --json (None: fails)."""
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--tokens", nargs="+")
        parser.add_argument("--baselines", nargs="*", default=["eager", "flashinfer"])
        parser.add_argument("--json")
        parser.add_argument("--record", action="store_true")

    def run(args: argparse.Namespace) -> int:
        calls.append([name, *(args.tokens or []), *(["--record"] if args.record else [])])
        if rows is None:
            raise RuntimeError("CUDA error: out of memory")
        print("the suite's own table")
        report.write_run_json(args.json, name, {}, None, rows)
        return 0

    return Suite(name=name, help="stand-in", run=run, add_arguments=add_arguments,
                 records=name, quick_args=("--tokens", "1", "128"))


@pytest.fixture
def stand_ins(monkeypatch):
    calls: list[list[str]] = []
    good = [_norm_row(eager_us=4.0, vs_eager=2.0)]
    suites = [_stand_in("fake-norm", good, calls), _stand_in("fake-attn", None, calls)]
    monkeypatch.setattr(bench_cli, "has_cuda_gpu", lambda: True)
    monkeypatch.setattr(bench_all, "kernel_suites", lambda: suites)
    monkeypatch.setattr(bench_all, "ensure_ceilings", lambda: {"copy_gbps": 4000.0})
    monkeypatch.setattr(report, "bench_environment", lambda: {"gpu": "stand-in"})
    return calls


def test_bench_all_runs_every_suite_into_one_table(stand_ins, capsys, tmp_path):
    out_json = tmp_path / "all.json"
    assert main(["bench", "all", "--quick", "--json", str(out_json)]) == 1  # one failed
    out, err = capsys.readouterr()
    assert stand_ins == [["fake-norm", "1", "128"], ["fake-attn", "1", "128"]]  # no --record
    assert "[1/2] bench all: fake-norm --tokens 1 128" in err
    assert "[2/2] bench all: fake-attn --tokens 1 128" in err
    assert "the suite's own table" not in out
    header, rule, row = out.splitlines()[:3]
    assert header.split()[:3] == ["suite", "op", "shape"]
    assert row.split()[:2] == ["fake-norm", "rmsnorm"] and "2.00" in row.split()
    assert "fake-attn: FAILED" in out and "RuntimeError: CUDA error: out of memory" in out
    data = json.loads(out_json.read_text())
    assert data["suite"] == "all" and data["quick"] is True
    assert data["ceilings"] == {"copy_gbps": 4000.0}
    assert [r["best"] for r in data["rows"]] == ["eager"]
    assert [s["name"] for s in data["suites"]] == ["fake-norm", "fake-attn"]
    assert data["suites"][0]["rows"][0]["vs_eager"] == 2.0


def test_bench_all_picks_suites_when_asked(stand_ins, capsys):
    assert main(["bench", "all", "--suites", "fake-norm"]) == 0
    assert stand_ins == [["fake-norm"]]  # no --quick: the suite's full set
    with pytest.raises(SystemExit, match="unknown suite"):
        main(["bench", "all", "--suites", "nope"])


def test_missing_ceilings_are_measured_before_the_suites(monkeypatch):
    from fuseinfer.bench import ceilings

    cached = ceilings.Ceilings(4000.0, None, None, "gpu", "driver", "torch", "date")
    asked: list[list[str]] = []

    def measure(which: list[str]) -> ceilings.Ceilings:
        asked.append(list(which))
        return ceilings.Ceilings(4000.0, 700.0, None, "gpu", "driver", "torch", "date")

    monkeypatch.setattr(ceilings, "load_ceilings", lambda: cached)
    monkeypatch.setattr(ceilings, "measure_ceilings", measure)
    assert bench_all.ensure_ceilings()["bf16_tflops"] == 700.0 and asked == [["bf16"]]
    full = ceilings.Ceilings(4000.0, 700.0, None, "gpu", "driver", "torch", "date")
    monkeypatch.setattr(ceilings, "load_ceilings", lambda: full)
    asked.clear()
    assert bench_all.ensure_ceilings()["copy_gbps"] == 4000.0 and asked == []  # fp8 unused
