"""CPU tests of the microbenchmark harness: everything but the CUDA timing itself."""

from __future__ import annotations

import io
import json
import random
import statistics

import pytest

from fuseinfer.bench import ceilings as ceilings_mod
from fuseinfer.bench.environment import collect_environment
from fuseinfer.bench.progress import Progress
from fuseinfer.bench.report import Column, format_table, record_run, write_run_json
from fuseinfer.bench.summary import (
    BEGIN_MARKER,
    END_MARKER,
    render_summary,
    update_benchmarks_doc,
)
from fuseinfer.bench.timing import (
    TimingConfig,
    calls_per_replay,
    l2_cache_bytes,
    rotation_count,
    summarize,
    time_eager_cpu,
)

MIB = 2**20


def test_rotation_count_large_set_needs_one():
    assert rotation_count(2**30, 50 * MIB) == 1


@pytest.mark.parametrize("set_bytes", [1, 4096, 3 * MIB, 10 * MIB, 33 * MIB, 100 * MIB, 101 * MIB])
def test_rotation_count_exceeds_twice_l2_with_fewest_sets(set_bytes):
    l2 = 50 * MIB
    n = rotation_count(set_bytes, l2, max_sets=10**9)
    assert n * set_bytes > 2 * l2
    assert n == 1 or (n - 1) * set_bytes <= 2 * l2


def test_rotation_count_bounds():
    assert rotation_count(1, 50 * MIB, max_sets=64) == 64
    assert rotation_count(1, 50 * MIB, max_sets=5) == 5
    assert rotation_count(10**12, 0) == 1
    with pytest.raises(ValueError):
        rotation_count(0, 50 * MIB)
    with pytest.raises(ValueError):
        rotation_count(1024, 50 * MIB, max_sets=0)


@pytest.mark.parametrize("n_sets", [1, 3, 7, 64])
@pytest.mark.parametrize("estimate_ms", [1e-4, 0.002, 0.05, 1.0, 50.0])
def test_calls_per_replay_whole_rotations_within_bounds(n_sets, estimate_ms):
    config = TimingConfig(target_graph_ms=3.0, max_calls_per_graph=2000)
    n = calls_per_replay(estimate_ms, n_sets, config)
    assert n % n_sets == 0
    assert n_sets <= n <= max(config.max_calls_per_graph, n_sets)
    if n < config.max_calls_per_graph - n_sets and n > n_sets:
        # Not clamped: one replay holds about the target amount of work.
        assert n * estimate_ms >= config.target_graph_ms
        assert (n - n_sets) * estimate_ms < config.target_graph_ms


def test_summarize_matches_reference_percentiles():
    np = pytest.importorskip("numpy")
    values = [random.uniform(1.0, 100.0) for _ in range(random.randint(5, 40))]
    result = summarize(values, calls_per_replay=8, method="cuda_graph")
    assert result.median_us == pytest.approx(statistics.median(values))
    assert result.min_us == min(values)
    assert result.p20_us == pytest.approx(float(np.percentile(values, 20)))
    assert result.p80_us == pytest.approx(float(np.percentile(values, 80)))
    assert result.min_us <= result.p20_us <= result.median_us <= result.p80_us
    assert (result.repeats, result.calls_per_replay) == (len(values), 8)


def test_time_eager_cpu_positive():
    result = time_eager_cpu(lambda: sum(range(2000)), repeats=5)
    assert result.method == "cpu"
    assert result.repeats == 5
    assert 0 < result.min_us <= result.p20_us <= result.median_us <= result.p80_us


def test_collect_environment_without_gpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("machine has a GPU")
    env = collect_environment()
    assert env["gpu"] is None and env["gpu_key"] is None and env["sm_count"] is None
    assert env["torch"] == torch.__version__
    assert isinstance(env["driver"], str) and env["driver"]
    assert "hostname" not in env
    assert str(env["date"]).endswith("+00:00")
    json.dumps(env)  # must be recordable as is
    assert l2_cache_bytes() == 50 * MIB  # fallback without a device


def test_format_table_alignment_and_none():
    columns = [
        Column("name", "shape", align="<"),
        Column("us", "time_us", fmt="{:.2f}"),
        Column("pct", "%", fmt="{:.0f}%", align="^"),
    ]
    rows = [{"name": "8x4096", "us": 3.14159, "pct": 91.4}, {"name": "a-much-longer-name"}]
    lines = format_table(rows, columns).splitlines()
    assert len(lines) == 4
    name_w = len("a-much-longer-name")
    time_w = len("time_us")
    assert lines[0].startswith("shape".ljust(name_w) + "  " + "time_us")
    assert lines[1].split() == ["-" * name_w, "-" * time_w, "-" * 3]
    assert lines[2] == "8x4096".ljust(name_w) + "  " + "3.14".rjust(time_w) + "  " + "91%"
    # None and missing keys print "-", still aligned to the column.
    assert lines[3] == "a-much-longer-name  " + "-".rjust(time_w) + "   -"
    with pytest.raises(ValueError):
        format_table([], [Column("a", "A", align="x")])


def test_write_run_json_and_record_run(tmp_path):
    env = {"gpu": "NVIDIA H100 80GB HBM3", "driver": "550.1", "torch": "2.11.0"}
    rows = [{"shape": "1x4096", "median_us": 2.5}]
    out = tmp_path / "deep" / "run.json"
    write_run_json(out, "norm", env, {"copy_gbps": 3000.0}, rows, extra={"note": "x"})
    run = json.loads(out.read_text())
    assert run == {
        "suite": "norm",
        "environment": env,
        "ceilings": {"copy_gbps": 3000.0},
        "rows": rows,
        "note": "x",
    }
    assert list(run) == ["suite", "environment", "ceilings", "rows", "note"]
    with pytest.raises(ValueError):
        write_run_json(out, "norm", env, None, rows, extra={"rows": []})

    results = tmp_path / "results" / "h100" / "norm.json"
    record_run(results, run)
    second = dict(run, note="y")
    record_run(results, second)
    recorded = json.loads(results.read_text())
    assert recorded["suite"] == "norm"
    assert [r["note"] for r in recorded["runs"]] == ["x", "y"]


@pytest.mark.parametrize(
    "content", ["[1, 2]", '{"suite": "norm"}', '{"suite": "norm", "runs": {}}', "not json"]
)
def test_record_run_rejects_bad_structure(tmp_path, content):
    path = tmp_path / "norm.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="norm.json"):
        record_run(path, {"suite": "norm", "rows": []})
    assert path.read_text() == content  # left untouched


def test_record_run_rejects_other_suite(tmp_path):
    path = tmp_path / "norm.json"
    record_run(path, {"suite": "norm", "rows": []})
    with pytest.raises(ValueError, match="rope"):
        record_run(path, {"suite": "rope", "rows": []})


def test_progress_non_tty_one_line_per_step(monkeypatch):
    monkeypatch.delenv("FUSEINFER_QUIET", raising=False)
    stream = io.StringIO()
    with Progress(3, "norm", stream=stream) as progress:
        progress.step("llama3-8b decode")
        progress.step("llama3-8b prefill")
    assert stream.getvalue() == ("[1/3] norm: llama3-8b decode\n[2/3] norm: llama3-8b prefill\n")


def test_progress_tty_rewrites_line(monkeypatch):
    monkeypatch.delenv("FUSEINFER_QUIET", raising=False)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    with Progress(2, "rope", stream=stream) as progress:
        progress.step("a long message")
        progress.step("short")
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    last = text.rsplit("\r", 1)[1]
    assert last.rstrip() == "[2/2] rope: short"
    assert len(last) - 1 >= len("[1/2] rope: a long message")  # old text covered


def test_progress_quiet(monkeypatch):
    monkeypatch.setenv("FUSEINFER_QUIET", "1")
    stream = io.StringIO()
    with Progress(1, "norm", stream=stream) as progress:
        progress.step("x")
    assert stream.getvalue() == ""


def _results_tree(tmp_path):
    results = tmp_path / "results"
    env = {"date": "2026-01-02T03:04:05+00:00", "gpu": "NVIDIA H100 80GB HBM3"}
    old = {"suite": "norm", "environment": dict(env, driver="1.0", torch="2.10"), "rows": []}
    new = {
        "suite": "norm",
        "environment": dict(env, driver="550.54", torch="2.11.0"),
        "ceilings": {"copy_gbps": 2987.4, "bf16_tflops": None},
        "rows": [{"shape": "1|4096", "median_us": 3.14159, "gbps": 1234.5, "speedup": None}],
        "columns": [
            {"key": "shape", "header": "shape"},
            {"key": "median_us", "header": "µs", "fmt": "{:.1f}"},
            {"key": "speedup", "header": "vs eager"},
        ],
    }
    record_run(results / "h100" / "norm.json", old)
    record_run(results / "h100" / "norm.json", new)
    record_run(
        results / "h200" / "rope.json",
        {"suite": "rope", "environment": env, "rows": [{"tokens": 8, "median_us": 0.01234}]},
    )
    return results


def test_render_summary(tmp_path):
    text = render_summary(_results_tree(tmp_path))
    assert text.index("### norm on h100") < text.index("### rope on h200")
    norm = text.split("### rope on h200")[0]
    assert "driver 550.54" in norm and "torch 2.11.0" in norm and "driver 1.0" not in norm
    assert "copy 2987 GB/s" in norm and "bf16" not in norm
    assert "| shape | µs | vs eager |" in norm
    assert "| 1\\|4096 | 3.1 | - |" in norm
    assert "gbps" not in norm  # declared columns only
    rope = text.split("### rope on h200")[1]
    assert "| tokens | median_us |" in rope  # keys of the first row
    assert "| 8 | 0.0123 |" in rope
    assert "ceilings: none" in rope


def test_update_benchmarks_doc(tmp_path):
    results = _results_tree(tmp_path)
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nintro\n{BEGIN_MARKER}\nstale\n{END_MARKER}\n\nafter\n")
    update_benchmarks_doc(doc, results)
    text = doc.read_text()
    assert "stale" not in text
    assert text.startswith("# Benchmarks\n\nintro\n" + BEGIN_MARKER + "\n")
    assert text.endswith(END_MARKER + "\n\nafter\n")
    inner = text.split(BEGIN_MARKER)[1].split(END_MARKER)[0]
    assert inner.strip() == render_summary(results).strip()
    update_benchmarks_doc(doc, results)
    assert doc.read_text() == text  # regenerating is stable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["benchmarks.md", "results"]


@pytest.mark.parametrize(
    "content", ["no markers\n", f"{BEGIN_MARKER}\nonly begin\n", f"{END_MARKER}\n{BEGIN_MARKER}\n"]
)
def test_update_benchmarks_doc_needs_markers(tmp_path, content):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(content)
    with pytest.raises(ValueError, match="GENERATED RESULTS"):
        update_benchmarks_doc(doc, _results_tree(tmp_path))
    assert doc.read_text() == content


def test_ceilings_cache_roundtrip(tmp_path, monkeypatch):
    identity = {"gpu": "NVIDIA H100 80GB HBM3", "driver": "550.54", "torch": "2.11.0"}
    monkeypatch.setenv("FUSEINFER_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(ceilings_mod, "_present_identity", lambda: dict(identity))
    measured = []
    copy_rate = random.uniform(1000, 4000)
    monkeypatch.setattr(
        ceilings_mod, "measure_copy_bandwidth", lambda: measured.append("copy") or copy_rate
    )
    monkeypatch.setattr(
        ceilings_mod, "measure_matmul_tflops", lambda dtype: measured.append(dtype) or 700.0
    )

    assert ceilings_mod.load_ceilings() is None
    assert ceilings_mod.copy_bandwidth_gbps() == copy_rate
    assert ceilings_mod.copy_bandwidth_gbps() == copy_rate  # second time from the cache
    assert measured == ["copy"]
    path = ceilings_mod.ceilings_path()
    assert path == tmp_path / "ceilings" / "nvidia-h100-80gb-hbm3.json"

    merged = ceilings_mod.measure_ceilings(("bf16",))
    assert (merged.copy_gbps, merged.bf16_tflops, merged.fp8_tflops) == (copy_rate, 700.0, None)
    assert json.loads(path.read_text())["bf16_tflops"] == 700.0

    identity["driver"] = "560.00"  # new driver: the cache no longer applies
    assert ceilings_mod.load_ceilings() is None
    with pytest.raises(ValueError):
        ceilings_mod.measure_ceilings(("int4",))


def test_summary_shows_every_run_of_the_latest_day(tmp_path):
    """A partial re-run does not hide the full run recorded before it that day; of earlier
    days only the rows not measured again since show, the newest of each, after the latest
    day's runs; runs without rows stay out."""
    path = tmp_path / "results" / "h200" / "moe.json"
    day = {"gpu": "NVIDIA H200", "driver": "580", "torch": "2.11"}
    runs = [("2026-11-29T10:00:00+00:00", ("oldest", "old", "full"), 2.0),
            ("2026-11-30T10:00:00+00:00", ("old", "full"), 3.0),
            ("2026-12-01T09:00:00+00:00", ("full",), 4.0),
            ("2026-12-01T10:00:00+00:00", (), None),
            ("2026-12-01T11:00:00+00:00", ("partial",), 5.0)]
    for date, names, us in runs:
        rows = [{"case": name, "us": us} for name in names]
        record_run(path, {"suite": "moe", "environment": dict(day, date=date), "rows": rows})
    text = render_summary(tmp_path / "results")
    assert "| partial | 5.00 |" in text and "| full | 4.00 |" in text
    assert text.index("| partial |") < text.index("| full |")  # newest first
    assert "Run 1 of 2 that day" in text and "Run 2 of 2" in text
    assert "| old | 3.00 |" in text and "| oldest | 2.00 |" in text
    assert "| full | 3.00 |" not in text and "| old | 2.00 |" not in text
    assert text.index("| full | 4.00 |") < text.index("| old | 3.00 |") \
        < text.index("| oldest | 2.00 |")
    assert text.count("Not measured again since") == 2
    assert "Recorded 2026-11-30T10:00:00+00:00" in text and "commit" not in text
    record_run(path, {"suite": "moe", "rows": [{"case": "x", "us": 1.0}],
                      "environment": dict(day, date="2026-12-02T00:00:00+00:00",
                                          commit="0123456789abcdef-dirty")})
    assert "commit 0123456789ab;" in render_summary(tmp_path / "results")
    assert "cut short" not in render_summary(tmp_path / "results")
    record_run(path, {"suite": "moe", "rows": [{"case": "y", "us": 1.5}],
                      "cut_short": "after 1 of 3 cases (signal SIGTERM)",
                      "environment": dict(day, date="2026-12-02T01:00:00+00:00")})
    assert "cut short after 1 of 3 cases (signal SIGTERM);" in \
        render_summary(tmp_path / "results")
