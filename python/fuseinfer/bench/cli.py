"""`fuseinfer bench ...` and `fuseinfer tune ...` subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..paths import repo_dir, tables_dir

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available() and torch.version.hip is None


def add_bench_parser(sub: Any) -> None:
    bench = sub.add_parser("bench", help="microbenchmarks against the device limits and "
                           "against torch eager / torch.compile / liger")
    suites = bench.add_subparsers(dest="suite", required=True)

    ceil = suites.add_parser("ceilings", help="measure and cache copy bandwidth and "
                             "bf16/fp8 matmul peaks of this GPU")
    ceil.add_argument("--which", nargs="+", default=["copy", "bf16", "fp8"],
                      choices=["copy", "bf16", "fp8"])
    ceil.set_defaults(handler=_run_ceilings)

    norm = suites.add_parser("norm", help="RMSNorm kernels on real model shapes")
    norm.add_argument("--shapes", nargs="+", metavar="TOKENSxHIDDEN",
                      help="explicit shapes, e.g. 512x4096 (default: model shapes)")
    norm.add_argument("--hidden", nargs="+", type=int, help="keep only these hidden sizes")
    norm.add_argument("--tokens", nargs="+", type=int, help="keep only these token counts")
    norm.add_argument("--ops", nargs="+", default=None,
                      help="ops to time (default: fused_add_rmsnorm rmsnorm)")
    norm.add_argument("--baselines", nargs="*", default=["eager", "compile", "liger"],
                      help="baselines timed in the same run (liger skipped if absent)")
    norm.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    norm.add_argument("--pdl", choices=["auto", "on", "off"], default="auto")
    norm.add_argument("--cold", action="store_true",
                      help="rotate buffers past L2 for every shape (default: only shapes "
                      "whose data exceeds a quarter of L2; smaller ones run L2-warm)")
    norm.add_argument("--json", type=Path, help="write this run as JSON here")
    norm.add_argument("--record", action="store_true",
                      help="append the run to microbench/results/<gpu>/norm.json")
    norm.set_defaults(handler=_run_norm)

    summary = suites.add_parser("summary", help="regenerate docs/benchmarks.md from "
                                "microbench/results")
    summary.set_defaults(handler=_run_summary)


def add_tune_parser(sub: Any) -> None:
    tune = sub.add_parser("tune", help="search launch shapes on this GPU and write its "
                          "dispatch table entry")
    tune.add_argument("op", choices=["norm"])
    tune.add_argument("--hidden", nargs="+", type=int,
                      help="hidden sizes to tune (default: 1024 ... 16384); the entry written "
                      "covers only these, each rule serving sizes up to its own")
    tune.add_argument("--output", type=Path,
                      help="table file to update (default: <gpu-key>.json in the tables folder "
                      "that `fuseinfer info` shows)")
    tune.add_argument("--log", type=Path, help="write every timing taken as JSON")
    tune.set_defaults(handler=_run_tune)


def _run_ceilings(args: argparse.Namespace) -> int:
    if not _has_gpu():
        print("no CUDA GPU found: device ceilings need one.", file=sys.stderr)
        return 1
    from .ceilings import measure_ceilings

    result = measure_ceilings(args.which)
    print(json.dumps(result.__dict__, indent=1))
    return 0


def _select_shapes(args: argparse.Namespace) -> list[Any]:
    from .suites.norm import default_shapes, parse_shapes

    shapes = parse_shapes(args.shapes) if args.shapes else default_shapes()
    if args.hidden:
        shapes = [s for s in shapes if s.hidden in args.hidden]
    if args.tokens:
        shapes = [s for s in shapes if s.tokens in args.tokens]
    if not shapes:
        raise SystemExit("no shapes left after --hidden/--tokens filtering")
    return shapes


def _environment() -> dict[str, Any]:
    from ..dispatch import current_identity, gpu_key
    from .environment import collect_environment

    env = collect_environment()
    identity = current_identity()
    env["gpu_key"] = gpu_key(identity) if identity else None
    return env


def _run_norm(args: argparse.Namespace) -> int:
    import torch

    from .report import format_table, make_run, record_run, write_run_json

    if not _has_gpu():
        from .suites import norm_cpu_smoke

        print("no CUDA GPU found: running the CPU reference smoke instead of the benchmark "
              "(CPU times say nothing about GPU kernels).", file=sys.stderr)
        rows = norm_cpu_smoke.run()
        print(format_table(rows, norm_cpu_smoke.COLUMNS))
        worst = max(r["rel_err"] for r in rows)
        print(f"CPU reference vs float64: worst relative error {worst:.1e}")
        return 0 if worst < 1e-2 else 1

    import fuseinfer  # noqa: F401  (registers the ops)

    from .ceilings import copy_bandwidth_gbps, load_ceilings
    from .suites import norm as suite

    ops = args.ops or list(suite.OPS)
    unknown = [op for op in ops if op not in suite.ALL_OPS]
    if unknown:
        raise SystemExit(f"unknown op(s) {unknown}; choose from {list(suite.ALL_OPS)}")
    copy_gbps = copy_bandwidth_gbps()
    pdl = {"auto": None, "on": True, "off": False}[args.pdl]
    rows = suite.run(_select_shapes(args), ops, args.baselines, copy_gbps,
                     dtype=getattr(torch, _DTYPES[args.dtype]), enable_pdl=pdl,
                     cold=args.cold)
    print(format_table(rows, suite.COLUMNS))
    ceilings = load_ceilings()
    env = _environment()
    extra = {"columns": [{"key": c.key, "header": c.header, "fmt": c.fmt}
                         for c in suite.COLUMNS], "pdl": args.pdl, "cold": args.cold}
    run = make_run("norm", env, ceilings.__dict__ if ceilings else {"copy_gbps": copy_gbps},
                   rows, extra)
    if args.json:
        write_run_json(args.json, "norm", env, run["ceilings"], rows, extra)
    if args.record:
        root = repo_dir() or Path.cwd()
        path = root / "microbench" / "results" / str(env["gpu_key"]) / "norm.json"
        record_run(path, run)
        print(f"recorded in {path}", file=sys.stderr)
    return 0


def _run_summary(args: argparse.Namespace) -> int:
    from .summary import update_benchmarks_doc

    root = repo_dir() or Path.cwd()
    update_benchmarks_doc(root / "docs" / "benchmarks.md", root / "microbench" / "results")
    print(f"updated {root / 'docs' / 'benchmarks.md'}")
    return 0


def _run_tune(args: argparse.Namespace) -> int:
    if not _has_gpu():
        print("no CUDA GPU found: tuning needs one.", file=sys.stderr)
        return 1
    import torch

    from ..dispatch import current_identity, gpu_key, write_entry
    from ..ops.norm_dispatch import OP_FAMILY, NormDispatch, push_to_device
    from .environment import utc_now
    from .suites import norm_tune

    identity = current_identity()
    assert identity is not None
    device = torch.cuda.current_device()
    hidden = tuple(sorted(set(args.hidden))) if args.hidden else norm_tune.HIDDEN
    rules, log = norm_tune.tune(device, hidden)
    pdl, pdl_times = norm_tune.pdl_helps(device, rules)
    source = (f"tuned on {identity.name} {utc_now()[:10]} (bf16, torch {torch.__version__}; "
              f"PDL on {pdl_times['pdl_on']:.2f} us vs off {pdl_times['pdl_off']:.2f} us, "
              "fused_add_rmsnorm hidden 4096, <= 128 tokens)")
    entry = NormDispatch(source=source, enable_pdl=pdl, rmsnorm_rules=rules["rmsnorm"],
                         fused_add_rules=rules["fused_add"])
    key = gpu_key(identity)
    output = args.output or tables_dir() / f"{key}.json"
    write_entry(output, OP_FAMILY, entry, key=key, description=identity.name)
    push_to_device(device, entry)
    for kind, kind_rules in rules.items():
        for rule in kind_rules:
            print(f"  {kind}: hidden <= {rule.max_hidden}  tokens <= {rule.max_tokens}: "
                  f"{rule.threads_per_row} threads/row, {rule.rows_per_block} rows/block")
    print(f"PDL {'on' if pdl else 'off'} ({pdl_times})")
    print(f"wrote {output}")
    if args.log:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        args.log.write_text(json.dumps({"source": source, "timings": log}, indent=1))
    return 0
