"""The sm_90a prefill kernel's variants beside the portable kernel (developer tool, not a
benchmark of record): per model and prefill shape, the portable kernel (the table's portable
rule at the head dim), then the sm_90a kernel at each (block_m, block_n,
stages) that fits (block_m 192, three consumers, at head_dim 64 only), pingpong and
persistent off and on (persistent: the kernel's alternating waves, and "longest-first", the
plan's dealt schedule where its cost model says it pays); every variant is checked against
the reference first.

    python microbench/prefill_hopper_sweep.py [--models Llama-3-8B GPT-OSS]
        [--shapes 1x4k 4x2k 1x16k] [--windows 512 2048] [--match REGEX ...] [--json F]

--match keeps the variants whose name one of the regular expressions finds (names as
printed: "portable", "sm90a m192 n128 s2 persistent"). --windows adds GPT-OSS at 1 x 16k
with sliding windows of those many keys (the table's hopper_prefill_min_window comes from
where the kernel starts to win). Timing as `bench attention` (CUDA-graph replay, medians);
TFLOP/s count the keys each query sees.
"""

from __future__ import annotations

import argparse
import itertools
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fuseinfer.bench.gpu_clocks import clock_state
from fuseinfer.bench.report import bench_environment, write_run_json
from fuseinfer.bench.suites.attention import MODELS, PREFILL, checked_time, flops, prefill_cases
from fuseinfer.bench.timing import TimingConfig
from fuseinfer.ops.attention.dispatch import (
    ATTENTION_BUILTIN,
    AttentionDispatch,
    attention_table,
)
from fuseinfer.ops.attention.prefill_hopper import (
    BLOCK_MS,
    HEAD_DIMS,
    SMEM_BYTES,
    block_m_problem,
    consumer_warps,
    smem_bytes,
)

CONFIG = TimingConfig(repeats=9, target_graph_ms=2.0)
PAGE_SIZE = 64


def variants(table: AttentionDispatch, head_dim: int) -> list[tuple[str, AttentionDispatch]]:
    """(name, table) per variant: the portable kernel, then the sm_90a ones that fit."""
    rule = table.prefill_rule(head_dim)
    # the table's portable rule at the head dim, else the built-in one's
    portable = table.portable_prefill_rule(head_dim)
    if portable.kernel != "triton":
        portable = ATTENTION_BUILTIN.prefill_rule(head_dim)
    # no window bound: the sweep is what measures where the sm_90a kernel starts to win
    table = replace(table, hopper_prefill_min_window=0)
    out = [("portable", replace(table, prefill_rules=(replace(portable, max_head_dim=None),)))]
    if head_dim not in HEAD_DIMS:
        return out
    for block_m, block_n, stages, pingpong, persistent in itertools.product(
            BLOCK_MS, (64, 128), (2, 3, 4), (False, True), (False, True)):
        if block_m_problem(block_m, head_dim) is not None \
                or smem_bytes(head_dim, block_n, stages, block_m) > SMEM_BYTES:
            continue
        for dealt in (False, True) if persistent else (False,):
            hopper = replace(rule, max_head_dim=head_dim, block_m=block_m, block_n=block_n,
                             num_warps=consumer_warps(block_m), num_stages=stages, tma=True,
                             kernel="hopper", pingpong=pingpong, persistent=persistent,
                             longest_first=dealt)
            name = f"sm90a m{block_m} n{block_n} s{stages}{' pingpong' if pingpong else ''}" \
                f"{' persistent' if persistent else ''}{' longest-first' if dealt else ''}"
            # the portable rule after it: a 192-row rule falls back to a rule of its own
            out.append((name, replace(table, prefill_rules=(hopper,
                                                            out[0][1].prefill_rules[0]))))
    return out


def run(models: list[str], shapes: list[str], windows: list[int],
        json_path: Path | None = None, match: list[str] | None = None
        ) -> list[dict[str, Any]]:
    """Every case's variants; with json_path the rows so far are rewritten there after each
    case, so a sweep cut short keeps what it measured."""
    table = attention_table()
    gpt_oss = MODELS["GPT-OSS"]
    cases = prefill_cases([MODELS[m] for m in models], shapes) + prefill_cases(
        [replace(gpt_oss, name=f"GPT-OSS-win{w}", window_left=w) for w in windows], ["1x16k"])
    rows = []
    for case in cases:
        m = case.model
        for name, trial in variants(table, m.head_dim):
            if match and not any(re.search(p, name) for p in match):
                continue
            err, us = checked_time(case, PAGE_SIZE, torch.bfloat16, CONFIG, table=trial)
            row = dict(model=m.name, window_left=m.window_left, shape=case.shape,
                       variant=name, us=us, tflops=flops(case) / us / 1e6, rel_err=err,
                       **clock_state())
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
    ap.add_argument("--match", nargs="+", help="only variants whose name these find")
    ap.add_argument("--json", type=Path, help="write the rows (and the environment) here")
    args = ap.parse_args()
    run(args.models, args.shapes, args.windows, args.json, args.match)


if __name__ == "__main__":
    main()
