"""`fuseinfer bench host`: a pytest-benchmark JSON report turned into recorded rows
(per benchmark, growth ratios 64 → 1024, targets met or missed), without running it."""

from __future__ import annotations

import argparse

import pytest

from fuseinfer.bench.suites import host


def _bench(name, group, median_s, requests=None, units=1, target_us=None):
    info = {"group": group, "units": units}
    if requests is not None:
        info["requests"] = requests
    if target_us is not None:
        info["target_us"] = target_us
    return {"name": name, "group": group, "extra_info": info,
            "stats": {"median": median_s, "mean": median_s * 1.1, "stddev": median_s / 10,
                      "rounds": 100}}


REPORT = {"version": "5.2.3", "benchmarks": [
    _bench("test_step[1024]", "step.decode", 1.6e-3, 1024, target_us=1500.0),
    _bench("test_step[64]", "step.decode", 90e-6, 64),
    _bench("test_step[256]", "step.decode", 350e-6, 256, target_us=400.0),
    _bench("test_per_token", "server.per_token", 80e-6, units=16, target_us=10.0),
    _bench("test_linear[64]", "radix.evict", 10e-6, 64),
    _bench("test_linear[1024]", "radix.evict", 170e-6, 1024),
    _bench("test_untagged", None, 1e-6),
]}


def test_rows_per_benchmark_sorted_by_family_and_size():
    rows = host.benchmark_rows(REPORT)
    assert [(r["group"], r["requests"]) for r in rows] == [
        ("radix.evict", 64), ("radix.evict", 1024), ("server.per_token", None),
        ("step.decode", 64), ("step.decode", 256), ("step.decode", 1024),
        ("test_untagged", None)]
    step = rows[4]
    assert step["median_us"] == pytest.approx(350.0) and step["rounds"] == 100
    assert step["mean_us"] == pytest.approx(385.0) and step["stddev_us"] == pytest.approx(35.0)
    assert step["target"] == 400.0 and step["met"] == "yes"
    assert rows[5]["met"] == "NO"  # 1600 µs > 1500 µs
    per_token = rows[2]
    assert per_token["per_unit_us"] == pytest.approx(5.0) and per_token["met"] == "yes"
    assert rows[3]["target"] is None and rows[3]["met"] is None


def test_growth_ratio_per_family_with_both_sizes():
    rows = host.report_rows(REPORT)
    growth = [r for r in rows if r["growth"] is not None]
    assert [r["group"] for r in growth] == ["radix.evict", "step.decode"]
    evict, step = growth
    assert evict["growth"] == pytest.approx(170 / 10 / 16) and evict["met"] == "yes"
    assert step["growth"] == pytest.approx(1600 / 90 / 16) and step["met"] == "yes"
    assert step["target"] == host.GROWTH_TARGET and step["median_us"] is None
    worse = host.growth_rows(host.benchmark_rows({"benchmarks": [
        _bench("a", "g", 1e-5, 64), _bench("b", "g", 2e-4, 1024)]}))
    assert worse[0]["growth"] == pytest.approx(1.25) and worse[0]["met"] == "NO"


def test_table_renders_every_row():
    rows = host.report_rows(REPORT)
    table = host.format_table(rows, host.COLUMNS)
    assert "growth 64 → 1024" in table and "≤ 1.2" in table and "NO" in table
    assert len(table.splitlines()) == 2 + len(rows)


def test_environment_names_the_cpu():
    env = host.host_environment()
    assert env["cpu"] and env["cores"] >= 1 and env["gpu_key"] == "host"


def test_without_the_tests_folder_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(host, "repo_dir", lambda: None)
    args = argparse.Namespace(select=None, record=False)
    assert host.run_command(args) == 2
    assert "tests/host_bench of a source checkout" in capsys.readouterr().err
