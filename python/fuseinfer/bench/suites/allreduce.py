"""`fuseinfer bench allreduce`: the allreduce and the fused allreduce + residual add +
RMSNorm on several GPUs of this machine (one process each, `--world`, default every GPU),
at 1..8192 tokens x hidden 2880 / 4096 / 7168 (bf16), CUDA-graph replay, rank 0's median.

Ours: one-shot and two-shot (us_one_shot, us_two_shot), and the fused kernels
(us_fused_one_shot, us_fused_two_shot). Baselines in the same run: NCCL
(torch.distributed), torch symmetric memory one-shot / two-shot (multicast off), each
alone and followed by our fused_add_rmsnorm (`+norm`). `ratio_fused` is the best
baseline pipeline (NCCL or symmetric memory, + norm) over our best fused time;
`ratio_allreduce` the best baseline allreduce over our best. FlashInfer's
trtllm_allreduce_fusion is not in the trimmed bundle. Results are recorded under
microbench/results/<gpu>x<world>/allreduce.json. On a machine with fewer GPUs than ranks
the ranks share GPUs: our kernels run (a correctness smoke test) but the times mean
nothing and NCCL / symmetric memory do not run.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from ..allreduce_ranks import (
    ALLREDUCE_PATHS,
    FUSED_PATHS,
    NORM_PATHS,
    best,
    measure,
    world_size,
)
from ..kernel_suite import add_output_options, check_known
from ..registry import Suite, register_suite, tuner_in
from ..report import Column

TOKENS = (1, 16, 128, 512, 2048, 8192)
HIDDEN = {2880: "GPT-OSS", 4096: "Llama-3-8B / Qwen3-8B", 7168: "DeepSeek-V3"}
PATHS = (*ALLREDUCE_PATHS, *FUSED_PATHS, *NORM_PATHS)
OURS = ("one_shot", "two_shot")
BASE_ALLREDUCE = ("nccl", "symm_one_shot", "symm_two_shot")
BASE_PIPELINES = tuple(f"{p}+norm" for p in BASE_ALLREDUCE)

COLUMNS = [Column("hidden", "hidden"), Column("tokens", "tokens"),
           Column("bytes", "bytes")] + [Column(f"us_{p}", p, "{:.1f}") for p in PATHS] + [
    Column("ratio_allreduce", "base/ours AR", "{:.2f}"),
    Column("ratio_fused", "base+norm/fused", "{:.2f}"),
    Column("note", "note", align="<")]


def summarize(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its ratios: the best baseline over our best (allreduce alone, and the
    pipeline with the norm against our fused kernels)."""
    ours, base = best(row, OURS), best(row, BASE_ALLREDUCE)
    if ours and base:
        row["ratio_allreduce"] = base[1] / ours[1]
    fused, pipeline = best(row, FUSED_PATHS), best(row, BASE_PIPELINES)
    if fused and pipeline:
        row["ratio_fused"] = pipeline[1] / fused[1]
    errors = [f"{k[6:]}: {v}" for k, v in row.items() if k.startswith("error_")]
    if errors:
        row["note"] = "; ".join(errors)
    return row


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world", type=int, help="ranks (default: every GPU, at least 2)")
    parser.add_argument("--tokens", nargs="+", type=int, help="default: 1 16 128 512 2048 8192")
    parser.add_argument("--hidden", nargs="+", type=int, help="default: 2880 4096 7168")
    parser.add_argument("--paths", nargs="+", help=f"paths to time (default: all of "
                        f"{' '.join(PATHS)})")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                        default="bfloat16")
    parser.add_argument("--calls", type=int, default=20, help="calls per graph replay")
    parser.add_argument("--repeats", type=int, default=15)
    add_output_options(parser, "allreduce")


def run_command(args: argparse.Namespace) -> int:
    from .. import report

    world = world_size(args.world)
    paths = args.paths or list(PATHS)
    check_known("path", paths, PATHS)
    cases = [(t, h) for h in (args.hidden or list(HIDDEN)) for t in (args.tokens or TOKENS)]
    shared = torch.cuda.device_count() < world
    if shared:
        print(f"bench allreduce: {world} ranks share {torch.cuda.device_count()} GPU(s): a "
              "correctness smoke test, the times mean nothing")
    print(f"bench allreduce: {world} ranks, {len(cases)} cases x {len(paths)} paths")
    result = measure(world, cases, args.dtype, paths, args.calls, args.repeats)
    rows = [summarize(r) for r in result["rows"]]
    for path, note in result["notes"].items():
        print(f"  {path}: {note}")
    print(report.format_table(rows, COLUMNS))
    env = report.bench_environment()
    if env.get("gpu_key"):
        env["gpu_key"] = f"{env['gpu_key']}x{world}"
    extra = {"columns": report.column_specs(COLUMNS), "world_size": world,
             "dtype": args.dtype, "ranks_share_gpus": shared, "notes": result["notes"]}
    run = report.make_run("allreduce", env, None, rows, extra)
    if args.json:
        report.write_run_json(args.json, "allreduce", env, None, rows, extra)
    if args.record:
        if shared:
            raise SystemExit("bench allreduce: not recording a run whose ranks share GPUs")
        report.record(run)
    return 0


register_suite(Suite(
    name="allreduce", help="custom allreduce and fused allreduce + add + RMSNorm against "
    "NCCL and torch symmetric memory, several GPUs of this machine",
    run=run_command, add_arguments=add_arguments, records="allreduce",
    quick_args=("--hidden", "4096", "--tokens", "1", "128", "2048"),
    tune=tuner_in("allreduce_tune", help="the allreduce algorithm and fusion per message size "
                  "for one world size (needs one GPU per rank)")))
