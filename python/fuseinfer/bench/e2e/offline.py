"""`fuseinfer bench offline`: the common offline throughput workload.

N requests (default 256) with input and output lengths drawn uniformly from [100, 1024]
(random token ids, ignore_eos, greedy), all submitted at once; reports output tokens per
second, total time and peak KV-cache usage. `--ablate <switch>...` (or `all`) runs the
same workload with and without each switch and prints both. Each engine first runs the
workload once unmeasured, with other random prompts (so the prefix cache cannot help the
timed run; its cached prefixes are dropped before the timed run, so the peak KV usage is
the workload's own): Triton compiles a kernel per specialization of its integer arguments, and a
shorter warm-up left some of those compiles inside the timed run (the first engine of a
2026-12-02 H200 run measured 0.75x an identical second one). `--record` appends the rows to
microbench/results/<gpu>/runtime.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ...runtime.engine_args import SERVING_GC, EngineArgs, add_engine_args, engine_args_from
from ..registry import Suite, register_suite
from .variants import ablation_variants, add_ablate_argument, release_engine, weights_label

# EngineArgs the workload sets itself (the rest are options)
_SET_HERE = ("model", "max_context_len")


@dataclass(frozen=True)
class Workload:
    num_prompts: int = 256
    min_len: int = 100
    max_len: int = 1024
    seed: int = 0

    def requests(self, vocab: int) -> list[tuple[list[int], int]]:
        rng = random.Random(self.seed)
        out = []
        for _ in range(self.num_prompts):
            n_in = rng.randint(self.min_len, self.max_len)
            n_out = rng.randint(self.min_len, self.max_len)
            out.append(([rng.randrange(vocab) for _ in range(n_in)], n_out))
        return out


def run_workload(engine: Any, workload: Workload, progress: bool = True) -> dict[str, Any]:
    from ...runtime.sampling import SamplingParams
    from ..progress import Progress

    reqs = workload.requests(engine.config.vocab_size)
    handles = [engine.add_request(p, SamplingParams(max_new_tokens=n, temperature=0.0,
                                                    ignore_eos=True))
               for p, n in reqs]
    rejected = [h for h in handles if h.finished]
    if rejected:
        raise SystemExit(f"{len(rejected)} requests rejected: {rejected[0].finish_detail}")
    total_out = sum(n for _, n in reqs)
    peak = 0.0
    steps = 0
    start = time.perf_counter()
    produced = done = 0
    with Progress(len(handles), "bench offline") as bar:
        while engine.busy:
            deltas = engine.step()  # one per request that got a token or finished
            steps += 1
            peak = max(peak, engine.stats().kv_usage)
            for d in deltas:
                produced += len(d.new_tokens)
                if d.finish_reason is not None:
                    done += 1
                    if progress:
                        bar.step(f"{done}/{len(handles)} requests done")
    elapsed = time.perf_counter() - start
    assert produced == total_out == sum(len(h.output) for h in handles), "a request was lost"
    return {"requests": len(handles), "input_tokens": sum(len(p) for p, _ in reqs),
            "output_tokens": produced, "seconds": elapsed,
            "output_tok_per_s": produced / elapsed, "steps": steps, "peak_kv_usage": peak,
            "retractions": sum(h.retractions for h in handles)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model folder, or a bundled name: tiny (default), "
                        "qwen3-0.6b, qwen3-8b, llama-3.1-8b (with --load-format dummy)")
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--min-len", type=int, default=100)
    parser.add_argument("--max-len", type=int, default=1024)
    add_engine_args(parser, exclude=_SET_HERE, defaults=SERVING_GC)
    add_ablate_argument(parser)
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the unmeasured warm-up (the same workload on other prompts)")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--record", action="store_true",
                        help="append the rows to microbench/results/<gpu>/runtime.json")
    parser.add_argument("--continue-run", action="store_true",
                        help="with --record: add to the latest recorded runtime run (same "
                        "GPU, driver, torch) instead of starting a new one")


def engine_args(args: argparse.Namespace, **set_here: Any) -> EngineArgs:
    """The configured EngineArgs: model resolved (bundled names), options, then `set_here`."""
    from ...models.bundled import resolve_model

    try:
        return engine_args_from(args, model=str(resolve_model(args.model)), **set_here)
    except ValueError as err:
        raise SystemExit(str(err)) from None


def run_command(args: argparse.Namespace) -> int:
    from ...runtime.engine import Engine

    if args.min_len < 1 or args.max_len < args.min_len or args.num_prompts < 1:
        raise SystemExit("need 1 <= --min-len <= --max-len and --num-prompts >= 1")
    base = engine_args(args, max_context_len=2 * args.max_len)
    model = base.model
    ablate, variants = ablation_variants(base, args.ablate)
    workload = Workload(args.num_prompts, args.min_len, args.max_len)
    results = {}
    for name, variant in variants:
        engine = Engine(variant)
        if not args.no_warmup:  # every kernel specialization the timed run meets, unmeasured
            run_workload(engine, replace(workload, seed=workload.seed + 1), progress=False)
            engine.flush_prefix_cache()  # the timed run starts on an empty pool
        res = run_workload(engine, workload)
        results[name] = res
        print(f"{name}: {res['output_tok_per_s']:.1f} output tok/s, "
              f"{res['seconds']:.2f} s for {res['requests']} requests "
              f"({res['output_tokens']} output tokens), peak KV usage "
              f"{100 * res['peak_kv_usage']:.1f}%, {res['retractions']} retractions",
              flush=True)
        release_engine(engine)
        del engine
    base_rate = results["as configured"]["output_tok_per_s"]
    for name in ablate:
        other = results[f"without {name}"]["output_tok_per_s"]
        print(f"{name}: {base_rate / other:.3f}x (with / without)")
    label = (f"offline {workload.num_prompts} req, in/out U[{workload.min_len}, "
             f"{workload.max_len}]")
    weights = weights_label(base)
    rows = [{"workload": label, "model": Path(model).name, "weights": weights, "variant": name,
             "output_tok_per_s": r["output_tok_per_s"], "seconds": r["seconds"],
             "speedup": base_rate / r["output_tok_per_s"] if name != "as configured" else None,
             "peak_kv_pct": 100 * r["peak_kv_usage"], "steps": r["steps"],
             "retractions": r["retractions"]} for name, r in results.items()]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": model, "workload": workload.__dict__,
                                         "results": results}, indent=1))
        print(f"wrote {args.json}", file=sys.stderr)
    if args.record:
        from ..report import record_results
        from .columns import RUNTIME_COLUMNS

        record_results("runtime", RUNTIME_COLUMNS, rows, continue_last=args.continue_run)
    elif args.continue_run:
        print("--continue-run does nothing without --record", file=sys.stderr)
    return 0


register_suite(Suite(
    name="offline", help="offline throughput workload on the reference runtime (N requests, "
    "lengths uniform in [100, 1024], ignore_eos)", run=run_command,
    add_arguments=add_arguments, needs_gpu=False, records="runtime"))
