"""Where a decode step's time goes on the GPU (developer tool, not a benchmark of record).

    python microbench/profile_runtime.py [--model qwen3-0.6b] [--offline-prompts 256]

1. GPU time of one decode graph replay at several batch sizes (1k context, pages placed
   at random), CUDA events over 50 replays.
2. The kernels of one batch-1 decode step (torch.profiler, eager forward), by GPU time.
3. The engine loop at batch 1: host time of each part of a step.
4. The offline workload with every step timed, split by prefill/decode and batch size.
"""

from __future__ import annotations

import argparse
import collections
import random
import time
from functools import partial

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
    args = ap.parse_args()
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
