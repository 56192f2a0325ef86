"""The `fuseinfer` command: info | bench | tune | generate | serve."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from .bench.cli import add_bench_parser, add_tune_parser
    from .runtime.cli import add_generate_parser
    from .server.cli import add_serve_parser

    parser = argparse.ArgumentParser(prog="fuseinfer", description="Fused CUDA kernels for "
                                     "LLM inference: inspect, benchmark and tune them; "
                                     "generate with the reference runtime.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="device, dispatch choices, toolkit and build cache")
    info.add_argument("--json", action="store_true", help="print the report as JSON")
    info.set_defaults(handler=_run_info)
    add_bench_parser(sub)
    add_tune_parser(sub)
    add_generate_parser(sub)
    add_serve_parser(sub)
    return parser


def _run_info(args: argparse.Namespace) -> int:
    from .info import gather, render

    report = gather()
    print(json.dumps(report, indent=1) if args.json else render(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import fuseinfer  # noqa: F401  (registers ops and their table schemas)

    from .runtime.cli import UsageExit

    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UsageExit as err:  # a user's mistake: one line, no traceback
        print(err, file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
