"""`fuseinfer bench offline`: the common offline throughput workload.

N requests (default 256) with input and output lengths drawn uniformly from [100, 1024]
(random token ids, ignore_eos, greedy), all submitted at once; reports output tokens per
second, total time and peak KV-cache usage. `--ablate <switch>...` (or `all`) runs the
same workload with and without each switch and prints both. A short unmeasured warm-up
comes first, so kernel compilation is not timed. `--record` appends the rows to
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

# switch name -> the EngineArgs field that turns it off
ABLATIONS = {"fused-rope-kv": "disable_fused_rope_kv",
             "fused-add-rmsnorm": "disable_fused_add_rmsnorm",
             "fused-qk-norm": "disable_fused_qk_norm", "fused-silu-mul": "disable_fused_silu_mul",
             "small-batch-gemv": "disable_small_batch_gemv", "pdl": "disable_pdl",
             "cuda-graph": "disable_cuda_graph", "overlap-schedule": "disable_overlap_schedule",
             "radix-cache": "disable_radix_cache"}


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
    from ..bench.progress import Progress
    from .sampling import SamplingParams

    reqs = workload.requests(engine.config.vocab_size)
    handles = [engine.scheduler.new_request(p, SamplingParams(max_new_tokens=n,
                                                              temperature=0.0,
                                                              ignore_eos=True))
               for p, n in reqs]
    rejected = [h for h in handles if h.finished]
    if rejected:
        raise SystemExit(f"{len(rejected)} requests rejected: {rejected[0].finish_reason}")
    total_out = sum(n for _, n in reqs)
    peak = 0.0
    steps = 0
    start = time.perf_counter()
    with Progress(len(handles), "bench offline") as bar:
        done = 0
        while engine.busy:
            finished = engine.step()
            steps += 1
            peak = max(peak, engine.kv.usage())
            for _ in finished:
                done += 1
                if progress:
                    bar.step(f"{done}/{len(handles)} requests done")
    elapsed = time.perf_counter() - start
    produced = sum(len(h.output) for h in handles)
    assert produced == total_out, "a request was lost"
    return {"requests": len(handles), "input_tokens": sum(len(p) for p, _ in reqs),
            "output_tokens": produced, "seconds": elapsed,
            "output_tok_per_s": produced / elapsed, "steps": steps, "peak_kv_usage": peak,
            "retractions": sum(h.retractions for h in handles)}


def add_offline_parser(sub: Any) -> None:
    p = sub.add_parser("offline", help="offline throughput workload on the reference runtime "
                       "(N requests, lengths uniform in [100, 1024], ignore_eos)")
    p.add_argument("--model", help="model folder, or a bundled name: tiny (default), "
                   "qwen3-0.6b, qwen3-8b, llama-3.1-8b (with --load-format dummy)")
    p.add_argument("--load-format", choices=["auto", "dummy"], default="auto")
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--min-len", type=int, default=100)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--device", default="auto")
    p.add_argument("--page-size", type=int, default=64)
    p.add_argument("--max-running-requests", type=int, default=256)
    p.add_argument("--cuda-graph-max-bs", type=int, default=256)
    p.add_argument("--mem-fraction-static", type=float, default=0.85)
    add_ablate_argument(p)
    p.add_argument("--no-warmup", action="store_true", help="skip the unmeasured warm-up")
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    p.add_argument("--record", action="store_true",
                   help="append the rows to microbench/results/<gpu>/runtime.json")
    p.set_defaults(handler=_run_offline)


def release_engine(engine: Any) -> None:
    """Free an engine's device memory before the next one sizes its KV pool from what is
    free (frozen objects are never collected, so unfreeze first)."""
    import gc

    import torch

    engine.close()
    gc.unfreeze()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def add_ablate_argument(parser: Any) -> None:
    parser.add_argument("--ablate", nargs="+", choices=[*ABLATIONS, "all"], default=[],
                        help="also run without each of these switches (all: every one)")


def ablation_variants(base: Any, requested: list[str]) -> tuple[list[str], list[tuple[str, Any]]]:
    """(the switches to ablate, [(variant name, EngineArgs)]): the configured engine first,
    then one without each switch."""
    ablate = list(ABLATIONS) if "all" in requested else list(dict.fromkeys(requested))
    return ablate, [("as configured", base)] + [
        (f"without {name}", replace(base, **{ABLATIONS[name]: True})) for name in ablate]


def _run_offline(args: argparse.Namespace) -> int:
    from ..models.bundled import resolve_model
    from .engine import Engine, EngineArgs

    if args.min_len < 1 or args.max_len < args.min_len or args.num_prompts < 1:
        raise SystemExit("need 1 <= --min-len <= --max-len and --num-prompts >= 1")
    model = str(resolve_model(args.model))
    base = EngineArgs(model=model, device=args.device, load_format=args.load_format,
                      page_size=args.page_size,
                      max_running_requests=args.max_running_requests,
                      max_context_len=2 * args.max_len,
                      cuda_graph_max_bs=args.cuda_graph_max_bs,
                      mem_fraction_static=args.mem_fraction_static)
    ablate, variants = ablation_variants(base, args.ablate)
    workload = Workload(args.num_prompts, args.min_len, args.max_len)
    results = {}
    for name, engine_args in variants:
        engine = Engine(engine_args)
        if not args.no_warmup:  # compile kernels at a few shapes, unmeasured
            run_workload(engine, Workload(24, min(5, args.min_len), min(300, args.max_len),
                                          seed=1), progress=False)
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
    rows = [{"workload": label, "model": Path(model).name, "variant": name,
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
        from ..bench.cli import record_results
        from .bench_columns import RUNTIME_COLUMNS

        record_results("runtime", RUNTIME_COLUMNS, rows)
    return 0
