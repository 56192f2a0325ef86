"""`fuseinfer tune allreduce`: this machine's `allreduce` entry for one world size (--world,
default every GPU), from the paths of `fuseinfer bench allreduce` timed at hidden 4096 over
1..8192 tokens (the message sizes a decoder's allreduce sees).

Per size, the fastest of one_shot / two_shot / NCCL becomes that size's algorithm; the
fused kernel is kept where it beats every allreduce + fused_add_rmsnorm pipeline timed.
Adjacent sizes with the same choice merge into one rule bounded by the larger size's
bytes; past the largest size timed, NCCL (a rule-less size takes it). The other world
sizes' rules of the current entry are kept. Needs one GPU per rank.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

import torch

from ..allreduce_ranks import best, measure, world_size
from ..tuning import tune_target, write_tune_log

TUNE_TOKENS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
TUNE_HIDDEN = 4096
ALGORITHM_PATHS = {"one_shot": "one_shot", "two_shot": "two_shot", "nccl": "nccl"}
PIPELINES = ("one_shot+norm", "two_shot+norm", "nccl+norm")


def choose(rows: list[dict[str, Any]], world: int) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(allreduce rules, fused rules) for `world` from timed rows (sorted by bytes)."""
    from ...ops.allreduce.allreduce_dispatch import AllreduceRule, FusedRule

    rules: list[AllreduceRule] = []
    fused: list[FusedRule] = []
    for row in sorted(rows, key=lambda r: r["bytes"]):
        winner = best(row, list(ALGORITHM_PATHS))
        if winner is None:
            raise RuntimeError(f"no allreduce path ran at {row['tokens']} tokens")
        algorithm = winner[0]
        if rules and rules[-1].algorithm == algorithm:
            rules[-1] = replace(rules[-1], max_bytes=row["bytes"])
        else:
            rules.append(AllreduceRule(world, row["bytes"], algorithm))
        pipeline = best(row, list(PIPELINES))
        kernel = row.get(f"us_fused_{algorithm}")
        on = algorithm != "nccl" and kernel is not None and (
            pipeline is None or kernel <= pipeline[1])
        if fused and fused[-1].fused == on:
            fused[-1] = replace(fused[-1], max_bytes=row["bytes"])
        else:
            fused.append(FusedRule(world, row["bytes"], on))
    return tuple(rules), tuple(fused)


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world", type=int, help="ranks (default: every GPU)")


def tune_command(args: argparse.Namespace) -> int:
    from ...ops.allreduce.allreduce_dispatch import OP_FAMILY, effective
    world = world_size(args.world)
    if torch.cuda.device_count() < world:
        raise SystemExit(f"tune allreduce: {world} ranks need {world} GPUs, this machine has "
                         f"{torch.cuda.device_count()}")
    target = tune_target(args)
    paths = [*ALGORITHM_PATHS, "fused_one_shot", "fused_two_shot", *PIPELINES]
    result = measure(world, [(t, TUNE_HIDDEN) for t in TUNE_TOKENS], "bfloat16", paths,
                     calls=20, repeats=10)
    rules, fused = choose(result["rows"], world)
    current = effective(target.device)
    source = target.source(f"; {world} ranks, hidden {TUNE_HIDDEN}, tokens "
                           f"{','.join(map(str, TUNE_TOKENS))}")
    entry = replace(current, source=source,
                    rules=tuple(r for r in current.rules if r.world_size != world) + rules,
                    fused_rules=tuple(r for r in current.fused_rules
                                      if r.world_size != world) + fused)
    entry.validate(OP_FAMILY)
    target.write(OP_FAMILY, entry)
    write_tune_log(getattr(args, "log", None), source, result["rows"])
    for rule in rules:
        print(f"  allreduce world {world}: bytes <= {rule.max_bytes}: {rule.algorithm}")
    for f in fused:
        print(f"  fused world {world}: bytes <= {f.max_bytes}: {'fused' if f.fused else 'unfused'}")
    print(f"wrote {target.output}")
    return 0
