"""The decode kernels' variants beside the table's rule (developer tool, not a benchmark
of record): per model, decode shape and cache (bf16, FP8 with a scale per KV head), the
table's rule as it stands, then the CUDA kernel at each (warps, ring stages) that fits and
with two programs per SM as the split target; with --triton also the Triton kernel at
each (block_n, warps, stages, KV heads per program); every variant is checked against
the reference first.

    python microbench/decode_cuda_sweep.py [--models Llama-3-8B GPT-OSS]
        [--shapes 64x4096 64x16384 1x8192 50x300] [--caches bf16 fp8] [--ctas 8 12]
        [--triton] [--match REGEX ...] [--json F]

--ctas adds each variant with its split count aimed at that many programs per SM (a
rule's ctas_per_sm); --match keeps the variants whose name a regular expression finds
(the bf16 table row, which `x bf16` divides, always runs).

Timing as `bench attention` (CUDA-graph replay, medians); TB/s count the KV bytes read
(the FP8 cache's half-size ones for FP8), `x bf16` is the table's bf16 time over the row's.
"""

from __future__ import annotations

import argparse
import itertools
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fuseinfer.bench.gpu_clocks import clock_state
from fuseinfer.bench.report import bench_environment, write_run_json
from fuseinfer.bench.suites.attention import MODELS, checked_time, decode_cases, kv_bytes
from fuseinfer.bench.timing import TimingConfig
from fuseinfer.ops.attention.decode_cuda import MAX_SMEM, cuda_decode_smem_bytes
from fuseinfer.ops.attention.dispatch import AttentionDispatch, attention_table

CONFIG = TimingConfig(repeats=9, target_graph_ms=2.0)
PAGE_SIZE = 64
# (warps, stages, programs per SM for the split count or None: the entry's)
CUDA_VARIANTS = [(w, s, None) for w, s in itertools.product((4, 8), (2, 3, 4))] \
    + [(4, 4, 2), (4, 3, 2)]
# Triton (block_n, warps, stages); each at 1, 2 and 4 KV heads a program where they divide
TRITON_VARIANTS = list(itertools.product((32, 64), (2, 4), (2, 3, 4)))


def variants(table: AttentionDispatch, head_dim: int, batch: int, fp8: bool,
             ctas: Sequence[int] = (), kv_heads: int | None = None
             ) -> list[tuple[str, AttentionDispatch]]:
    """(name, table) per variant: the table's rule, then the CUDA kernel's that fit, then
    (given the model's kv_heads) the Triton kernel's; each also with the split count aimed
    at each of `ctas` programs per SM."""
    rule = table.decode_rule(head_dim, fp8, batch)
    base = replace(rule, max_head_dim=None, max_batch=None)
    label = f"table {rule.kernel} n{rule.block_n} w{rule.num_warps} s{rule.num_stages}"
    trials = [(label, base)] + [(f"{label} ctas{c}", replace(base, ctas_per_sm=c))
                                for c in ctas]
    cuda_variants = CUDA_VARIANTS + [(w, s, c) for w, s, per_sm in CUDA_VARIANTS
                                     if per_sm is None for c in ctas]
    for warps, stages, per_sm in cuda_variants:
        if cuda_decode_smem_bytes(head_dim, 1 if fp8 else 2, warps, stages) > MAX_SMEM:
            continue
        cuda = replace(base, kernel="cuda", kv_heads_per_program=1, num_warps=warps,
                       num_stages=stages, ctas_per_sm=per_sm)
        trials.append((f"cuda w{warps} s{stages}" + (f" ctas{per_sm}" if per_sm else ""),
                       cuda))
    if kv_heads is not None:
        for (block_n, warps, stages), per_program in itertools.product(TRITON_VARIANTS,
                                                                        (1, 2, 4)):
            if kv_heads % per_program:
                continue
            for per_sm in (None, *ctas):
                triton = replace(base, kernel="triton", block_n=block_n, num_warps=warps,
                                 num_stages=stages, kv_heads_per_program=per_program,
                                 ctas_per_sm=per_sm)
                trials.append((f"triton n{block_n} w{warps} s{stages} h{per_program}"
                               + (f" ctas{per_sm}" if per_sm else ""), triton))
    return [(name, replace(table, decode_rules=(r,), fp8_decode_rules=()))
            for name, r in trials]


def run(models: list[str], shapes: list[str], caches: list[str],
        json_path: Path | None = None, ctas: Sequence[int] = (),
        match: Sequence[str] = (), triton: bool = False) -> list[dict[str, Any]]:
    """Every case's variants; with json_path the rows so far are rewritten there after each
    case, so a sweep cut short keeps what it measured."""
    table = attention_table()
    rows: list[dict[str, Any]] = []
    for name, shape in itertools.product(models, shapes):
        m = MODELS[name]
        batch, length = (int(x) for x in shape.split("x"))
        case = decode_cases([m], [batch], [length], extra=())[0]
        bf16_us = None
        for cache in caches:
            fp8 = cache == "fp8"
            for variant, trial in variants(table, m.head_dim, batch, fp8, ctas,
                                           m.kv_heads if triton else None):
                # the bf16 table row always runs: the x bf16 column is over it
                if match and not any(re.search(p, variant) for p in match) \
                        and (fp8 or bf16_us is not None):
                    continue
                err, us = checked_time(case, PAGE_SIZE, torch.bfloat16, CONFIG, fp8=fp8,
                                       table=trial)
                if bf16_us is None and not fp8:
                    bf16_us = us  # the table's bf16 time: the first bf16 row
                row = dict(model=m.name, shape=shape, cache=cache, variant=variant, us=us,
                           tbps=kv_bytes(case, 1 if fp8 else 2) / us / 1e6, rel_err=err,
                           x_bf16=bf16_us / us if bf16_us else None, **clock_state())
                rows.append(row)
                x_bf16 = f"{row['x_bf16']:5.2f}x" if row["x_bf16"] else "      "
                print(f"{m.name:12s} {shape:9s} {cache:4s} {variant:26s} {us:9.1f} us "
                      f"{row['tbps']:5.2f} TB/s {x_bf16}  err {err:.1e}", flush=True)
        if json_path:
            write_run_json(json_path, "decode_cuda_sweep", bench_environment(), None, rows)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["Llama-3-8B", "GPT-OSS"],
                    choices=list(MODELS))
    ap.add_argument("--shapes", nargs="+", default=["64x4096", "64x16384", "1x8192", "50x300"])
    ap.add_argument("--caches", nargs="+", default=["bf16", "fp8"], choices=["bf16", "fp8"])
    ap.add_argument("--ctas", nargs="+", type=int, default=[],
                    help="also aim the split count at these many programs per SM")
    ap.add_argument("--triton", action="store_true",
                    help="also the Triton kernel's (block_n, warps, stages, KV heads) variants")
    ap.add_argument("--match", nargs="+", default=[],
                    help="only variants whose name one of these regular expressions finds")
    ap.add_argument("--json", type=Path, help="write the rows (and the environment) here")
    args = ap.parse_args()
    run(args.models, args.shapes, args.caches, args.json, args.ctas, args.match, args.triton)


if __name__ == "__main__":
    main()
