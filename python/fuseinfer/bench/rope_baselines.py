"""What the RoPE and KV-cache kernels are compared against, timed in the same run: the plain
torch code a model would run (eager), the same code under torch.compile, and FlashInfer's
in-place RoPE followed by the plain cache write when FlashInfer is installed (its call in
flashinfer_baselines.py; in place like our rope, on the same strided q and k).

Each baseline computes the same results as our op, as the plain functional code a model
would run: the rotated query and key come back as fresh tensors (the suite keeps them alive
with their buffer set, so output addresses rotate with the inputs), and the cache write is
an index assignment into the cache, the one write no model can avoid doing in place.
Signatures follow our ops: rope(positions, query, key, head_size, cos_sin_cache, is_neox,
value, k_cache, v_cache, cache_loc) and store(k_cache, v_cache, loc, k, v); caches are
[slots, kv_heads, head_size]."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import flashinfer_baselines
from .static_compile import compile_static


def torch_rotate(positions: torch.Tensor, x: torch.Tensor, head_size: int,
                 cos_sin_cache: torch.Tensor, is_neox: bool) -> torch.Tensor:
    """x [tokens, heads * head_size] with the first rotary_dim dims of every head rotated:
    float32 math, one rounding back to x's dtype."""
    rotary_dim = cos_sin_cache.size(1)
    cos, sin = cos_sin_cache[positions].unsqueeze(1).chunk(2, dim=-1)
    heads = x.unflatten(-1, (-1, head_size))
    rot = heads[..., :rotary_dim].float()
    if is_neox:
        x1, x2 = rot.chunk(2, dim=-1)
        rot = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        rot = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    return torch.cat((rot.to(x.dtype), heads[..., rotary_dim:]), dim=-1).flatten(1)


def torch_store_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, loc: torch.Tensor,
                   k: torch.Tensor, v: torch.Tensor) -> None:
    k_cache[loc] = k.unflatten(-1, k_cache.shape[1:])
    v_cache[loc] = v.unflatten(-1, v_cache.shape[1:])


def torch_rope(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
               head_size: int, cos_sin_cache: torch.Tensor, is_neox: bool,
               value: torch.Tensor | None = None, k_cache: torch.Tensor | None = None,
               v_cache: torch.Tensor | None = None, cache_loc: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated (query, key); with the cache arguments also writes the rotated key and the
    value into the caches."""
    query = torch_rotate(positions, query, head_size, cos_sin_cache, is_neox)
    key = torch_rotate(positions, key, head_size, cos_sin_cache, is_neox)
    if k_cache is not None:
        torch_store_kv(k_cache, v_cache, cache_loc, key, value)
    return query, key


def compiled(op: str) -> Callable[..., Any]:
    if op == "store_kv":
        return compile_static("store_kv", torch_store_kv)
    return compile_static("rope", torch_rope)


def flashinfer_available() -> bool:
    return flashinfer_baselines.available("rope")


def flashinfer_rope(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                    head_size: int, cos_sin_cache: torch.Tensor, is_neox: bool,
                    value: torch.Tensor | None = None, k_cache: torch.Tensor | None = None,
                    v_cache: torch.Tensor | None = None, cache_loc: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashInfer's RoPE (in place), then the plain cache write: FlashInfer has no write
    into this cache layout, so a model using it writes the cache as the eager code does."""
    flashinfer_baselines.rope_inplace(positions, query, key, head_size, cos_sin_cache,
                                      is_neox)
    if k_cache is not None:
        torch_store_kv(k_cache, v_cache, cache_loc, key, value)
    return query, key


def baseline_fn(name: str, op: str) -> Callable[..., Any] | None:
    """The callable for op "rope+kv" or "rope" (our rope's argument order) or "store_kv"
    (our store's); None where the baseline has no such op (flashinfer for store_kv)."""
    if name == "eager":
        return torch_store_kv if op == "store_kv" else torch_rope
    if name == "compile":
        return compiled(op)
    if name == "flashinfer":
        return None if op == "store_kv" else flashinfer_rope
    raise ValueError(f"unknown baseline '{name}' (eager, compile, flashinfer)")
