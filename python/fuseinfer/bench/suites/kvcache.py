"""store_kv_cache (ops/kvcache/) in the benches: our call, its bytes and its tuning
candidates.

The cache write alone is timed by `fuseinfer bench rope` (its `store_kv` rows, on the same
model shapes and buffer sets as the fused rope + cache write, recorded in rope.json) and
tuned by `fuseinfer tune rope` (the `kvcache` table entry), since models call it where the
fused rope is switched off. The eager baseline is rope_baselines.torch_store_kv.

Bytes counted per call: k and v read, then written to the cache:
4 * kv_heads * head_size * tokens * itemsize.
"""

from __future__ import annotations

import torch

from ...ops.kvcache.dispatch import KvCacheDispatch, KvCacheLaunchRule, push_kvcache

OP = "store_kv"  # the rows' `op` in the rope suite's table
TUNE_THREADS = (64, 128, 256, 512, 1024)  # threads_per_block candidates


def store_bytes(kv_heads: int, head_size: int, tokens: int, itemsize: int) -> int:
    return 4 * kv_heads * head_size * tokens * itemsize


def store_args(s: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """(k_cache, v_cache, loc, k, v) of a buffer set, in the op's argument order."""
    return s["k_cache"], s["v_cache"], s["loc"], s["k"], s["v"]


def store(s: dict[str, torch.Tensor], enable_pdl: bool | None) -> None:
    torch.ops.fuseinfer.store_kv_cache(*store_args(s), None, None, enable_pdl)


def push_tuning_rule(device: int, threads: int) -> None:
    """Make every store_kv_cache launch on `device` use `threads` threads per block."""
    push_kvcache(device, KvCacheDispatch("tuning", True, (KvCacheLaunchRule(None, threads),)))
