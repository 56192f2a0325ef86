"""The sm_90a prefill kernel's variants beside the portable kernel (developer tool, not a
benchmark of record): per model and prefill shape, the portable kernel (the table's rule
with its kernel set to "triton"), then the sm_90a kernel at each (block_n, stages) that
fits, pingpong and persistent off and on; every variant is checked against the reference
first.

    python microbench/prefill_hopper_sweep.py [--models Llama-3-8B GPT-OSS]
        [--shapes 1x4k 4x2k 1x16k] [--windows 512 2048] [--json F]

--windows adds GPT-OSS at 1 x 16k with sliding windows of those many keys (the table's
hopper_prefill_min_window comes from where the kernel starts to win). Timing as `bench
attention` (CUDA-graph replay, medians); TFLOP/s count the keys each query sees.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fuseinfer.bench.report import bench_environment, write_run_json
from fuseinfer.bench.suites.attention import MODELS, PREFILL, Case, checked_time, flops
from fuseinfer.bench.timing import TimingConfig
from fuseinfer.ops.attention.dispatch import (
    ATTENTION_BUILTIN,
    AttentionDispatch,
    attention_table,
)
from fuseinfer.ops.attention.prefill_hopper import HEAD_DIMS, SMEM_BYTES, smem_bytes

CONFIG = TimingConfig(repeats=9, target_graph_ms=2.0)
PAGE_SIZE = 64


def variants(table: AttentionDispatch, head_dim: int) -> list[tuple[str, AttentionDispatch]]:
    """(name, table) per variant: the portable kernel, then the sm_90a ones that fit."""
    rule = table.prefill_rule(head_dim)
    # the table's rule if it is the portable kernel's, else the built-in one's
    portable = rule if rule.kernel == "triton" else ATTENTION_BUILTIN.prefill_rule(head_dim)
    # no window bound: the sweep is what measures where the sm_90a kernel starts to win
    table = replace(table, hopper_prefill_min_window=0)
    out = [("portable", replace(table, prefill_rules=(replace(portable, max_head_dim=None),)))]
    if head_dim not in HEAD_DIMS:
        return out
    for block_n, stages, pingpong, persistent in itertools.product(
            (64, 128), (2, 3, 4), (False, True), (False, True)):
        if smem_bytes(head_dim, block_n, stages) > SMEM_BYTES:
            continue
        hopper = replace(rule, max_head_dim=None, block_m=128, block_n=block_n, num_warps=8,
                         num_stages=stages, tma=True, kernel="hopper", pingpong=pingpong,
                         persistent=persistent)
        name = f"sm90a n{block_n} s{stages}{' pingpong' if pingpong else ''}" \
            f"{' persistent' if persistent else ''}"
        out.append((name, replace(table, prefill_rules=(hopper,))))
    return out


def run(models: list[str], shapes: list[str], windows: list[int],
        json_path: Path | None = None) -> list[dict[str, Any]]:
    """Every case's variants; with json_path the rows so far are rewritten there after each
    case, so a sweep cut short keeps what it measured."""
    table = attention_table()
    cases = [Case("prefill", MODELS[m], s, tuple(PREFILL[s][0]), tuple(PREFILL[s][1]))
             for m in models for s in shapes]
    gpt_oss = MODELS["GPT-OSS"]
    cases += [Case("prefill", replace(gpt_oss, name=f"GPT-OSS-win{w}", window_left=w),
                   "1x16k", (16384,), (16384,)) for w in windows]
    rows = []
    for case in cases:
        m = case.model
        for name, trial in variants(table, m.head_dim):
            err, us = checked_time(case, PAGE_SIZE, torch.bfloat16, CONFIG, table=trial)
            row = dict(model=m.name, window_left=m.window_left, shape=case.shape,
                       variant=name, us=us, tflops=flops(case) / us / 1e6, rel_err=err)
            rows.append(row)
            print(f"{m.name:16s} {case.shape:16s} {name:24s} {us:9.1f} us "
                  f"{row['tflops']:5.0f} TFLOP/s  err {err:.1e}", flush=True)
        if json_path:
            write_run_json(json_path, "prefill_hopper_sweep", bench_environment(), None, rows)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["Llama-3-8B", "GPT-OSS"])
    ap.add_argument("--shapes", nargs="+", default=["1x4k", "4x2k", "1x16k"],
                    choices=list(PREFILL))
    ap.add_argument("--windows", nargs="*", type=int, default=[])
    ap.add_argument("--json", type=Path, help="write the rows (and the environment) here")
    args = ap.parse_args()
    run(args.models, args.shapes, args.windows, args.json)


if __name__ == "__main__":
    main()
