"""`fuseinfer bench host`: the runtime's host-side overhead, measured on any machine.

Runs the pytest-benchmark suite in tests/host_bench of this checkout (scheduler, radix
cache, batch building, the server's per-token path) as

    pytest tests/host_bench --benchmark-only --benchmark-json <tmp>

and turns its JSON into rows: one per benchmark (family, name, size, median/mean/stddev
µs, rounds, the median per unit of work and its target), one per family measured at both
64 and 1024 requests with its growth ratio `cost(1024) / cost(64) / 16` (target <= 1.2,
i.e. no worse than linear). Benchmarks tag themselves (tests/host_bench/conftest.py):
`extra_info` group, requests, units, target_us. `--record` appends the run to
microbench/results/host/host.json with the CPU model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...paths import repo_dir
from ..registry import Suite, register_suite
from ..report import Column, column_specs, format_table, make_run, record_run

GROWTH_FROM, GROWTH_TO = 64, 1024
GROWTH_TARGET = 1.2  # cost(1024) / cost(64) / 16: at most 20% worse than linear

COLUMNS = (
    Column("group", "family", align="<"),
    Column("name", "benchmark", align="<"),
    Column("requests", "size"),
    Column("median_us", "median µs", "{:.1f}"),
    Column("mean_us", "mean µs", "{:.1f}"),
    Column("stddev_us", "stddev µs", "{:.1f}"),
    Column("rounds", "rounds"),
    Column("per_unit_us", "per unit µs", "{:.2f}"),
    Column("growth", "growth 64→1024", "{:.2f}"),
    Column("target", "target", "≤ {:g}"),
    Column("met", "met"),
)


def _us(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e6


def benchmark_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per benchmark of a pytest-benchmark JSON report, sorted by family and size;
    `target`/`met` where the benchmark declared target_us (checked on the median per
    unit)."""
    rows = []
    for bench in report.get("benchmarks") or []:
        info = bench.get("extra_info") or {}
        stats = bench["stats"]
        units = max(int(info.get("units") or 1), 1)
        median = _us(stats["median"])
        row: dict[str, Any] = {
            "group": info.get("group") or bench.get("group") or bench["name"],
            "name": bench["name"],
            "requests": info.get("requests"),
            "median_us": median, "mean_us": _us(stats.get("mean")),
            "stddev_us": _us(stats.get("stddev")), "rounds": stats.get("rounds"),
            "per_unit_us": median / units, "units": units,
            "growth": None, "target": None, "met": None,
        }
        if info.get("target_us") is not None:
            row["target"] = float(info["target_us"])
            row["met"] = "yes" if row["per_unit_us"] <= row["target"] else "NO"
        rows.append(row)
    rows.sort(key=lambda r: (r["group"], r["requests"] is None, r["requests"] or 0, r["name"]))
    return rows


def growth_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per family with a benchmark at 64 and at 1024 requests: cost(1024)/cost(64)/16 of
    the per-unit median, against GROWTH_TARGET."""
    out = []
    for group in sorted({r["group"] for r in rows}):
        at = {r["requests"]: r for r in rows if r["group"] == group}
        if GROWTH_FROM not in at or GROWTH_TO not in at:
            continue
        ratio = at[GROWTH_TO]["per_unit_us"] / at[GROWTH_FROM]["per_unit_us"] \
            / (GROWTH_TO / GROWTH_FROM)
        out.append({"group": group, "name": f"growth {GROWTH_FROM} → {GROWTH_TO}",
                    "requests": None, "median_us": None, "mean_us": None, "stddev_us": None,
                    "rounds": None, "per_unit_us": None, "units": None, "growth": ratio,
                    "target": GROWTH_TARGET, "met": "yes" if ratio <= GROWTH_TARGET else "NO"})
    return out


def report_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The recorded rows of a pytest-benchmark JSON report: benchmarks, then growth."""
    rows = benchmark_rows(report)
    return rows + growth_rows(rows)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def host_environment() -> dict[str, Any]:
    from ..environment import collect_environment

    env = collect_environment()
    env.update(cpu=cpu_model(), cores=os.cpu_count(), machine=platform.machine(),
               gpu_key="host")
    return env


def host_bench_dir() -> Path:
    """tests/host_bench of the source checkout; an installed package has no tests."""
    root = repo_dir()
    folder = None if root is None else root / "tests" / "host_bench"
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(
            "fuseinfer bench host runs the benchmarks in tests/host_bench of a source "
            "checkout; this fuseinfer is installed without them. Clone the repository and "
            "run it there (pip install -e '.[test]').")
    return folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-k", dest="select", default=None,
                        help="only the benchmarks whose names match (pytest -k expression)")
    parser.add_argument("--record", action="store_true",
                        help="add the rows to microbench/results/host/host.json")


def run_command(args: argparse.Namespace) -> int:
    try:
        folder = host_bench_dir()
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "host_bench.json"
        cmd = [sys.executable, "-m", "pytest", str(folder), "-q", "-p", "no:cacheprovider",
               "--benchmark-only", f"--benchmark-json={out}"]
        if args.select:
            cmd += ["-k", args.select]
        done = subprocess.run(cmd, cwd=folder.parents[1])
        if done.returncode != 0 or not out.is_file():
            print(f"error: the host benchmarks failed (pytest exit {done.returncode})",
                  file=sys.stderr)
            return done.returncode or 1
        report = json.loads(out.read_text())
    rows = report_rows(report)
    print(format_table(rows, COLUMNS))
    missed = [f"{r['group']} {r['name']}" for r in rows if r["met"] == "NO"]
    print(f"targets: {sum(r['met'] == 'yes' for r in rows)} met, {len(missed)} missed"
          + (f" ({'; '.join(missed)})" if missed else ""))
    if args.record:
        env = host_environment()
        path = folder.parents[1] / "microbench" / "results" / "host" / "host.json"
        record_run(path, make_run("host", env, None, rows, {
            "columns": column_specs(COLUMNS),
            "pytest_benchmark": (report.get("version"), report.get("machine_info", {}).get(
                "cpu", {}).get("brand_raw"))}))
        print(f"recorded in {path}", file=sys.stderr)
    return 0


register_suite(Suite(
    name="host", help="host-side overhead per step on this CPU (scheduler, radix cache, "
    "batch building, server per-token path): pytest-benchmark over tests/host_bench",
    run=run_command, add_arguments=add_arguments, needs_gpu=False, records="host"))
