"""`fuseinfer tune gemm`: pick the `linear` entry's rules (small_batch_linear's plain calls)
on the present GPU and write them into its dispatch table.

Timed the way `fuseinfer bench gemm` times (CUDA-graph replay, weights rotated past L2
where they fit in it), on the dense projections of qwen3-8b and llama-3.1-8b (qkv, o,
gate_up, down; --models for others): for each M bucket the candidate with the lowest
geometric-mean time over those projections wins. Candidates: cuBLAS (torch.mm), the gemv
(M <= 8 buckets; grid sizes, stage counts, warps) and a menu of split_k tiles (block_n x
block_k, programs wanted, k steps per slice, warps, stages).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import torch

from ..progress import Progress
from ..timing import TimingConfig, buffer_sets, l2_cache_bytes
from ..tuning import tune_target, write_tune_log
from .linear import Shape, _timed, shapes

# every bundled dense model's projections and lm_head: a shape left out takes the general
# rules, tuned for the others (the H200 table of 2026-12-01 was tuned on the two 8B
# models' four projections; Qwen3-0.6B's and the lm_heads lost at 16 rows by that)
TUNE_MODELS = ("qwen3-0.6b", "qwen3-8b", "llama-3.1-8b")
TUNE_PROJ = ("qkv", "o", "gate_up", "down", "lm_head")
# (largest M a rule covers, the M timed for it); the last is unbounded (up to MAX_M)
BUCKETS: tuple[tuple[int | None, int], ...] = (
    (1, 1), (2, 2), (4, 4), (8, 8), (16, 16), (32, 32), (None, 64))
# split_k: (block_n, block_k, min_programs, min_k_steps, num_warps, num_stages)
SPLIT_K_CANDIDATES = (
    (64, 128, 264, 4, 4, 4), (32, 128, 264, 4, 4, 4), (32, 256, 264, 2, 4, 3),
    (64, 64, 264, 4, 4, 5), (64, 128, 528, 2, 4, 4), (32, 128, 528, 2, 4, 4),
    (128, 64, 264, 4, 4, 4), (64, 256, 264, 2, 8, 3), (32, 64, 528, 4, 4, 6),
    (16, 256, 528, 2, 4, 3), (64, 128, 132, 4, 4, 4), (128, 128, 264, 2, 8, 3))
GEMV = "gemv"
# a shape gets its own rules where a candidate beats the bucket's pick on it by this much
SHAPE_MARGIN = 0.03
# the gemv: (min_programs, num_stages, num_warps): its grid, the depth of its walk, warps
GEMV_CANDIDATES = ((264, 4, 8), (264, 3, 8), (132, 4, 8), (396, 2, 8), (264, 4, 4))


def candidates(max_m: int | None) -> list[Any]:
    """The LinearRules tried for one bucket: cuBLAS, the gemv while M <= 8, and split_k's
    menu."""
    from ...ops.linear.dispatch import LinearRule
    from ...ops.linear.small_batch_linear import GEMV_MAX_M

    rules = [LinearRule(max_m, "cublas", 64, 128, 264, 4, 4, 4)]
    if max_m is not None and max_m <= GEMV_MAX_M:
        rules += [LinearRule(max_m, GEMV, 64, 128, p, 4, w, st)
                  for p, st, w in GEMV_CANDIDATES]
    return rules + [LinearRule(max_m, "split_k", *c) for c in SPLIT_K_CANDIDATES]


def _geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def tune(shapes_: Sequence[Shape], config: TimingConfig | None = None,
         device: str = "cuda") -> tuple[Any, list[dict[str, Any]]]:
    """The tuned entry (source filled in by the caller) and every timing taken."""
    from ...ops.linear.dispatch import LinearDispatch
    from ...ops.linear.small_batch_linear import GEMV_MAX_K, launch_rule
    from ...ops.triton_launch import use_pdl

    config = config or TimingConfig(repeats=7, target_graph_ms=1.0, warmup_calls=2)
    shapes_ = list({(s.n, s.k): s for s in shapes_}.values())  # one ladder per weight shape
    pdl = use_pdl(None, torch.device(device))
    l2 = l2_cache_bytes() if device == "cuda" else 1 << 20
    log: list[dict[str, Any]] = []
    best: dict[int | None, tuple[float, Any]] = {}
    timed: dict[int | None, dict[Any, list[float]]] = {}  # bucket -> rule -> us per shape
    weights = {s: [torch.randn(s.n, s.k, device=device, dtype=torch.bfloat16) / s.k ** 0.5
                   for _ in range(buffer_sets(s.n * s.k * 2, l2))] for s in shapes_}
    total = sum(len(candidates(max_m)) for max_m, _ in BUCKETS)
    with Progress(total, "tune gemm") as progress:
        for max_m, m in BUCKETS:
            for rule in candidates(max_m):
                progress.step(f"M={m} {rule.kernel} {rule.block_n}x{rule.block_k} "
                              f"p{rule.min_programs} s{rule.min_k_steps} "
                              f"w{rule.num_warps} st{rule.num_stages}")
                if rule.kernel == GEMV and any(s.k > GEMV_MAX_K for s in shapes_):
                    continue
                times = []
                for shape, ws in weights.items():
                    sets = [(torch.randn(m, shape.k, device=device, dtype=torch.bfloat16), w,
                             torch.empty(m, shape.n, device=device, dtype=torch.bfloat16))
                            for w in ws]
                    times.append(_timed(sets, config,
                                        lambda x, w, o, r=rule: launch_rule(o, x, w, r, pdl)))
                log.append({"max_m": max_m, "m": m, "rule": asdict(rule),
                            "shapes": [f"{s.model} {s.proj}" for s in weights], "us": times})
                timed.setdefault(max_m, {})[rule] = times
                score = _geomean(times)
                if max_m not in best or score < best[max_m][0]:
                    best[max_m] = (score, rule)
    general = {max_m: best[max_m][1] for max_m, _ in BUCKETS}
    rules = shape_rules(list(weights), general, timed) + list(general.values())
    return LinearDispatch("", True, tuple(rules)), log


def shape_rules(shapes_: Sequence[Shape], general: dict[int | None, Any],
                timed: dict[int | None, dict[Any, list[float]]]) -> list[Any]:
    """Per shape, the buckets where another candidate beat the bucket's general pick on
    that shape by more than SHAPE_MARGIN: that shape's ladder of rules (its own pick, or
    the general one, at every bucket up to the last such), the shape named in each."""
    out = []
    for j, shape in enumerate(shapes_):
        ladder = []
        for max_m, _ in BUCKETS:
            pick = general[max_m]
            ours = timed[max_m][pick][j]
            rule, us = min(((r, t[j]) for r, t in timed[max_m].items()), key=lambda p: p[1])
            own = us < ours * (1 - SHAPE_MARGIN)
            ladder.append((max_m, rule if own else pick, own))
        last = max((i for i, (_, _, own) in enumerate(ladder) if own), default=-1)
        out += [replace(rule, max_m=max_m, n=shape.n, k=shape.k)
                for max_m, rule, _ in ladder[:last + 1]]
    return out


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", help="models whose projections to tune on "
                        f"(default: {' '.join(TUNE_MODELS)})")


def tune_command(args: argparse.Namespace) -> int:
    """`fuseinfer tune gemm`: tune, write the `linear` entry, report."""
    target = tune_target(args)
    models = args.models or list(TUNE_MODELS)
    chosen = [s for s in shapes(models) if s.proj in TUNE_PROJ]  # tune() times each shape once
    entry, log = tune(chosen)
    source = target.source(f"; small_batch_linear on the {', '.join(TUNE_PROJ)} "
                           f"projections of {', '.join(models)} at M "
                           f"{','.join(str(m) for _, m in BUCKETS)}")
    # the rules are tuned here; the SiLU-prologue bound (measured end to end) is kept
    from ...ops.linear.dispatch import effective

    entry = replace(entry, source=source, gemv_silu_max_k=effective().gemv_silu_max_k)
    target.write("linear", entry)
    for rule in entry.rules:
        print(f"  linear: M <= {rule.max_m}: {rule}")
    print(f"wrote {target.output}")
    write_tune_log(args.log, source, log)
    return 0
