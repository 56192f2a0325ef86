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
    _add_run_options(norm, "norm")
    norm.set_defaults(handler=_run_norm)

    rope = suites.add_parser("rope", help="RoPE fused with the KV-cache write, and the "
                             "cache write alone, on real model shapes (bf16)")
    rope.add_argument("--models", nargs="+", metavar="MODEL",
                      help="keep only these models (default: Llama-3-8B Qwen3-0.6B "
                      "GPT-OSS-120B DeepSeek-V3)")
    rope.add_argument("--tokens", nargs="+", type=int,
                      help="token counts (default: 1 8 32 128 512 4096 16384)")
    rope.add_argument("--baselines", nargs="*", default=["eager", "compile", "flashinfer"],
                      help="baselines timed in the same run (flashinfer skipped if absent); "
                      "our unfused rope + store_kv is always timed")
    _add_run_options(rope, "rope")
    rope.set_defaults(handler=_run_rope)

    attn = suites.add_parser("attention", help="paged decode and prefill/extend attention "
                             "on model shapes against SDPA and flex_attention (bf16)")
    attn.add_argument("--kinds", nargs="+", choices=["decode", "prefill"],
                      default=["decode", "prefill"])
    attn.add_argument("--models", nargs="+", metavar="MODEL",
                      help="keep only these models (default: Llama-3-8B GPT-OSS "
                      "GPT-OSS-win128)")
    attn.add_argument("--batches", nargs="+", type=int, help="decode batch sizes "
                      "(default: 1 8 64 256)")
    attn.add_argument("--lengths", nargs="+", type=int, help="decode KV lengths "
                      "(default: 1024 4096 16384 65536; batch 1 x 8192 is always added)")
    attn.add_argument("--prefill", nargs="+", metavar="NAME",
                      help="prefill shapes (default: 1x4k 4x2k 1x16k 'extend 2k on 4k')")
    attn.add_argument("--page-size", type=int, default=64,
                      help="tokens per KV page (default 64; 1 and 16 exercise the per-row "
                      "gather path)")
    attn.add_argument("--baselines", nargs="*", default=["sdpa", "flex"],
                      help="baselines timed in the same run on contiguous KV")
    attn.add_argument("--json", type=Path, help="write this run as JSON here")
    attn.add_argument("--record", action="store_true",
                      help="append the run to microbench/results/<gpu>/attention.json")
    attn.add_argument("--continue-run", action="store_true",
                      help="with --record: add the rows to the latest recorded run (same "
                      "GPU, driver and torch), for a suite recorded in parts")
    attn.set_defaults(handler=_run_attention, pdl="auto", cold=False)

    from ..runtime.bench_latency import add_latency_parser
    from ..runtime.bench_offline import add_offline_parser
    from ..server.bench_serving import add_serving_parser

    add_offline_parser(suites)
    add_latency_parser(suites)
    add_serving_parser(suites)

    summary = suites.add_parser("summary", help="regenerate docs/benchmarks.md from "
                                "microbench/results")
    summary.set_defaults(handler=_run_summary)


def _add_run_options(parser: argparse.ArgumentParser, suite: str) -> None:
    parser.add_argument("--pdl", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--cold", action="store_true",
                        help="rotate buffers past L2 for every shape (default: only shapes "
                        "whose data exceeds a quarter of L2; smaller ones run L2-warm)")
    parser.add_argument("--json", type=Path, help="write this run as JSON here")
    parser.add_argument("--record", action="store_true",
                        help=f"append the run to microbench/results/<gpu>/{suite}.json")


def add_tune_parser(sub: Any) -> None:
    tune = sub.add_parser("tune", help="search launch shapes on this GPU and write its "
                          "dispatch table entry")
    tune.add_argument("op", choices=["norm", "rope", "attention"],
                      help="norm: the RMSNorm family; rope: RoPE (+ KV write) and "
                      "store_kv_cache; attention: paged prefill and decode block sizes")
    tune.add_argument("--hidden", nargs="+", type=int,
                      help="hidden sizes to tune (default: 1024 ... 16384); the entry written "
                      "covers only these, each rule serving sizes up to its own")
    tune.add_argument("--output", type=Path,
                      help="table file to update (default: <gpu-key>.json in the tables folder "
                      "that `fuseinfer info` shows)")
    tune.add_argument("--log", type=Path, help="write every timing taken as JSON")
    tune.add_argument("--kinds", nargs="+", choices=["prefill", "decode"],
                      help="attention only: tune these kernels, keeping the table's current "
                      "rules for the others (default: both)")
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


_PDL = {"auto": None, "on": True, "off": False}


def _cpu_smoke(smoke: Any) -> int:
    """The no-GPU path of a suite: its CPU reference smoke, passing on small errors."""
    import math

    from .report import format_table

    print("no CUDA GPU found: running the CPU reference smoke instead of the benchmark "
          "(CPU times say nothing about GPU kernels).", file=sys.stderr)
    rows = smoke.run()
    print(format_table(rows, smoke.COLUMNS))
    errs = [r["rel_err"] for r in rows]
    worst = math.nan if any(math.isnan(e) for e in errs) else max(errs)
    against = getattr(smoke, "CHECKED_AGAINST", "float64")
    print(f"CPU reference vs {against}: worst relative error {worst:.1e}")
    return 0 if worst < 1e-2 else 1


def _report(name: str, columns: list[Any], rows: list[dict[str, Any]],
            copy_gbps: float | None, args: argparse.Namespace) -> int:
    """Print the table; write --json and append --record as the suite `name`."""
    from .ceilings import load_ceilings
    from .report import format_table, make_run, write_run_json

    print(format_table(rows, columns))
    ceilings = load_ceilings()
    env = _environment()
    extra = {"columns": [{"key": c.key, "header": c.header, "fmt": c.fmt} for c in columns],
             "pdl": args.pdl, "cold": args.cold}
    run = make_run(name, env, ceilings.__dict__ if ceilings else {"copy_gbps": copy_gbps},
                   rows, extra)
    if args.json:
        write_run_json(args.json, name, env, run["ceilings"], rows, extra)
    if args.record:
        _record(run, continue_last=getattr(args, "continue_run", False))
    return 0


def _record(run: dict[str, Any], continue_last: bool = False) -> Path:
    from .report import record_run

    root = repo_dir() or Path.cwd()
    path = root / "microbench" / "results" / str(run["environment"]["gpu_key"]) / \
        f"{run['suite']}.json"
    record_run(path, run, continue_last=continue_last)
    print(f"recorded in {path}", file=sys.stderr)
    return path


def record_results(name: str, columns: list[Any], rows: list[dict[str, Any]],
                   extra: dict[str, Any] | None = None, continue_last: bool = False) -> Path:
    """Append rows measured outside the kernel suites (runtime, serving) to
    microbench/results/<gpu>/<name>.json with this machine's environment."""
    from .report import make_run

    extra = {"columns": [{"key": c.key, "header": c.header, "fmt": c.fmt} for c in columns],
             **(extra or {})}
    return _record(make_run(name, _environment(), None, rows, extra), continue_last)


def _run_norm(args: argparse.Namespace) -> int:
    if not _has_gpu():
        from .suites import norm_cpu_smoke

        return _cpu_smoke(norm_cpu_smoke)

    import torch

    import fuseinfer  # noqa: F401  (registers the ops)

    from .ceilings import copy_bandwidth_gbps
    from .suites import norm as suite

    ops = args.ops or list(suite.OPS)
    unknown = [op for op in ops if op not in suite.ALL_OPS]
    if unknown:
        raise SystemExit(f"unknown op(s) {unknown}; choose from {list(suite.ALL_OPS)}")
    copy_gbps = copy_bandwidth_gbps()
    rows = suite.run(_select_shapes(args), ops, args.baselines, copy_gbps,
                     dtype=getattr(torch, _DTYPES[args.dtype]), enable_pdl=_PDL[args.pdl],
                     cold=args.cold)
    return _report("norm", suite.COLUMNS, rows, copy_gbps, args)


def _run_rope(args: argparse.Namespace) -> int:
    if not _has_gpu():
        from .suites import rope_cpu_smoke

        return _cpu_smoke(rope_cpu_smoke)

    import fuseinfer  # noqa: F401  (registers the ops)

    from .ceilings import copy_bandwidth_gbps
    from .suites import rope as suite

    names = args.models or list(suite.MODELS)
    for kind, asked, known in (("model", names, list(suite.MODELS)),
                               ("baseline", args.baselines, list(suite.BASELINES))):
        unknown = [n for n in asked if n not in known]
        if unknown:
            raise SystemExit(f"unknown {kind}(s) {unknown}; choose from {known}")
    tokens = args.tokens or list(suite.TOKENS)
    if min(tokens) < 1:
        raise SystemExit("--tokens: token counts must be positive")
    copy_gbps = copy_bandwidth_gbps()
    rows = suite.run([suite.MODELS[n] for n in names], tokens, args.baselines, copy_gbps,
                     enable_pdl=_PDL[args.pdl], cold=args.cold)
    return _report("rope", suite.COLUMNS, rows, copy_gbps, args)


def _run_attention(args: argparse.Namespace) -> int:
    if not _has_gpu():
        from .suites import attention_cpu_smoke

        return _cpu_smoke(attention_cpu_smoke)

    import fuseinfer  # noqa: F401  (registers the ops)

    from .ceilings import copy_bandwidth_gbps, load_ceilings
    from .suites import attention as suite

    names = args.models or list(suite.MODELS)
    prefill = args.prefill or list(suite.PREFILL)
    for kind, asked, known in (("model", names, list(suite.MODELS)),
                               ("prefill shape", prefill, list(suite.PREFILL)),
                               ("baseline", args.baselines, ["sdpa", "flex"])):
        unknown = [n for n in asked if n not in known]
        if unknown:
            raise SystemExit(f"unknown {kind}(s) {unknown}; choose from {known}")
    if args.page_size < 1:
        raise SystemExit("--page-size must be >= 1")
    models = [suite.MODELS[n] for n in names]
    cases = []
    if "decode" in args.kinds:
        cases += suite.decode_cases(models, args.batches or suite.DECODE_BATCHES,
                                    args.lengths or suite.DECODE_LENGTHS)
    if "prefill" in args.kinds:
        cases += suite.prefill_cases([m for m in models if m.name in suite.PREFILL_MODELS],
                                     prefill)
    copy_gbps = copy_bandwidth_gbps()
    ceilings = load_ceilings()
    bf16 = ceilings.bf16_tflops if ceilings else None
    rows = suite.run(cases, args.baselines, copy_gbps, bf16, page_size=args.page_size)
    return _report("attention", suite.COLUMNS, rows, copy_gbps, args)


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
    from ..ops.norm.dispatch import OP_FAMILY, NormDispatch, push_to_device
    from .environment import utc_now
    from .suites import norm_tune

    identity = current_identity()
    assert identity is not None
    device = torch.cuda.current_device()
    if args.op in ("rope", "attention"):
        if args.hidden:
            raise SystemExit("--hidden applies to `tune norm` only")
        if args.op == "attention":
            return _run_tune_attention(args, identity, device)
        return _run_tune_rope(args, identity, device)
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


def _run_tune_attention(args: argparse.Namespace, identity: Any, device: int) -> int:
    from dataclasses import replace

    import torch

    from ..dispatch import gpu_key, lookup, write_entry
    from .environment import utc_now
    from .suites import attention_tune

    kinds = tuple(args.kinds or ("prefill", "decode"))
    start = lookup("attention", identity).entry
    table, log = attention_tune.tune(device, kinds, start)
    done = {"prefill": "prefill 1x4k causal",
            "decode": f"decode {attention_tune.DECODE_SHAPES}, splits over "
                      f"{attention_tune.SPLIT_SHAPES}"}
    source = (f"tuned on {identity.name} {utc_now()[:10]} (bf16, torch {torch.__version__}, "
              f"page size {attention_tune.PAGE_SIZE}; "
              + "; ".join(done[k] for k in kinds) + ")")
    if len(kinds) == 1 and start.source.startswith("tuned"):
        source += f"; kept from before: {start.source.split('; kept from before: ')[-1]}"
    table = replace(table, source=source)
    key = gpu_key(identity)
    output = args.output or tables_dir() / f"{key}.json"
    write_entry(output, "attention", table, key=key, description=identity.name)
    for r in table.prefill_rules:
        print(f"  prefill head_dim <= {r.max_head_dim}: block {r.block_m}x{r.block_n}, "
              f"{r.num_warps} warps, {r.num_stages} stages")
    for r in table.decode_rules:
        print(f"  decode head_dim <= {r.max_head_dim}: block_n {r.block_n}, {r.num_warps} "
              f"warps, {r.num_stages} stages")
    print(f"  decode splits: min_chunk {table.min_chunk}, {table.target_ctas_per_sm} "
          "programs per SM")
    print(f"wrote {output}")
    if args.log:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        args.log.write_text(json.dumps({"source": source, "timings": log}, indent=1))
    return 0


def _run_tune_rope(args: argparse.Namespace, identity: Any, device: int) -> int:
    from dataclasses import replace

    import torch

    from ..dispatch import gpu_key, write_entry
    from ..ops.kvcache.dispatch import push_kvcache
    from ..ops.rope.dispatch import push_rope
    from .environment import utc_now
    from .suites import rope_tune

    rope, store, log = rope_tune.tune(device)
    source = (f"tuned on {identity.name} {utc_now()[:10]} (bf16, torch {torch.__version__}; "
              f"{' and '.join(rope_tune.TUNE_MODELS)})")
    rope, store = replace(rope, source=source), replace(store, source=source)
    key = gpu_key(identity)
    output = args.output or tables_dir() / f"{key}.json"
    write_entry(output, "rope", rope, key=key, description=identity.name)
    write_entry(output, "kvcache", store, key=key, description=identity.name)
    push_rope(device, rope)
    push_kvcache(device, store)
    for rule in rope.rules:
        print(f"  rope: tokens <= {rule.max_tokens}: {rule.tokens_per_block} tokens x "
              f"{rule.heads_per_block or 'all'} heads per block, {rule.threads_per_block} "
              "threads")
    for rule in store.rules:
        print(f"  kvcache: tokens <= {rule.max_tokens}: {rule.threads_per_block} threads")
    print(f"wrote {output}")
    if args.log:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        args.log.write_text(json.dumps({"source": source, "timings": log}, indent=1))
    return 0
