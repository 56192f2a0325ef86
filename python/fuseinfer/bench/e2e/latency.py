"""`fuseinfer bench latency`: steady-state decode time per token at a small batch.

Each request gets a random prompt of --context tokens and decodes --new-tokens more
(greedy, ignore_eos). The clock starts when every request has its first token (prefill
done) and stops when the last finishes, so the figure is the decode step period the
caller sees: scheduling, sampling and the host round trip included. The median of
--repeats runs is reported, after one unmeasured warm-up run.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ...runtime.engine_args import SERVING_GC, add_engine_args
from ..registry import Suite, register_suite
from .offline import engine_args
from .variants import ablation_variants, add_ablate_argument, release_engine, weights_label

# EngineArgs sized from --batch, --context and --new-tokens (the rest are options)
_SET_HERE = ("model", "max_context_len", "max_running_requests", "cuda_graph_max_bs")


def decode_ms_per_token(engine: Any, context: int, new_tokens: int, batch: int,
                        seed: int) -> float:
    """One run: milliseconds per decode step once every request has its first token."""
    from ...runtime.sampling import SamplingParams

    rng = random.Random(seed)
    vocab = engine.config.vocab_size
    params = SamplingParams(max_new_tokens=new_tokens + 1, temperature=0.0, ignore_eos=True)
    reqs = [engine.add_request([rng.randrange(vocab) for _ in range(context)], params)
            for _ in range(batch)]
    rejected = [r for r in reqs if r.finished]
    if rejected:
        raise SystemExit(f"request rejected: {rejected[0].finish_detail}")
    got = {r.rid: 0 for r in reqs}  # real tokens per request, from the step deltas
    start, first = 0.0, 0
    while engine.busy:
        for d in engine.step():
            got[d.rid] += len(d.new_tokens)
        if not first and all(got.values()):
            start, first = time.perf_counter(), min(got.values())
    elapsed = time.perf_counter() - start
    steps = min(got.values()) - first
    if steps < 1:
        raise SystemExit("--new-tokens too small to time a decode step")
    return 1e3 * elapsed / steps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model folder or bundled name (see bench offline)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--context", type=int, default=1024, help="prompt tokens per request")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    add_engine_args(parser, exclude=_SET_HERE, defaults=SERVING_GC)
    add_ablate_argument(parser)
    parser.add_argument("--record", action="store_true",
                        help="add the rows to microbench/results/<gpu>/runtime.json")
    parser.add_argument("--continue-run", action="store_true",
                        help="with --record: add to the latest recorded runtime run (same "
                        "GPU, driver, torch) instead of starting a new one")


def run_command(args: argparse.Namespace) -> int:
    from ...runtime.engine import Engine

    if min(args.batch, args.context, args.new_tokens, args.repeats) < 1:
        raise SystemExit("--batch, --context, --new-tokens and --repeats must be >= 1")
    base = engine_args(args, max_running_requests=max(args.batch, 8),
                       max_context_len=args.context + args.new_tokens + 16,
                       cuda_graph_max_bs=max(args.batch, 8))
    _, variants = ablation_variants(base, args.ablate)
    label = f"decode batch {args.batch}, {args.context}-token context"
    rows = []
    for name, variant in variants:
        engine = Engine(variant)
        decode_ms_per_token(engine, args.context, min(args.new_tokens, 32), args.batch, 99)
        runs = [decode_ms_per_token(engine, args.context, args.new_tokens, args.batch, i)
                for i in range(args.repeats)]
        ms = statistics.median(runs)
        print(f"{label}, {name}: {ms:.3f} ms/token (runs: "
              f"{', '.join(f'{r:.3f}' for r in runs)})", flush=True)
        rows.append({"workload": label, "model": Path(base.model).name,
                     "weights": weights_label(base), "variant": name,
                     "ms_per_token": ms, "output_tok_per_s": 1e3 * args.batch / ms,
                     "steps": args.new_tokens})
        release_engine(engine)
        del engine
    for row in rows[1:]:
        row["speedup"] = row["ms_per_token"] / rows[0]["ms_per_token"]
        print(f"{row['variant'][len('without '):]}: {row['speedup']:.3f}x (with / without)")
    if args.record:
        from ..report import record_results
        from .columns import RUNTIME_COLUMNS

        record_results("runtime", RUNTIME_COLUMNS, rows, continue_last=args.continue_run)
    elif args.continue_run:
        print("--continue-run does nothing without --record", file=sys.stderr)
    return 0


register_suite(Suite(
    name="latency", help="decode ms per token at a small batch on the reference runtime "
    "(prefill excluded)", run=run_command, add_arguments=add_arguments, needs_gpu=False,
    records="runtime"))
