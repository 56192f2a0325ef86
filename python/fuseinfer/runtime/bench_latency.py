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

from .bench_offline import ablation_variants, add_ablate_argument, release_engine


def decode_ms_per_token(engine: Any, context: int, new_tokens: int, batch: int,
                        seed: int) -> float:
    """One run: milliseconds per decode step once every request has its first token."""
    from .sampling import SamplingParams

    rng = random.Random(seed)
    vocab = engine.config.vocab_size
    params = SamplingParams(max_new_tokens=new_tokens + 1, temperature=0.0, ignore_eos=True)
    reqs = [engine.scheduler.new_request([rng.randrange(vocab) for _ in range(context)],
                                         params) for _ in range(batch)]
    if any(r.finished for r in reqs):
        raise SystemExit(f"request rejected: {reqs[0].finish_reason}")
    start, first = 0.0, 0
    while engine.busy:
        engine.step()
        if not first and all(r.output and r.output[0] >= 0 for r in reqs):  # not a placeholder
            start, first = time.perf_counter(), min(len(r.output) for r in reqs)
    elapsed = time.perf_counter() - start
    steps = min(len(r.output) for r in reqs) - first
    if steps < 1:
        raise SystemExit("--new-tokens too small to time a decode step")
    return 1e3 * elapsed / steps


def add_latency_parser(sub: Any) -> None:
    p = sub.add_parser("latency", help="decode ms per token at a small batch on the "
                       "reference runtime (prefill excluded)")
    p.add_argument("--model", help="model folder or bundled name (see bench offline)")
    p.add_argument("--load-format", choices=["auto", "dummy"], default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--context", type=int, default=1024, help="prompt tokens per request")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--page-size", type=int, default=64)
    add_ablate_argument(p)
    p.add_argument("--record", action="store_true",
                   help="add the rows to microbench/results/<gpu>/runtime.json")
    p.add_argument("--continue-run", action="store_true",
                   help="with --record: add to the latest recorded runtime run (same GPU, "
                   "driver, torch) instead of starting a new one")
    p.set_defaults(handler=_run_latency)


def _run_latency(args: argparse.Namespace) -> int:
    from ..models.bundled import resolve_model
    from .engine import Engine, EngineArgs

    if min(args.batch, args.context, args.new_tokens, args.repeats) < 1:
        raise SystemExit("--batch, --context, --new-tokens and --repeats must be >= 1")
    model = str(resolve_model(args.model))
    base = EngineArgs(model=model, device=args.device, load_format=args.load_format,
                      page_size=args.page_size, max_running_requests=max(args.batch, 8),
                      max_context_len=args.context + args.new_tokens + 16,
                      cuda_graph_max_bs=max(args.batch, 8))
    _, variants = ablation_variants(base, args.ablate)
    label = f"decode batch {args.batch}, {args.context}-token context"
    rows = []
    for name, engine_args in variants:
        engine = Engine(engine_args)
        decode_ms_per_token(engine, args.context, min(args.new_tokens, 32), args.batch, 99)
        runs = [decode_ms_per_token(engine, args.context, args.new_tokens, args.batch, i)
                for i in range(args.repeats)]
        ms = statistics.median(runs)
        print(f"{label}, {name}: {ms:.3f} ms/token (runs: "
              f"{', '.join(f'{r:.3f}' for r in runs)})", flush=True)
        rows.append({"workload": label, "model": Path(model).name, "variant": name,
                     "ms_per_token": ms, "output_tok_per_s": 1e3 * args.batch / ms,
                     "steps": args.new_tokens})
        release_engine(engine)
        del engine
    for row in rows[1:]:
        row["speedup"] = row["ms_per_token"] / rows[0]["ms_per_token"]
        print(f"{row['variant'][len('without '):]}: {row['speedup']:.3f}x (with / without)")
    if args.record:
        from ..bench.cli import record_results
        from .bench_columns import RUNTIME_COLUMNS

        record_results("runtime", RUNTIME_COLUMNS, rows, continue_last=args.continue_run)
    elif args.continue_run:
        print("--continue-run does nothing without --record", file=sys.stderr)
    return 0
