"""`fuseinfer tune rope`: pick the RoPE (+ KV write) and store_kv_cache launch shapes on the
present GPU and write them into its dispatch table.

Timed the way `fuseinfer bench rope` times (same shapes, buffers and L2 policy), on the
fused op for Llama-3-8B and GPT-OSS-120B: for each token class, the candidate with the
lowest geometric-mean time wins. Candidates cover head-parallel blocks (one token, a few
heads) and token-parallel blocks (all heads of 1-8 tokens) at several block sizes.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from ...ops.kvcache.dispatch import KvCacheDispatch, KvCacheLaunchRule, push_kvcache
from ...ops.rope.dispatch import RopeDispatch, RopeLaunchRule, push_rope
from ..progress import Progress
from ..timing import TimingConfig, buffer_sets, l2_cache_bytes, time_calls
from ..tuning import tune_target, write_tune_log
from . import kvcache
from .rope import MODELS, Case, bytes_moved, make_sets, ours

TUNE_MODELS = ("Llama-3-8B", "GPT-OSS-120B")
# (largest token count a rule covers, token counts timed)
TOKEN_CLASSES = ((32, (1, 8, 32)), (512, (128, 512)), (None, (4096, 16384)))
THREADS = (64, 128, 256, 512)


def rope_candidates() -> list[tuple[int, int, int]]:
    """(tokens_per_block, heads_per_block, threads_per_block)."""
    head_parallel = [(1, h, t) for h in (1, 2, 4, 8) for t in THREADS if t <= 256]
    token_parallel = [(n, 0, t) for n in (1, 2, 4, 8) for t in THREADS]
    return head_parallel + token_parallel


def _geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _timer(op: str, config: TimingConfig) -> Callable[[str, int], float]:
    def time_one(model_name: str, tokens: int) -> float:
        model = MODELS[model_name]
        nbytes = bytes_moved(Case(op, model, tokens), 2)
        sets = make_sets(model, tokens, torch.bfloat16, buffer_sets(nbytes, l2_cache_bytes()))
        provider = "store" if op == kvcache.OP else "fused"
        return time_calls(ours(provider, model, sets, None), config).median_us
    return time_one


def _search(label: str, candidates: list, push: Callable[[Any], None],
            time_one: Callable[[str, int], float], log: list[dict[str, Any]]
            ) -> dict[int | None, Any]:
    best: dict[int | None, tuple[float, Any]] = {}
    with Progress(len(candidates), f"tune {label}") as progress:
        for candidate in candidates:
            progress.step(str(candidate))
            push(candidate)
            for max_tokens, token_counts in TOKEN_CLASSES:
                times = [time_one(m, t) for m in TUNE_MODELS for t in token_counts]
                log.append({"op": label, "candidate": candidate,
                            "max_tokens": max_tokens, "us": times})
                score = _geomean(times)
                if max_tokens not in best or score < best[max_tokens][0]:
                    best[max_tokens] = (score, candidate)
    return {k: v[1] for k, v in best.items()}


def tune(device: int, config: TimingConfig | None = None
         ) -> tuple[RopeDispatch, KvCacheDispatch, list[dict[str, Any]]]:
    """Tuned rules for both families (sources filled in by the caller) and the log."""
    from ...ops.kvcache.store_kv_cache import load_cuda as load_kvcache
    from ...ops.rope.rope_with_cos_sin_cache import load_cuda as load_rope

    load_rope()
    load_kvcache()
    config = config or TimingConfig(repeats=7, target_graph_ms=1.0, warmup_calls=2)
    log: list[dict[str, Any]] = []

    def push_rope_rule(c: tuple[int, int, int]) -> None:
        push_rope(device, RopeDispatch("tuning", True, (RopeLaunchRule(None, *c),)))

    def push_store_rule(threads: int) -> None:
        kvcache.push_tuning_rule(device, threads)

    rope_best = _search("rope+kv", rope_candidates(), push_rope_rule,
                        _timer("rope+kv", config), log)
    store_best = _search(kvcache.OP, list(kvcache.TUNE_THREADS), push_store_rule,
                         _timer(kvcache.OP, config), log)
    rope = RopeDispatch("", True, tuple(RopeLaunchRule(k, *rope_best[k])
                                        for k, _ in TOKEN_CLASSES))
    store = KvCacheDispatch("", True, tuple(KvCacheLaunchRule(k, store_best[k])
                                            for k, _ in TOKEN_CLASSES))
    return rope, store, log


def tune_command(args: argparse.Namespace) -> int:
    """`fuseinfer tune rope`: tune both ops, write the rope and kvcache entries, push them
    to the device, report."""
    target = tune_target(args)
    rope, store, log = tune(target.device)
    source = target.source(f"; {' and '.join(TUNE_MODELS)}")
    rope, store = replace(rope, source=source), replace(store, source=source)
    target.write("rope", rope)
    target.write("kvcache", store)
    push_rope(target.device, rope)
    push_kvcache(target.device, store)
    for rule in rope.rules:
        print(f"  rope: tokens <= {rule.max_tokens}: {rule.tokens_per_block} tokens x "
              f"{rule.heads_per_block or 'all'} heads per block, {rule.threads_per_block} "
              "threads")
    for rule in store.rules:
        print(f"  kvcache: tokens <= {rule.max_tokens}: {rule.threads_per_block} threads")
    print(f"wrote {target.output}")
    write_tune_log(args.log, source, log)
    return 0
