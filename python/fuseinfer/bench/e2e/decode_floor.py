"""The floor of a decode step: the bytes it must read over the GPU's copy bandwidth.

A step at a small batch reads every dense weight once (the embedding only for the rows it
looks up, so not at all here; a tied lm_head is the embedding, counted once) and every
request's KV cache up to its context (a sliding-window layer: its window). `weight_bytes`
is what the issue-level floor divides (weights / copy bandwidth); `kv_bytes` is added for
the floor that also counts the context, which dominates past a few requests at 1k tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


def _tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor inside a weight dataclass (Fp8Weight's values and scales, biases)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [t for f in dataclasses.fields(value) for t in _tensors(getattr(value, f.name))]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def weight_bytes(weights: Any) -> int | None:
    """Bytes of weights one decode step reads (a ModelWeights); None for a model with
    routed experts, whose read set depends on the routing."""
    if any(layer.moe is not None for layer in weights.layers):
        return None
    seen: set[int] = set()
    total = 0
    for t in _tensors(weights.layers) + [weights.norm, weights.lm_head]:
        if t.data_ptr() not in seen:  # a tensor shared by two names is read once
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def kv_bytes(config: Any, kv_itemsize: int, batch: int, context: int) -> int:
    """Bytes of K and V a step reads for `batch` requests of `context` tokens each."""
    per_token_layer = 2 * config.num_kv_heads * config.head_dim * kv_itemsize
    tokens = 0
    for layer in range(config.num_layers):
        window = config.window_left(layer)
        tokens += context if window is None or window < 0 else min(context, window + 1)
    return batch * tokens * per_token_layer


def floor_ms(nbytes: int | None, copy_gbps: float | None) -> float | None:
    """Milliseconds to read nbytes at copy bandwidth (None when either is unknown)."""
    if nbytes is None or not copy_gbps:
        return None
    return nbytes / (copy_gbps * 1e9) * 1e3
