"""What the kernel suites (norm, rope, attention, ...) share on the command line: the run
options (--pdl, --cold, --json, --record), name checks, and the report of a run (table,
JSON file, recorded results)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from . import report
from .report import Column

PDL = {"auto": None, "on": True, "off": False}  # --pdl -> the ops' enable_pdl argument


def add_run_options(parser: argparse.ArgumentParser, suite: str) -> None:
    parser.add_argument("--pdl", choices=list(PDL), default="auto")
    parser.add_argument("--cold", action="store_true",
                        help="rotate buffers past L2 for every shape (default: only shapes "
                        "whose data exceeds a quarter of L2; smaller ones run L2-warm)")
    add_output_options(parser, suite)


def add_output_options(parser: argparse.ArgumentParser, suite: str,
                       continue_run: bool = False) -> None:
    parser.add_argument("--json", type=Path, help="write this run as JSON here")
    parser.add_argument("--record", action="store_true",
                        help=f"append the run to microbench/results/<gpu>/{suite}.json")
    if continue_run:
        parser.add_argument("--continue-run", action="store_true",
                            help="with --record: add the rows to the latest recorded run "
                            "(same GPU, driver and torch), for a suite recorded in parts")


def check_known(kind: str, asked: Iterable[str], known: Iterable[str]) -> None:
    """Exit with a message naming the choices when `asked` holds an unknown name."""
    known = list(known)
    unknown = [name for name in asked if name not in known]
    if unknown:
        raise SystemExit(f"unknown {kind}(s) {unknown}; choose from {known}")


def report_run(name: str, columns: Sequence[Column], rows: list[dict[str, Any]],
               copy_gbps: float | None, args: argparse.Namespace,
               cut_short: str | None = None) -> int:
    """Print the table; write --json and append --record as the suite `name`. cut_short:
    the run was stopped (bench.cut) after the given rows; said in the run, exit code 3."""
    from .ceilings import load_ceilings

    print(report.format_table(rows, columns))
    ceilings = load_ceilings()
    env = report.bench_environment()
    extra: dict[str, Any] = {"columns": report.column_specs(columns), "pdl": args.pdl,
                             "cold": args.cold}
    if cut_short is not None:
        extra["cut_short"] = cut_short
        print(f"run cut short {cut_short}: the rows above are kept")
    run = report.make_run(name, env, ceilings.__dict__ if ceilings else
                          {"copy_gbps": copy_gbps}, rows, extra)
    if args.json:
        report.write_run_json(args.json, name, env, run["ceilings"], rows, extra)
    if args.record and rows:
        report.record(run, continue_last=getattr(args, "continue_run", False))
    return 0 if cut_short is None else 3
