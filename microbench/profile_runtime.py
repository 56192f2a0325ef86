"""Where a decode step's time goes on the GPU (developer tool, not a benchmark of record).

    python microbench/profile_runtime.py [--model qwen3-0.6b] [--offline-prompts 256]

1. GPU time of one decode graph replay at several batch sizes (1k context, pages placed
   at random), CUDA events over 50 replays.
2. The kernels of one batch-1 decode step (torch.profiler, eager forward), by GPU time.
3. The engine loop at batch 1: host time of each part of a step.
4. The offline workload with every step timed, split by prefill/decode and batch size.
5. (--only count) The kernels one decode step launches, per variant (the engine as
   configured and without each --ablate switch): launches per step, GPU µs per step by
   kernel, and both per layer; --json writes them.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import time
from functools import partial
from typing import Any

import torch

from fuseinfer.bench.e2e.offline import Workload, run_workload
from fuseinfer.bench.timing import time_calls
from fuseinfer.runtime.engine import Engine, EngineArgs
from fuseinfer.runtime.engine_args import SERVING_GC


def replay_times(engine: Engine, context: int) -> None:
    g = engine.runner.graphs
    alloc = engine.allocator
    ps = engine.args.page_size
    for bs in [b for b in (1, 8, 32, 64, 128, 160, 256) if b <= g.max_bs]:
        pages = alloc.alloc(bs * (-(-context // ps)))
        random.Random(0).shuffle(pages)
        width = engine.reqs.page_table.size(1)
        table = torch.zeros(bs, width, dtype=torch.int32)
        per = -(-context // ps)
        for i in range(bs):
            table[i, :per] = torch.tensor(pages[i * per:(i + 1) * per])
        table = table.cuda()
        rows = torch.arange(bs, device="cuda")
        ids = torch.randint(0, 1000, (bs,), device="cuda")
        pos = [context - 1] * bs
        loc = [pages[i * per + per - 1] * ps for i in range(bs)]
        for _ in range(3):
            g.replay(g.prepare(ids, pos, loc, table, rows, [context] * bs))
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(50):
            g.graphs[g.padded_size(bs)].graph.replay()
        end.record()
        torch.cuda.synchronize()
        gpu = start.elapsed_time(end) / 50
        t = time.perf_counter()
        for _ in range(50):
            g.replay(g.prepare(ids, pos, loc, table, rows, [context] * bs))
        torch.cuda.synchronize()
        full = (time.perf_counter() - t) / 50 * 1e3
        print(f"replay bs={bs:4d} ctx={context}: graph {gpu:.3f} ms GPU, "
              f"prepare() + replay() {full:.3f} ms wall")
        alloc.free(pages)


def kernel_profile(engine: Engine, context: int, batch: int = 1) -> None:
    """The kernels of decode steps at `batch` requests of `context` tokens, by GPU time."""
    from torch.profiler import ProfilerActivity, profile

    from fuseinfer.runtime.sampling import SamplingParams

    print(f"kernels of 5 eager decode steps, batch {batch}, context {context}:")
    reqs = [engine.add_request([10 + (i * 7 + j) % 1000 for j in range(context)],
                               SamplingParams(max_new_tokens=40, temperature=0.0,
                                              ignore_eos=True))
            for i in range(batch)]
    runner = engine.runner
    graphs, runner.graphs = runner.graphs, None  # eager: the profiler sees each kernel
    for _ in range(10):
        engine.step()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            engine.step()
        torch.cuda.synchronize()
    runner.graphs = graphs
    while engine.busy:
        engine.step()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30))
    assert all(r.finished for r in reqs)


def step_kernels(engine: Engine, context: int, batch: int, steps: int = 5) -> dict[str, Any]:
    """The kernels of `steps` eager decode steps at `batch` requests (the profiler sees each
    launch; the decode graph replays the same ones): per kernel name, launches and GPU µs
    per step."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from fuseinfer.runtime.sampling import SamplingParams

    reqs = [engine.add_request([10 + (i * 7 + j) % 1000 for j in range(context)],
                               SamplingParams(max_new_tokens=steps + 12, temperature=0.0,
                                              ignore_eos=True))
            for i in range(batch)]
    runner = engine.runner
    graphs, runner.graphs = runner.graphs, None
    while any(r.generated == 0 for r in reqs):  # every prefill done (chunks included)
        engine.step()
    for _ in range(2):  # and a couple of decode steps
        engine.step()
    on_gpu = torch.cuda.is_available()  # off it (a smoke run): the CPU ops instead
    with profile(activities=[ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            engine.step()
        if on_gpu:
            torch.cuda.synchronize()
    runner.graphs = graphs
    while engine.busy:
        engine.step()
    kernels: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.name.startswith(("Memcpy", "Memset")):
            continue  # copies and fills: not kernel launches
        if event.device_type == (DeviceType.CUDA if on_gpu else DeviceType.CPU):
            entry = kernels[event.name[:120]]
            entry[0] += 1 / steps
            entry[1] += (event.device_time if on_gpu else event.cpu_time) / steps
    layers = engine.config.num_layers
    by_name = sorted(kernels.items(), key=lambda kv: -kv[1][1])
    return {"batch": batch, "context": context, "layers": layers,
            "launches_per_step": round(sum(v[0] for v in kernels.values()), 2),
            "gpu_us_per_step": sum(v[1] for v in kernels.values()),
            "kernels": [{"name": n, "per_step": round(c, 2), "per_layer": round(c / layers, 2),
                         "us_per_step": us, "us_per_layer": us / layers}
                        for n, (c, us) in by_name]}


def kernel_counts(model: str, context: int, batches: list[int], ablate: list[str],
                  extra: dict[str, Any]) -> list[dict[str, Any]]:
    """step_kernels for the engine as configured and without each ablated switch."""
    from fuseinfer.bench.e2e.variants import ablation_variants, release_engine

    base = EngineArgs(model=model, load_format="dummy", max_context_len=context + 64,
                      cuda_graph_max_bs=max(batches + [8]),
                      max_running_requests=max(batches + [8]), **extra)
    out = []
    for name, variant in ablation_variants(base, ablate)[1]:
        engine = Engine(variant)
        for batch in batches:
            result = {"model": model, "variant": name, **step_kernels(engine, context, batch)}
            print(f"{model} {name}, batch {batch}: {result['launches_per_step']:.0f} launches "
                  f"per step ({result['launches_per_step'] / result['layers']:.2f} per layer), "
                  f"{result['gpu_us_per_step']:.1f} us GPU per step")
            for k in result["kernels"][:25]:
                print(f"    {k['per_step']:7.2f}/step {k['per_layer']:5.2f}/layer "
                      f"{k['us_per_step']:9.1f} us/step  {k['name'][:90]}")
            out.append(result)
        release_engine(engine)
    return out


def host_breakdown(engine: Engine, context: int) -> None:
    from fuseinfer.runtime.sampling import SamplingParams

    acc: dict[str, float] = collections.defaultdict(float)
    wrapped = {}
    runner = engine.runner
    for name in ("logits", "resolve", "launch"):
        orig = getattr(runner, name)

        def timed(*a, _orig=orig, _name=name, **k):
            t = time.perf_counter()
            out = _orig(*a, **k)
            acc[_name] += time.perf_counter() - t
            return out
        wrapped[name] = orig
        setattr(runner, name, timed)  # the instance attribute shadows the method
    sched = engine.scheduler.schedule

    def timed_schedule():
        t = time.perf_counter()
        out = sched()
        acc["schedule"] += time.perf_counter() - t
        return out
    engine.scheduler.schedule = timed_schedule
    engine.add_request(list(range(10, 10 + context)),
                       SamplingParams(max_new_tokens=300, temperature=0.0, ignore_eos=True))
    for _ in range(20):
        engine.step()
    acc.clear()
    n = 0
    t = time.perf_counter()
    while engine.busy:
        engine.step()
        n += 1
    wall = (time.perf_counter() - t) / n * 1e3
    parts = ", ".join(f"{k} {v / n * 1e3:.3f}" for k, v in acc.items())
    print(f"batch 1 step: {wall:.3f} ms wall; host ms per step: {parts} "
          "(launch includes logits; resolve includes the wait for the step before)")
    for name in wrapped:
        delattr(runner, name)
    engine.scheduler.schedule = sched


def offline_breakdown(engine: Engine, prompts: int) -> None:
    stats: dict[str, list[float]] = collections.defaultdict(list)
    runner = engine.runner
    orig_launch = runner.launch

    def launch(inputs):
        t = time.perf_counter()
        out = orig_launch(inputs)
        n = len(inputs.logits_rows)
        key = "prefill" if not inputs.decode else \
            f"decode bs {min(256, 1 << max(0, (n - 1).bit_length()))}"
        stats[key].append(time.perf_counter() - t)
        return out
    runner.launch = launch  # the instance attribute shadows the method
    last = [time.perf_counter()]
    orig_step = engine.step
    steps = []

    def step():
        out = orig_step()
        now = time.perf_counter()
        steps.append(now - last[0])
        last[0] = now
        return out
    engine.step = step
    res = run_workload(engine, Workload(num_prompts=prompts), progress=False)
    print(f"offline: {res['output_tok_per_s']:.0f} tok/s, {res['seconds']:.2f} s, "
          f"{res['steps']} steps")
    for key in sorted(stats):
        v = stats[key]
        print(f"  launch {key:14s}: {len(v):5d} steps, host {1e3 * sum(v) / len(v):.3f} ms "
              f"mean, {sum(v):.2f} s total")
    print(f"  step wall: mean {1e3 * sum(steps) / len(steps):.3f} ms")


def attention_group_paths(context: int) -> None:
    """Decode attention for Qwen3-0.6B heads (16 q / 8 kv, d 128, page 16): the tensor-core
    path (the two q heads of a KV head together) against one program per q head."""
    import dataclasses

    from fuseinfer.ops import AttentionShape, PagedAttention

    shape = AttentionShape(16, 8, 128, 16)
    for bs in (1, 64, 256):
        pages_per = context // 16
        n_pages = bs * pages_per + 1
        k = torch.randn(n_pages, 16, 8, 128, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        perm = torch.randperm(n_pages - 1, device="cuda")[: bs * pages_per] + 1
        table = perm.view(bs, pages_per).to(torch.int32)
        q = torch.randn(bs, 16, 128, device="cuda", dtype=torch.bfloat16)
        out = []
        for tc in (4, 2):
            attn = PagedAttention(shape, "cuda", max_batch=256)
            attn.table = dataclasses.replace(attn.table, tensor_core_min_group=tc)
            plan = attn.plan_decode([context] * bs, table)
            o = attn.run(plan, q, k, v)
            us = time_calls([partial(attn.run, plan, q, k, v, out=o)]).median_us
            gbs = 2 * k[0].numel() * 2 * pages_per * bs / us / 1e3
            out.append(o.float())
            print(f"attention decode bs={bs} ctx={context} tensor_core_min_group={tc}: "
                  f"{us:.1f} us, {gbs:.0f} GB/s, splits {plan.splits}")
        print(f"  max |difference| between paths: {(out[0] - out[1]).abs().max().item():.2e}")


def gemv_vs_cublas() -> None:
    """small_batch_linear against torch.matmul (cuBLAS) on Qwen3-0.6B's weights, timed by
    CUDA-graph replay (each kernel alone: no neighbour to overlap with)."""
    from fuseinfer.ops import small_batch_linear

    shapes = {"qkv": (4096, 1024), "o": (1024, 2048), "gate_up": (6144, 1024),
              "down": (1024, 3072), "lm_head": (151936, 1024)}
    for m in (1, 4, 8):
        for name, (n, k) in shapes.items():
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
            times = [time_calls([fn]).median_us for fn in
                     (partial(small_batch_linear, x, w), partial(torch.matmul, x, w.t()))]
            gb = n * k * 2 / 1e9
            print(f"linear m={m} {name:8s} [{n}x{k}]: gemv {times[0]:.2f} us "
                  f"({gb / times[0] * 1e6 / 1e3:.2f} TB/s), cuBLAS {times[1]:.2f} us "
                  f"({gb / times[1] * 1e6 / 1e3:.2f} TB/s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen3-0.6b")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--offline-prompts", type=int, default=256)
    ap.add_argument("--only", nargs="+", default=["attention", "replay", "host", "kernels",
                                                  "offline"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1],
                    help="count: decode batch sizes")
    ap.add_argument("--ablate", nargs="+", default=[], help="count: switches to ablate")
    ap.add_argument("--small-m-matmul-tokens", type=int, default=0)
    ap.add_argument("--json", help="count: write the results here")
    args = ap.parse_args()
    if "count" in args.only:
        results = kernel_counts(args.model, args.context, args.batches, args.ablate,
                                {"small_m_matmul_tokens": args.small_m_matmul_tokens})
        if args.json:
            from fuseinfer.bench.report import bench_environment

            with open(args.json, "w") as f:
                json.dump({"environment": bench_environment(), "results": results}, f,
                          indent=1)
        if args.only == ["count"]:
            return
    if "attention" in args.only:
        attention_group_paths(args.context)
    if "gemv" in args.only:
        gemv_vs_cublas()
    engine = Engine(EngineArgs(model=args.model, load_format="dummy", max_context_len=2048,
                               cuda_graph_max_bs=256, **SERVING_GC))  # as serve runs
    engine.warmup()
    if "replay" in args.only:
        replay_times(engine, args.context)
    if "host" in args.only:
        host_breakdown(engine, args.context)
    if "kernels" in args.only:
        kernel_profile(engine, args.context)
    if "kernels50" in args.only:
        kernel_profile(engine, 300, batch=50)
    if "offline" in args.only:
        offline_breakdown(engine, args.offline_prompts)


if __name__ == "__main__":
    main()
