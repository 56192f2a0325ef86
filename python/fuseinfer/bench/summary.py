"""Generate the benchmark summary in docs/benchmarks.md from recorded results: per recorded
(gpu, suite), the runs of its latest day (newest first, report.latest_day_runs), each with
its provenance and table, the earlier rows not measured again since (report.earlier_rows),
and the suite's plot (docs/plots/<gpu>_<suite>.svg, drawn by
bench/plots.py when matplotlib is installed).

Usage: python -m fuseinfer.bench.summary [--results microbench/results] [--doc docs/benchmarks.md]
                                         [--plots docs/plots]
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fuseinfer.bench.plots import PLOT_INSTALL_HINT, plot_name, plot_results
from fuseinfer.bench.registry import Suite, register_suite
from fuseinfer.bench.report import earlier_rows, latest_day_runs, load_recorded
from fuseinfer.paths import repo_dir

BEGIN_MARKER = "<!-- BEGIN GENERATED RESULTS -->"
END_MARKER = "<!-- END GENERATED RESULTS -->"

_CEILING_LABELS = (
    ("copy_gbps", "copy {} GB/s"),
    ("bf16_tflops", "bf16 {} TFLOP/s"),
    ("fp8_tflops", "fp8 {} TFLOP/s"),
)


def format_number(value: float) -> str:
    """About three significant digits, never scientific notation for usual magnitudes."""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1 or magnitude == 0:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _cell(value: object, fmt: str | None) -> str:
    if value is None:
        text = "-"
    elif fmt:
        text = fmt.format(value)
    elif isinstance(value, float):
        text = format_number(value)
    else:
        text = str(value)
    return text.replace("|", "\\|")  # a bare pipe would split the markdown cell


def _columns(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    declared = run.get("columns")
    if declared:
        return [
            {"key": c["key"], "header": c.get("header", c["key"]), "fmt": c.get("fmt")}
            for c in declared
        ]
    rows = run.get("rows") or []
    return [{"key": key, "header": key, "fmt": None} for key in (rows[0] if rows else {})]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table; numeric columns are right-aligned."""
    header = "| " + " | ".join(str(c["header"]) for c in columns) + " |"
    rules = []
    for c in columns:
        values = [row.get(c["key"]) for row in rows if row.get(c["key"]) is not None]
        numeric = bool(values) and all(_is_number(v) for v in values)
        rules.append("---:" if numeric else "---")
    lines = [header, "| " + " | ".join(rules) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c["key"]), c["fmt"]) for c in columns) + " |")
    return "\n".join(lines)


def _provenance(run: Mapping[str, Any]) -> str:
    env = run.get("environment") or {}
    parts = [
        f"Recorded {env.get('date', 'unknown date')}",
        f"GPU {env.get('gpu') or 'unknown'}",
        f"driver {env.get('driver') or 'unknown'}",
        f"torch {env.get('torch') or 'unknown'}",
    ]
    if env.get("cuda"):
        parts.append(f"CUDA {env['cuda']}")
    if env.get("commit"):  # runs recorded since 2026-12-01 name the code they measured
        parts.append(f"commit {str(env['commit'])[:12]}")
    if run.get("cut_short"):  # stopped by a deadline: the rows it finished
        parts.append(f"cut short {run['cut_short']}")
    ceilings = run.get("ceilings") or {}
    used = [
        label.format(format_number(float(ceilings[key])))
        for key, label in _CEILING_LABELS
        if ceilings.get(key) is not None
    ]
    parts.append("ceilings: " + (", ".join(used) if used else "none"))
    return "; ".join(parts) + "."


def render_summary(results_dir: Path, plots_dir: Path | None = None,
                   doc_dir: Path | None = None) -> str:
    """Markdown for the latest day's runs of every <results_dir>/<gpu>/<suite>.json, then
    the rows of earlier runs not measured again since (report.earlier_rows); a section
    whose plot exists in `plots_dir` embeds it, linked relative to `doc_dir`."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results folder {results_dir} does not exist")
    sections = []
    for gpu_dir in sorted(p for p in results_dir.iterdir() if p.is_dir()):
        for path in sorted(gpu_dir.glob("*.json")):
            recorded = load_recorded(path)
            runs = latest_day_runs(recorded["runs"])
            if not runs:
                continue
            title = f"{recorded['suite']} on {gpu_dir.name}"
            parts = [f"### {title}"]
            plot = Path(plots_dir) / plot_name(gpu_dir.name, recorded["suite"]) \
                if plots_dir is not None else None
            if plot is not None and plot.is_file():
                link = Path(os.path.relpath(plot, doc_dir if doc_dir is not None else "."))
                parts.append(f"![{title}]({link.as_posix()})")
            for i, run in enumerate(runs):
                if len(runs) > 1:
                    parts.append(f"Run {i + 1} of {len(runs)} that day (newest first).")
                parts.append(_provenance(run))
                parts.append(markdown_table(run.get("rows") or [], _columns(run)))
            for run, rows in earlier_rows(recorded["runs"]):
                parts.append("Not measured again since: the newest earlier rows.")
                parts.append(_provenance(run))
                parts.append(markdown_table(rows, _columns(run)))
            sections.append("\n\n".join(parts))
    if not sections:
        return "_No recorded results yet._"
    return "\n\n".join(sections)


def update_benchmarks_doc(doc_path: Path, results_dir: Path, plots_dir: Path | None = None
                          ) -> str:
    """Replace the text between the generated-results markers of `doc_path`; with
    `plots_dir`, first redraw the plots there (bench/plots.py) and embed them. Returns a
    line saying what was done with the plots ("" without `plots_dir`)."""
    doc_path = Path(doc_path)
    lines = doc_path.read_text().splitlines()
    stripped = [line.strip() for line in lines]
    if stripped.count(BEGIN_MARKER) != 1 or stripped.count(END_MARKER) != 1:
        raise ValueError(
            f"{doc_path}: needs exactly one '{BEGIN_MARKER}' line and one '{END_MARKER}' line"
        )
    begin, end = stripped.index(BEGIN_MARKER), stripped.index(END_MARKER)
    if begin > end:
        raise ValueError(f"{doc_path}: '{END_MARKER}' comes before '{BEGIN_MARKER}'")
    note = ""
    if plots_dir is not None:
        drawn = plot_results(results_dir, plots_dir)
        if drawn is None:
            # Plots already in plots_dir stay embedded: the tables alone are regenerated.
            note = (f"plots skipped: matplotlib is not installed ({PLOT_INSTALL_HINT}); "
                    f"the tables are updated, {plots_dir} is left as it is")
        else:
            note = f"drew {len(drawn)} plots in {plots_dir}"
    summary = render_summary(results_dir, plots_dir, doc_path.parent)
    generated = ["", *summary.splitlines(), ""]
    doc_path.write_text("\n".join(lines[: begin + 1] + generated + lines[end:]) + "\n")
    return note


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fuseinfer.bench.summary",
        description="Regenerate the results section and the plots of the benchmark page.",
    )
    parser.add_argument("--results", type=Path, default=Path("microbench/results"))
    parser.add_argument("--doc", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--plots", type=Path, default=Path("docs/plots"),
                        help="folder of the generated SVG plots (default: docs/plots)")
    args = parser.parse_args(argv)
    note = update_benchmarks_doc(args.doc, args.results, args.plots)
    print(f"updated {args.doc} from {args.results}")
    if note:
        print(note)
    return 0


# ---- the command: `fuseinfer bench summary` ---------------------------------------------
def run_command(args: argparse.Namespace) -> int:
    root = repo_dir() or Path.cwd()
    doc = root / "docs" / "benchmarks.md"
    note = update_benchmarks_doc(doc, root / "microbench" / "results", root / "docs" / "plots")
    print(f"updated {doc}")
    if note:
        print(note)
    return 0


register_suite(Suite(name="summary", help="regenerate docs/benchmarks.md and docs/plots "
                     "from microbench/results", run=run_command, needs_gpu=False))


if __name__ == "__main__":
    raise SystemExit(main())
