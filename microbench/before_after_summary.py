"""Summarize microbench/before_after.sh: per metric, the median over rounds of each tree and
the after/before ratio (>= 1 is better for every ratio printed: latencies are inverted).

    python3 microbench/before_after_summary.py OUT/ab [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

# metric -> (file glob pattern for a tag, reader, higher is better)
Metric = tuple[str, str, bool]


def _offline(path: Path) -> float | None:
    m = re.search(r"as configured: ([\d.]+) output tok/s", path.read_text())
    return float(m.group(1)) if m else None


def _latency(path: Path) -> float | None:
    m = re.search(r"as configured: ([\d.]+) ms/token", path.read_text())
    return float(m.group(1)) if m else None


def _serving(key: str):
    def read(path: Path) -> float | None:
        data = json.loads(path.read_text())
        summary = data.get("summary", data)
        return None if summary.get("failed") else summary.get(key)
    return read


METRICS = [
    ("offline output tok/s", "offline_{}.log", _offline, True),
    ("batch-1 decode ms/token", "latency_{}.log", _latency, False),
    ("serving rate-inf total tok/s", "serving_inf_{}.json", _serving("total_tok_per_s"), True),
    ("serving rate-inf ITL p50 ms", "serving_inf_{}.json", _serving("itl_ms_p50"), False),
    ("serving c64 total tok/s", "serving_c64_{}.json", _serving("total_tok_per_s"), True),
    ("serving c64 ITL p50 ms", "serving_c64_{}.json", _serving("itl_ms_p50"), False),
    ("serving c64 ITL p99 ms", "serving_c64_{}.json", _serving("itl_ms_p99"), False),
]


def summarize(folder: Path) -> list[dict]:
    rows = []
    for name, pattern, read, higher in METRICS:
        values: dict[str, list[float]] = {"before": [], "after": []}
        for tree in values:
            for path in sorted(folder.glob(pattern.format(f"{tree}_r*"))):
                v = read(path)
                if v is not None:
                    values[tree].append(v)
        b = statistics.median(values["before"]) if values["before"] else None
        a = statistics.median(values["after"]) if values["after"] else None
        ratio = None
        if a and b:
            ratio = a / b if higher else b / a
        rows.append({"metric": name, "before": values["before"], "after": values["after"],
                     "before_median": b, "after_median": a, "after_over_before": ratio})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = summarize(args.folder)
    print(f"{'metric':32} {'before':>10} {'after':>10} {'after/before':>13}  runs (b | a)")
    for r in rows:
        def f(v):
            return "-" if v is None else f"{v:.3f}"
        runs = (", ".join(f"{v:.2f}" for v in r["before"]) + " | "
                + ", ".join(f"{v:.2f}" for v in r["after"]))
        print(f"{r['metric']:32} {f(r['before_median']):>10} {f(r['after_median']):>10} "
              f"{f(r['after_over_before']):>13}  {runs}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
