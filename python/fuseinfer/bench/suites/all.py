"""`fuseinfer bench all [--quick]`: every GPU kernel suite of the registry (norm, rope,
attention, ...; a new family's suite joins by registering) in one run, and one summary
table: per op and shape, our time, % of the device ceiling and the ratio against the
fastest baseline timed in that row (> 1: we are faster).

Each suite runs through its own command with its own timing (bench/timing.py), at its
declared quick shape set with --quick (Suite.quick_args), else at its full default set;
its rows come back through its --json file. Nothing is recorded (a quick run is no record;
`fuseinfer bench <suite> --record` records one suite's full set).
Without a CUDA GPU it says so in one line and runs a short CPU demonstration instead (the
bundled tiny model generating through fuseinfer.LLM), exiting 0: the README's main-job
command never fails on a laptop.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..progress import Progress
from ..registry import Suite, kernel_suites, register_suite
from ..report import Column, positive_number, timed_baselines

COLUMNS = [
    Column("suite", "suite", align="<"),
    Column("op", "op", align="<"),
    Column("shape", "shape", align="<"),
    Column("us", "us", "{:.2f}"),
    Column("pct_ceiling", "% ceiling", "{:.1f}"),
    Column("best", "best baseline", align="<"),
    Column("vs_best", "x best", "{:.2f}"),
    Column("note", "note", align="<"),
]
DEMO_PROMPT = "The fastest kernel is"
DEMO_TOKENS = 8


@dataclass
class SuiteResult:
    """One suite's part of the run: the options it ran with, the baselines it was asked to
    time (its --baselines), its rows, how long it took and why it failed, if it did."""

    name: str
    args: list[str]
    baselines: list[str] | None = None  # None: every `vs_<name>` with a `<name>_us` counts
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


# ---- the summary table (pure: suite rows in, table rows out) ----------------------------
def _baselines_of(row: Mapping[str, Any], asked: Sequence[str] | None) -> list[str]:
    if asked is not None:
        return list(asked)
    return timed_baselines(row)


def best_baseline(row: Mapping[str, Any], baselines: Sequence[str] | None
                  ) -> tuple[str | None, float | None, list[str]]:
    """(name, ratio, not timed) for one suite row: the fastest baseline with a ratio
    (`vs_<name>` = its time over ours, so the smallest ratio), and the baselines the row
    reports as not timed (`<name>_error`: disagreed with our output or could not run the
    shape). A reported baseline is never the best, whatever ratio the row holds."""
    best: tuple[str | None, float | None] = (None, None)
    not_timed = []
    for name in _baselines_of(row, baselines):
        if f"{name}_error" in row:
            not_timed.append(name)
            continue
        ratio = positive_number(row.get(f"vs_{name}"))
        if ratio is not None and (best[1] is None or ratio < best[1]):
            best = (name, ratio)
    return best[0], best[1], not_timed


def _shape(row: Mapping[str, Any]) -> str:
    parts = [str(row["model"])] if row.get("model") else []
    if not parts and "hidden" in row:
        parts.append(f"hidden={row['hidden']}")
    if "tokens" in row:
        parts.append(f"tokens={row['tokens']}")
    if row.get("shape"):
        parts.append(str(row["shape"]))
    return " ".join(parts)


def _pct(row: Mapping[str, Any]) -> float | None:
    # Each suite names its ceiling: pct_copy (bandwidth), pct_ceiling (bandwidth or matmul).
    return next((positive_number(v) for k, v in row.items() if k.startswith("pct_")), None)


def summary_table(results: Sequence[SuiteResult]) -> list[dict[str, Any]]:
    """One table row per suite row: suite, op, shape, our µs, % of ceiling, the best
    baseline and our ratio against it, and a note (baselines not timed, the row's note)."""
    table = []
    for result in results:
        for row in result.rows:
            best, ratio, not_timed = best_baseline(row, result.baselines)
            notes = [f"{name} not timed" for name in not_timed]
            if row.get("note"):
                notes.append(str(row["note"]))
            table.append({"suite": result.name, "op": row.get("op") or row.get("kind"),
                          "shape": _shape(row), "us": positive_number(row.get("us")),
                          "pct_ceiling": _pct(row), "best": best, "vs_best": ratio,
                          "note": "; ".join(notes) or None})
    return table


def suite_lines(results: Sequence[SuiteResult]) -> list[str]:
    """Per suite: rows, seconds, the geometric mean of `x best` with how many rows are
    behind (< 1.0) and the baselines that were timed (one not installed is absent); or why
    it failed."""
    lines = []
    for r in results:
        if r.error:
            lines.append(f"{r.name}: FAILED after {r.seconds:.0f} s: {r.error}")
            continue
        ratios = [t["vs_best"] for t in summary_table([r]) if t["vs_best"] is not None]
        line = f"{r.name}: {len(r.rows)} rows in {r.seconds:.0f} s"
        if ratios:
            geomean = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
            behind = sum(x < 1.0 for x in ratios)
            line += f"; x best geomean {geomean:.2f}, behind (< 1.0) in {behind}/{len(ratios)}"
        names = dict.fromkeys(n for row in r.rows for n in _baselines_of(row, r.baselines))
        timed = [n for n in names if any(positive_number(row.get(f"vs_{n}")) for row in r.rows)]
        line += f"; baselines timed: {', '.join(timed) or 'none'}"
        lines.append(line)
    return lines


# ---- running the suites ------------------------------------------------------------------
class _LineStream:
    """A stream that is never a terminal: the across-suites bar prints one line per suite,
    so the suite's own bar, rewritten in place on a terminal, never overwrites it."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False


def run_suite(suite: Suite, args: Sequence[str], workdir: Path) -> SuiteResult:
    """Run one suite through its own command line with `args`; its table is not printed,
    its rows come back through its --json file. A failure is kept, not raised."""
    parser = argparse.ArgumentParser(prog=f"fuseinfer bench {suite.name}")
    suite.add_arguments(parser)
    out = workdir / f"{suite.name}.json"
    result = SuiteResult(suite.name, list(args))
    start = time.perf_counter()
    try:
        ns = parser.parse_args([*args, "--json", str(out)])
        result.baselines = getattr(ns, "baselines", None)
        with contextlib.redirect_stdout(io.StringIO()):
            status = int(suite.run(ns) or 0)
        if status:
            raise RuntimeError(f"exit status {status}")
        result.rows = json.loads(out.read_text())["rows"]
    except (Exception, SystemExit) as err:  # one suite failing must not stop the others
        text = str(err).strip().splitlines()
        result.error = f"{type(err).__name__}: {text[-1][:200] if text else ''}"
    result.seconds = time.perf_counter() - start
    return result


def ensure_ceilings() -> dict[str, Any]:
    """The cached copy-bandwidth and bf16 matmul ceilings (the % columns), measured first
    where missing."""
    from ..ceilings import load_ceilings, measure_ceilings

    cached = load_ceilings()
    missing = [kind for kind, key in (("copy", "copy_gbps"), ("bf16", "bf16_tflops"))
               if cached is None or getattr(cached, key) is None]
    return asdict(measure_ceilings(missing) if missing else cached)


def run_all(suites: Sequence[Suite], quick: bool) -> list[SuiteResult]:
    results = []
    with tempfile.TemporaryDirectory(prefix="fuseinfer-bench-all-") as tmp, \
            Progress(len(suites), "bench all", _LineStream(sys.stderr)) as progress:
        for suite in suites:
            args = list(suite.quick_args or ()) if quick else []
            progress.step(" ".join([suite.name, *args]))
            if quick and suite.quick_args is None:
                results.append(SuiteResult(suite.name, args, error="declares no quick_args"))
                continue
            results.append(run_suite(suite, args, Path(tmp)))
    return results


def cpu_demonstration(out: TextIO) -> None:
    """A few tokens from the bundled tiny model through fuseinfer.LLM on the CPU."""
    from ...llm import LLM
    from ...runtime.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=DEMO_TOKENS, temperature=1.0, seed=0,
                            ignore_eos=True)
    with LLM(device="cpu") as llm:
        completion = llm.generate(DEMO_PROMPT, params)[0]
    print(f"prompt: {DEMO_PROMPT!r}", file=out)
    print(f"tokens: {completion.token_ids}", file=out)
    print(f"text:   {completion.text!r} (random weights: it means nothing)", file=out)


# ---- the command: `fuseinfer bench all` --------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run every GPU kernel suite (" + ", ".join(s.name for s in kernel_suites()) + ") and "
        "print one summary table: per op and shape, our time, % of the device ceiling, and "
        "the ratio against the fastest baseline timed in that row (x best > 1: we are "
        "faster; a baseline reported as not timed, e.g. one that disagreed with our output, "
        "is never the best). Each suite times as `fuseinfer bench <suite>` does. Without a "
        "CUDA GPU: one line saying so, then a short CPU demonstration (the bundled tiny "
        "model generating a few tokens), exit 0.")
    parser.add_argument("--quick", action="store_true",
                        help="each suite at its small representative shape set (one or two "
                        "model shapes, two or three token counts; a few minutes on an H200 "
                        "with a warm build cache) instead of its full default set")
    parser.add_argument("--suites", nargs="+", metavar="SUITE",
                        help="run only these suites (default: every GPU kernel suite)")
    parser.add_argument("--json", type=Path, help="write the summary table, each suite's "
                        "rows and the ceilings here, with a GPU (nothing is recorded: "
                        "`fuseinfer bench <suite> --record` records a suite's run)")


def run_command(args: argparse.Namespace) -> int:
    from .. import cli as bench_cli  # looked up at call time, so tests can stand in for it

    if not bench_cli.has_cuda_gpu():
        print("fuseinfer bench all: no CUDA GPU found, so no kernel is timed; instead, a CPU "
              f"demonstration: the bundled tiny model generates {DEMO_TOKENS} tokens through "
              "fuseinfer.LLM.", flush=True)
        cpu_demonstration(sys.stdout)
        return 0
    from ..kernel_suite import check_known
    from ..report import bench_environment, column_specs, format_table, write_run_json

    suites = kernel_suites()
    if args.suites:
        check_known("suite", args.suites, [s.name for s in suites])
        suites = [s for s in suites if s.name in args.suites]
    start = time.perf_counter()
    ceilings = ensure_ceilings()
    results = run_all(suites, args.quick)
    table = summary_table(results)
    print(format_table(table, COLUMNS))
    print()
    print("\n".join(suite_lines(results)))
    print(f"total {time.perf_counter() - start:.0f} s (x best: the fastest baseline's time "
          "over ours; > 1.0 means we are faster)")
    if args.json:
        write_run_json(args.json, "all", bench_environment(), ceilings, table,
                       {"columns": column_specs(COLUMNS), "quick": args.quick,
                        "suites": [asdict(r) for r in results]})
    return 1 if any(r.error for r in results) else 0


register_suite(Suite(
    name="all", help="every GPU kernel suite in one run (--quick: a small representative "
    "shape set) and one summary table: our time, share of the ceiling, x the best baseline; "
    "without a GPU, a short CPU demonstration", run=run_command, add_arguments=add_arguments,
    needs_gpu=False))
