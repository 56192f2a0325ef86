"""`fuseinfer bench <suite>` and `fuseinfer tune <suite>`, built from the bench registry
(bench/registry.py): one subcommand per registered suite and per suite with a tuner.

Without a CUDA GPU, every GPU-only command says so in one line on stderr and exits with 2.
`fuseinfer bench all` (bench/suites/all.py) runs every GPU kernel suite into one summary
table; without a GPU it says so in one line, runs a short CPU demonstration and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .registry import Command, Suite, registered_suites
from .tuning import add_tune_output_options

NO_GPU_EXIT = 2


def has_cuda_gpu() -> bool:
    import torch

    return torch.cuda.is_available() and torch.version.hip is None


def add_bench_parser(sub: Any) -> None:
    bench = sub.add_parser("bench", help="microbenchmarks against the device limits and "
                           "against torch eager / torch.compile / liger, and end-to-end "
                           "benches of the runtime and server",
                           description="One command per suite. `fuseinfer bench all --quick` "
                           "runs every GPU kernel suite at a small representative shape set "
                           "and prints one summary table (our time, % of the device "
                           "ceiling, x the fastest baseline); `fuseinfer bench <suite>` runs "
                           "one suite at its full shape set with its own table.")
    bench.add_argument("--list", action="store_true",
                       help="list the suites: name, needs (gpu/any), results file, help")
    bench.set_defaults(handler=lambda args: _list_or_usage(args, bench))
    suites = bench.add_subparsers(dest="suite", metavar="SUITE")
    for suite in registered_suites():
        parser = suites.add_parser(suite.name, help=suite.help)
        suite.add_arguments(parser)
        parser.set_defaults(handler=lambda args, s=suite: _run(s, "bench", s.run, args))


def add_tune_parser(sub: Any) -> None:
    tune = sub.add_parser("tune", help="search launch shapes on this GPU and write its "
                          "dispatch table entry")
    ops = tune.add_subparsers(dest="op", metavar="OP", required=True)
    for suite in registered_suites():
        tuner = suite.tune
        if tuner is None:
            continue
        parser = ops.add_parser(suite.name, help=tuner.help)
        tuner.add_arguments(parser)
        add_tune_output_options(parser)
        parser.set_defaults(handler=lambda args, s=suite, t=tuner: _run(s, "tune", t.run, args))


def _run(suite: Suite, command: str, run: Command, args: argparse.Namespace) -> int:
    # Tuning always needs the GPU; a bench suite says whether it does.
    if (command == "tune" or suite.needs_gpu) and not has_cuda_gpu():
        print(f"fuseinfer {command} {suite.name}: no CUDA GPU found, and this command needs "
              "one.", file=sys.stderr)
        return NO_GPU_EXIT
    return int(run(args) or 0)


def suite_listing() -> str:
    """One line per suite: name, gpu or any, the results file it records to, help."""
    suites = registered_suites()
    width = max(len(s.name) for s in suites)
    return "\n".join(f"{s.name:<{width}}  {'gpu' if s.needs_gpu else 'any':<3}  "
                     f"{(s.records + '.json') if s.records else '-':<14}  {s.help}"
                     for s in suites)


def _list_or_usage(args: argparse.Namespace, bench: argparse.ArgumentParser) -> int:
    if not args.list:
        bench.error("choose a suite (or --list)")
    print(suite_listing())
    return 0
