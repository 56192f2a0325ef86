"""`fuseinfer bench latency`: steady-state decode time per token at a small batch.

Each request gets a random prompt of --context tokens and decodes --new-tokens more
(greedy, ignore_eos). The clock starts when every request has its first token (prefill
done) and stops when the last finishes, so the figure is the decode step period the
caller sees: scheduling, sampling and the host round trip included. The median of
--repeats runs is reported, after one unmeasured warm-up run. Several --batch sizes run on
one engine per variant (sized for the largest).

Beside each time, its floor (bench/e2e/decode_floor.py): the weight bytes a step reads
over the measured copy bandwidth (`floor ms`, `x floor` = time / floor), and the same
with every request's KV cache at the context added (`floor+KV ms`). On the CPU, or for a
model with routed experts, the floors are left empty.
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
    parser.add_argument("--batch", type=int, nargs="+", default=[1],
                        help="requests decoding together; several: one row each (default: 1)")
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


def _copy_gbps(device: str) -> float | None:
    """The GPU's copy bandwidth (cached ceiling, else measured); None off the GPU."""
    import torch

    on_gpu = device.startswith("cuda") or device == "auto"  # auto: cuda where there is one
    if not (on_gpu and torch.cuda.is_available()):
        return None
    from ..ceilings import copy_bandwidth_gbps

    return copy_bandwidth_gbps()


def floors(engine: Any, batch: int, context: int, copy_gbps: float | None
           ) -> dict[str, float | None]:
    """The step's floors in ms: weights only, and weights plus the KV cache read."""
    from .decode_floor import floor_ms, kv_bytes, weight_bytes

    runner = engine.runner
    weights = weight_bytes(runner.model.weights)
    kv_item = runner.kv_cache.k[0].element_size()
    with_kv = None if weights is None else \
        weights + kv_bytes(engine.config, kv_item, batch, context)
    return {"floor_ms": floor_ms(weights, copy_gbps),
            "floor_kv_ms": floor_ms(with_kv, copy_gbps)}


def run_command(args: argparse.Namespace) -> int:
    from ...runtime.engine import Engine

    top = max(args.batch)
    if min(min(args.batch), args.context, args.new_tokens, args.repeats) < 1:
        raise SystemExit("--batch, --context, --new-tokens and --repeats must be >= 1")
    base = engine_args(args, max_running_requests=max(top, 8),
                       max_context_len=args.context + args.new_tokens + 16,
                       cuda_graph_max_bs=max(top, 8))
    _, variants = ablation_variants(base, args.ablate)
    copy_gbps = _copy_gbps(str(base.device))
    rows = []
    for name, variant in variants:
        engine = Engine(variant)
        for batch in args.batch:
            label = f"decode batch {batch}, {args.context}-token context"
            decode_ms_per_token(engine, args.context, min(args.new_tokens, 32), batch, 99)
            runs = [decode_ms_per_token(engine, args.context, args.new_tokens, batch, i)
                    for i in range(args.repeats)]
            ms = statistics.median(runs)
            row = {"workload": label, "model": Path(base.model).name,
                   "weights": weights_label(base), "variant": name, "batch": batch,
                   "ms_per_token": ms, "output_tok_per_s": 1e3 * batch / ms,
                   "steps": args.new_tokens, **floors(engine, batch, args.context, copy_gbps)}
            if row["floor_ms"]:
                row["vs_floor"] = ms / row["floor_ms"]
            floor_text = "" if not row["floor_ms"] else \
                f"; floor {row['floor_ms']:.3f} ms ({row['vs_floor']:.2f}x), with KV " \
                f"{row['floor_kv_ms']:.3f} ms"
            print(f"{label}, {name}: {ms:.3f} ms/token (runs: "
                  f"{', '.join(f'{r:.3f}' for r in runs)}){floor_text}", flush=True)
            rows.append(row)
        release_engine(engine)
        del engine
    first = {r["batch"]: r for r in rows if r["variant"] == variants[0][0]}
    for row in rows:
        if row["variant"] != variants[0][0]:
            row["speedup"] = row["ms_per_token"] / first[row["batch"]]["ms_per_token"]
            print(f"batch {row['batch']}, {row['variant'][len('without '):]}: "
                  f"{row['speedup']:.3f}x (with / without)")
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
