"""Benchmark output: a plain-text table for the terminal and JSON files for the record
(microbench/results/<gpu>/<suite>.json, appended to by every suite's --record)."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..paths import repo_dir

_RUN_KEYS = ("suite", "environment", "ceilings", "rows")


@dataclass(frozen=True)
class Column:
    """One table column: row key, header text, format for non-None values, alignment."""

    key: str
    header: str
    fmt: str = "{}"
    align: str = ">"  # "<", ">" or "^", as in format specs


def positive_number(value: object) -> float | None:
    """A row value as a usable measurement: a finite number > 0 (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def timed_baselines(row: Mapping[str, Any]) -> list[str]:
    """The baselines a suite row timed, in row order: every `<name>_us` that has its
    `vs_<name>` ratio (other `*_us` keys, variants of our own kernel, have none)."""
    return [key[:-3] for key in row if key.endswith("_us") and f"vs_{key[:-3]}" in row]


def format_cell(value: object, fmt: str = "{}") -> str:
    """Format one value; None (or a missing key) prints "-"."""
    return "-" if value is None else fmt.format(value)


def format_table(rows: Sequence[Mapping[str, object]], columns: Sequence[Column]) -> str:
    """Monospace table: header line, a rule, one line per row; widths fit the content."""
    for column in columns:
        if column.align not in ("<", ">", "^"):
            raise ValueError(f"column {column.key!r}: align must be '<', '>' or '^'")
    body = [[format_cell(row.get(c.key), c.fmt) for c in columns] for row in rows]
    widths = [max([len(c.header)] + [len(line[i]) for line in body]) for i, c in enumerate(columns)]

    def render(cells: Sequence[str]) -> str:
        parts = [f"{cell:{c.align}{w}}" for cell, c, w in zip(cells, columns, widths, strict=True)]
        return "  ".join(parts).rstrip()

    lines = [render([c.header for c in columns]), "  ".join("-" * w for w in widths)]
    lines += [render(cells) for cells in body]
    return "\n".join(lines)


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)  # a crash mid-write must not destroy recorded runs


def make_run(
    suite: str,
    environment: Mapping[str, Any],
    ceilings: Mapping[str, Any] | None,
    rows: Sequence[Mapping[str, Any]],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One run as a plain dict: suite, environment, ceilings, rows, then `extra` keys."""
    run: dict[str, Any] = {
        "suite": suite,
        "environment": dict(environment),
        "ceilings": None if ceilings is None else dict(ceilings),
        "rows": [dict(row) for row in rows],
    }
    clash = sorted(set(extra or {}) & set(_RUN_KEYS))
    if clash:
        raise ValueError(f"extra must not redefine {clash}")
    run.update(extra or {})
    return run


def write_run_json(
    path: Path,
    suite: str,
    environment: Mapping[str, Any],
    ceilings: Mapping[str, Any] | None,
    rows: Sequence[Mapping[str, Any]],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write one run to `path`, creating parent folders."""
    _write_json(Path(path), make_run(suite, environment, ceilings, rows, extra))


def load_recorded(results_path: Path) -> dict[str, Any]:
    """Read a recorded-results file, checking it is {"suite": str, "runs": [dict, ...]}."""
    try:
        data = json.loads(Path(results_path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{results_path}: not valid JSON ({err})") from err
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("suite"), str)
        or not isinstance(data.get("runs"), list)
        or not all(isinstance(run, dict) for run in data["runs"])
    ):
        raise ValueError(
            f'{results_path}: expected {{"suite": <name>, "runs": [<run>, ...]}}, '
            "found something else; fix or move the file before recording"
        )
    return data


def _day(run: Mapping[str, Any]) -> str:
    return str((run.get("environment") or {}).get("date") or "")[:10]


def latest_day_runs(runs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The runs with rows recorded on the latest run's day, newest first: what the summary
    shows, so a partial re-run (a few shapes after a tuning) does not hide the full run
    recorded before it that day."""
    with_rows = [r for r in runs if r.get("rows")]
    if not with_rows:
        return []
    day = _day(with_rows[-1])
    return [r for r in reversed(with_rows) if _day(r) == day]


def _row_identity(row: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """What a row measured: its text fields (kind, model, shape, ...), not its numbers."""
    return tuple(sorted((k, v) for k, v in row.items() if isinstance(v, str)))


def earlier_rows(runs: Sequence[Mapping[str, Any]]
                 ) -> list[tuple[Mapping[str, Any], list[Mapping[str, Any]]]]:
    """(run, rows) of runs before the latest day, newest first, keeping only rows that no
    newer run measured again: a partial re-run (decode only, say) leaves the newest
    prefill numbers visible beside it, each under its own run's provenance."""
    shown = latest_day_runs(runs)
    seen = {_row_identity(row) for run in shown for row in run.get("rows") or []}
    out = []
    older = [r for r in runs if r.get("rows") and not any(r is s for s in shown)]
    for run in reversed(older):
        rows = [row for row in run["rows"] if _row_identity(row) not in seen]
        seen.update(_row_identity(row) for row in rows)
        if rows:
            out.append((run, rows))
    return out


def _same_setup(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    ea, eb = a.get("environment") or {}, b.get("environment") or {}
    return all(ea.get(k) == eb.get(k) for k in ("gpu", "driver", "torch")) \
        and a.get("columns") == b.get("columns")


def record_run(results_path: Path, run: Mapping[str, Any], continue_last: bool = False
               ) -> None:
    """Append `run` to microbench/results/<gpu>/<suite>.json, creating it if missing.

    continue_last: add the run's rows to the latest recorded run instead (a suite too long
    for one sitting, recorded in parts); that run must share GPU, driver, torch and
    columns, and it lists each part's date under environment.continued."""
    results_path = Path(results_path)
    suite = run.get("suite")
    if results_path.exists():
        data = load_recorded(results_path)
        if suite is not None and suite != data["suite"]:
            raise ValueError(f"{results_path} records suite {data['suite']!r}, not {suite!r}")
    else:
        if not isinstance(suite, str):
            raise ValueError("run has no 'suite' name to start a results file with")
        data = {"suite": suite, "runs": []}
    if continue_last:
        last = data["runs"][-1] if data["runs"] else None
        if last is None or not _same_setup(last, run):
            raise ValueError(f"{results_path}: no latest run with the same GPU, driver, torch "
                             "and columns to continue")
        last["rows"] = list(last.get("rows") or []) + list(run.get("rows") or [])
        env = last.setdefault("environment", {})
        env.setdefault("continued", []).append((run.get("environment") or {}).get("date"))
    else:
        data["runs"].append(dict(run))
    _write_json(results_path, data)


def column_specs(columns: Sequence[Column]) -> list[dict[str, str]]:
    """The columns as recorded with a run (the summary page renders rows with them)."""
    return [{"key": c.key, "header": c.header, "fmt": c.fmt} for c in columns]


def bench_environment() -> dict[str, Any]:
    """This machine's environment as recorded with a run, with its dispatch-table GPU key
    (None without a GPU): the folder its results are recorded in."""
    from ..dispatch import current_identity, gpu_key
    from .environment import collect_environment

    env = collect_environment()
    identity = current_identity()
    env["gpu_key"] = gpu_key(identity) if identity else None
    return env


def record(run: Mapping[str, Any], continue_last: bool = False) -> Path:
    """Append `run` to microbench/results/<gpu key>/<suite>.json of this checkout (or of the
    working directory outside one); see record_run."""
    root = repo_dir() or Path.cwd()
    path = root / "microbench" / "results" / str(run["environment"]["gpu_key"]) / \
        f"{run['suite']}.json"
    record_run(path, run, continue_last=continue_last)
    print(f"recorded in {path}", file=sys.stderr)
    return path


def record_results(name: str, columns: Sequence[Column], rows: Sequence[Mapping[str, Any]],
                   extra: Mapping[str, Any] | None = None, continue_last: bool = False
                   ) -> Path:
    """Append rows measured outside the kernel suites (runtime, serving) to
    microbench/results/<gpu>/<name>.json with this machine's environment."""
    extra = {"columns": column_specs(columns), **(extra or {})}
    return record(make_run(name, bench_environment(), None, rows, extra), continue_last)
