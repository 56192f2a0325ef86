"""Rotary position embedding with a cos/sin cache, optionally fused with the KV-cache write.

    rope_with_cos_sin_cache(positions, query, key, head_size, cos_sin_cache, is_neox,
                            value=None, k_cache=None, v_cache=None, cache_loc=None,
                            k_scale=None, v_scale=None, enable_pdl=None)

Rotates the first rotary_dim = cos_sin_cache.size(1) dims of every head of query and key in
place (the rest of each head is left as is). cos_sin_cache is float32
[max_position, rotary_dim], row p = concat(cos(p * inv_freq), sin(p * inv_freq))
(`fuseinfer.ops.rope.cos_sin_cache.build_cos_sin_cache` makes it). is_neox: rotate halves
(x[i], x[i + rotary_dim/2]); otherwise GPT-J style interleaved pairs (x[2i], x[2i+1]).

query [tokens, q_heads * head_size] or [tokens, q_heads, head_size] and key likewise with
its own head count (GQA): each token's row contiguous, rows may be strided views of a fused
qkv buffer. positions: int32 or int64 [tokens].

With value, k_cache, v_cache and cache_loc the same kernel also writes the rotated key and
the raw value into the caches at slots cache_loc (see ops/kvcache/store_kv_cache.py for layouts,
FP8 scales and the loc contract). Math in fp32, one rounding per output. On the CPU path
positions beyond the cache and out-of-range slots raise; on the GPU they are the caller's
contract (checking would need a device-to-host sync).
"""

from __future__ import annotations

import torch

from ..arg_checks import FLOAT_DTYPES, fail
from ..kvcache.store_kv_cache import (
    check_cache_pair,
    check_loc_range,
    token_rows,
    write_cache_rows,
)
from ..library import define, impl_cpu, impl_cuda_on_first_use, impl_fake, module_loader
from .dispatch import push_rope

OP = "rope_with_cos_sin_cache"
_SCHEMA = (
    f"{OP}(Tensor positions, Tensor(a!) query, Tensor(b!) key, int head_size, "
    "Tensor cos_sin_cache, bool is_neox=True, Tensor? value=None, Tensor(c!)? k_cache=None, "
    "Tensor(d!)? v_cache=None, Tensor? cache_loc=None, Tensor? k_scale=None, "
    "Tensor? v_scale=None, bool? enable_pdl=None) -> ()"
)


def _fail(arg: str, message: str) -> None:
    fail(OP, arg, message)


def check_positions_and_cos_sin(op: str, positions: torch.Tensor, tokens: int,
                                cos_sin_cache: torch.Tensor) -> None:
    """positions: contiguous int32/int64 [tokens]; cos_sin_cache: contiguous float32 2-D
    (the rope ops' shared layout checks)."""
    if positions.dtype not in (torch.int32, torch.int64) or positions.dim() != 1 \
            or positions.numel() != tokens or not positions.is_contiguous():
        fail(op, "positions", f"must be a contiguous int32 or int64 tensor of shape [{tokens}], "
             f"got {positions.dtype} {list(positions.shape)}")
    if cos_sin_cache.dtype != torch.float32 or cos_sin_cache.dim() != 2 \
            or not cos_sin_cache.is_contiguous():
        fail(op, "cos_sin_cache", f"must be a contiguous float32 [max_position, rotary_dim] "
             f"tensor, got {cos_sin_cache.dtype} {list(cos_sin_cache.shape)}")


def check_position_range(op: str, positions: torch.Tensor,
                         cos_sin_cache: torch.Tensor) -> None:
    """The CPU paths' value check (a device-to-host sync on the GPU, so not there)."""
    if positions.numel() and (int(positions.min()) < 0
                              or int(positions.max()) >= cos_sin_cache.size(0)):
        fail(op, "positions", f"hold values outside [0, {cos_sin_cache.size(0)}) (the cos/sin "
             f"cache length): min {int(positions.min())}, max {int(positions.max())}")


def check_rope_args(positions, query, key, head_size, cos_sin_cache, is_neox=True,
                    value=None, k_cache=None, v_cache=None, cache_loc=None, k_scale=None,
                    v_scale=None, enable_pdl=None) -> None:
    if query.dtype not in FLOAT_DTYPES:
        _fail("query", f"must be bfloat16, float16 or float32, got {query.dtype}")
    if key.dtype != query.dtype:
        _fail("key", f"must have dtype {query.dtype} like query, got {key.dtype}")
    for name, t in (("key", key), ("positions", positions), ("cos_sin_cache", cos_sin_cache)):
        if t.device != query.device:
            _fail(name, f"must be on {query.device} like query, got {t.device}")
    if head_size <= 0:
        _fail("head_size", f"must be positive, got {head_size}")
    tokens = query.size(0) if query.dim() else 0
    for name, t in (("query", query), ("key", key)):
        width, _ = token_rows(t, OP, name)
        if t.size(0) != tokens:
            _fail(name, f"must have {tokens} tokens like query, got {t.size(0)}")
        if width % head_size or (t.dim() == 3 and t.size(2) != head_size):
            _fail(name, f"rows of {width} elements are not whole heads of head_size "
                  f"{head_size}")
    check_positions_and_cos_sin(OP, positions, tokens, cos_sin_cache)
    rotary_dim = cos_sin_cache.size(1)
    if rotary_dim % 2 or rotary_dim == 0 or rotary_dim > head_size:
        _fail("cos_sin_cache", f"rotary_dim {rotary_dim} must be even, positive and at most "
              f"head_size {head_size}")
    fused = [t is not None for t in (value, k_cache, v_cache, cache_loc)]
    if any(fused) and not all(fused):
        _fail("value/k_cache/v_cache/cache_loc", "go together: pass all four or none")
    if all(fused):
        k_heads = token_rows(key, OP, "key")[0] // head_size
        if value.size(0) != tokens or token_rows(value, OP, "value")[0] % max(k_heads, 1):
            _fail("value", f"must have {tokens} tokens and one row per key head")
        check_cache_pair(OP, k_cache, v_cache, cache_loc, key, value, k_scale, v_scale,
                         k_name="key", v_name="value")
        # the kernel takes one scale per head row: a scale group is whole heads
        v_head = token_rows(value, OP, "value")[0] // max(k_heads, 1)
        for name, scale, width, head in (("k_scale", k_scale, k_heads * head_size, head_size),
                                         ("v_scale", v_scale, k_heads * v_head, v_head)):
            if scale is not None and head and (width // scale.numel()) % head:
                _fail(name, "must have one element or one per key head")
    elif k_scale is not None or v_scale is not None:
        _fail("k_scale" if k_scale is not None else "v_scale",
              "is only used with k_cache and v_cache")


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox: bool
            ) -> torch.Tensor:
    """x [tokens, heads, rotary_dim] float32; cos, sin [tokens, 1, rotary_dim/2]."""
    if is_neox:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)


def reference_rope(positions: torch.Tensor, x: torch.Tensor, head_size: int,
                   cos_sin_cache: torch.Tensor, is_neox: bool) -> torch.Tensor:
    """Rotated copy of x ([tokens, heads*head_size] or [tokens, heads, head_size]) in
    float32 (float64 stays float64): the CPU kernel and the test oracle."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    # unflatten, not reshape(tokens, -1, head_size): the head count must be known at 0 tokens
    heads = x.flatten(1).unflatten(1, (-1, head_size)).to(compute)
    rotary_dim = cos_sin_cache.size(1)
    cos, sin = cos_sin_cache[positions.long()].to(compute).unsqueeze(1).chunk(2, dim=-1)
    rotated = _rotate(heads[..., :rotary_dim], cos, sin, is_neox)
    return torch.cat((rotated, heads[..., rotary_dim:]), dim=-1).reshape(x.shape)


def _cpu(positions, query, key, head_size, cos_sin_cache, is_neox=True, value=None,
         k_cache=None, v_cache=None, cache_loc=None, k_scale=None, v_scale=None,
         enable_pdl=None):
    check_rope_args(positions, query, key, head_size, cos_sin_cache, is_neox, value,
                    k_cache, v_cache, cache_loc, k_scale, v_scale)
    check_position_range(OP, positions, cos_sin_cache)
    if k_cache is not None:
        check_loc_range(cache_loc, k_cache, OP, "cache_loc")
        check_loc_range(cache_loc, v_cache, OP, "cache_loc")
    query.copy_(reference_rope(positions, query, head_size, cos_sin_cache, is_neox))
    key.copy_(reference_rope(positions, key, head_size, cos_sin_cache, is_neox))
    if k_cache is not None:
        write_cache_rows(k_cache, cache_loc, key, k_scale)
        write_cache_rows(v_cache, cache_loc, value, v_scale)


# Loads csrc/rope (building it on first use) and pushes its dispatch table.
load_cuda = module_loader("rope", "rope", push_rope)

define(_SCHEMA)
impl_cpu(OP, _cpu)
impl_fake(OP, check_rope_args)
impl_cuda_on_first_use(OP, check_rope_args, load_cuda)


def rope_with_cos_sin_cache(
    positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, head_size: int,
    cos_sin_cache: torch.Tensor, is_neox: bool = True, value: torch.Tensor | None = None,
    k_cache: torch.Tensor | None = None, v_cache: torch.Tensor | None = None,
    cache_loc: torch.Tensor | None = None, k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None, enable_pdl: bool | None = None,
) -> None:
    """Rotate query and key in place; with value/k_cache/v_cache/cache_loc, also write the
    rotated key and the value into the caches in the same kernel (see module doc)."""
    torch.ops.fuseinfer.rope_with_cos_sin_cache(
        positions, query, key, head_size, cos_sin_cache, is_neox, value, k_cache, v_cache,
        cache_loc, k_scale, v_scale, enable_pdl)


__all__ = ["rope_with_cos_sin_cache"]
