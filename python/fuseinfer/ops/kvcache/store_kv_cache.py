"""KV-cache writes: store_kv_cache.

    k_cache[loc[i]] = k[i];  v_cache[loc[i]] = v[i]         (one kernel for both)
    FP8 (e4m3) cache: k_cache[loc[i]] = fp8(clamp(k[i] / k_scale, -448, 448)), likewise v;
    a scale is one float32 element or one per KV head (check_scale).

Layouts: k, v are [tokens, kv_heads, head_dim] or [tokens, kv_heads * head_dim], each token's
row contiguous (a strided view of a fused qkv buffer is fine). Caches are
[num_slots, kv_heads, head_dim] or paged [num_pages, page_size, kv_heads, head_dim]; a
slot index is page * page_size + offset, and each slot's row is contiguous. loc is int32
or int64 [tokens]. On the CPU path an out-of-range loc raises; on the GPU it is the
caller's contract (checking would need a device-to-host sync): an out-of-range loc
writes out of bounds. Fast CUDA path: 16-byte aligned rows whose widths are multiples of
16 bytes.
"""

from __future__ import annotations

import torch

from ..arg_checks import FLOAT_DTYPES, contiguous_tail, has_storage
from ..arg_checks import fail as _fail
from ..library import define, impl_cpu, impl_cuda_on_first_use, impl_fake, module_loader
from .dispatch import push_kvcache

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def token_rows(t: torch.Tensor, op: str, arg: str) -> tuple[int, int]:
    """(width, row stride) of a [tokens, heads, dim] or [tokens, width] tensor whose
    per-token rows are contiguous; rows may be spaced further apart (a qkv slice)."""
    if t.dim() not in (2, 3):
        _fail(op, arg, f"must be [tokens, heads, dim] or [tokens, width], got "
              f"{list(t.shape)}")
    if not contiguous_tail(t, 1):
        _fail(op, arg, f"must have each token's row contiguous, got strides {t.stride()}")
    width = t.size(1) * (t.size(2) if t.dim() == 3 else 1)
    stride = t.stride(0) if t.size(0) > 1 else width
    if stride < width:
        _fail(op, arg, f"rows must not overlap (row stride {stride} < width {width})")
    return width, stride


def slot_stride(cache: torch.Tensor, width: int) -> int:
    """Elements from one slot to the next: stride(1) of a paged cache (stride(0) with one
    slot per page: the pages are the slots), stride(0) of a flat one (`width` when it has
    one slot). No checks: for launchers, on a cache slot_rows accepted."""
    if cache.dim() == 4:
        return cache.stride(1) if cache.size(1) > 1 else cache.stride(0)
    return cache.stride(0) if cache.size(0) > 1 else width


def slot_rows(cache: torch.Tensor, op: str, arg: str) -> tuple[int, int, int]:
    """(slots, width, slot stride) of a [slots, heads, dim], [slots, width] or paged
    [pages, page_size, heads, dim] cache; a paged cache's pages must flatten to slots."""
    if cache.dim() not in (2, 3, 4):
        _fail(op, arg, f"must be [slots, heads, dim] or [pages, page_size, heads, dim], "
              f"got shape {list(cache.shape)}")
    slot_dim = 1 if cache.dim() == 4 else 0
    if not contiguous_tail(cache, slot_dim + 1):
        _fail(op, arg, f"must have each slot's row contiguous, got strides {cache.stride()}")
    width = 1
    for d in range(slot_dim + 1, cache.dim()):
        width *= cache.size(d)
    stride = slot_stride(cache, width)
    slots = cache.size(0) * (cache.size(1) if cache.dim() == 4 else 1)
    if cache.dim() == 4 and cache.size(0) > 1 and cache.size(1) > 1 \
            and cache.stride(0) != cache.size(1) * stride:
        _fail(op, arg, f"pages must be evenly spaced slots (stride(0) == page_size * "
              f"stride(1)), got strides {cache.stride()}")
    if slots > 1 and stride < width:
        _fail(op, arg, f"slots must not overlap (slot stride {stride} < width {width})")
    return slots, width, stride


def check_scale(scale: torch.Tensor | None, cache: torch.Tensor, op: str, arg: str,
                width: int, kv_heads: int | None = None) -> None:
    """An FP8 cache's scale: float32, one element (the whole row) or one per equal group of
    a row's `width` elements (one per KV head: element j of a row is scaled by
    scale[j // (width // numel)]), contiguous, on the cache's device. With `kv_heads` (an
    op that knows them): one element or exactly one per KV head."""
    if scale is None:
        return
    if cache.dtype != FP8:
        _fail(op, arg, "is only used with a float8_e4m3fn cache")
    if scale.dtype != torch.float32 or (scale.dim() > 1 and scale.numel() != 1) \
            or scale.numel() < 1 or width % scale.numel() or not scale.is_contiguous():
        _fail(op, arg, f"must be a contiguous float32 tensor of one element or one per KV "
              f"head (a divisor of the row's {width} elements), got {scale.dtype} "
              f"{list(scale.shape)}")
    if kv_heads is not None and scale.numel() not in (1, kv_heads):
        _fail(op, arg, f"must have one element or one per KV head ({kv_heads}), got "
              f"{scale.numel()}")
    if scale.device != cache.device:
        _fail(op, arg, f"must be on {cache.device} like the cache, got {scale.device}")


def scale_stride(scale: torch.Tensor | None) -> int:
    """A kernel's step through a scale per KV head: 0 for one scale (or none), else 1."""
    return int(scale is not None and scale.numel() > 1)


def check_cache_pair(op: str, k_cache, v_cache, loc, k, v, k_scale, v_scale,
                     k_name: str = "k", v_name: str = "v", kv_heads: int | None = None
                     ) -> None:
    tokens = k.size(0)
    if k.dtype not in FLOAT_DTYPES:
        _fail(op, k_name, f"must be bfloat16, float16 or float32, got {k.dtype}")
    loc_name = "loc" if k_name == "k" else "cache_loc"
    for name, t in ((v_name, v), ("k_cache", k_cache), ("v_cache", v_cache), (loc_name, loc)):
        if t.device != k.device:
            _fail(op, name, f"must be on {k.device} like {k_name}, got {t.device}")
    if v.dtype != k.dtype:
        _fail(op, v_name, f"must have dtype {k.dtype} like {k_name}, got {v.dtype}")
    if v.size(0) != tokens:
        _fail(op, v_name, f"must have {tokens} tokens like {k_name}, got {v.size(0)}")
    if loc.dtype not in (torch.int32, torch.int64) or loc.dim() != 1 or loc.numel() != tokens \
            or not loc.is_contiguous():
        _fail(op, loc_name,
              f"must be a contiguous int32 or int64 tensor of shape [{tokens}], got "
              f"{loc.dtype} {list(loc.shape)}")
    for name, cache, src, src_name, scale, scale_name in (
        ("k_cache", k_cache, k, k_name, k_scale, "k_scale"),
        ("v_cache", v_cache, v, v_name, v_scale, "v_scale"),
    ):
        if cache.dtype not in (k.dtype, FP8):
            _fail(op, name, f"must have dtype {k.dtype} or float8_e4m3fn, got {cache.dtype}")
        _, width, _ = slot_rows(cache, op, name)
        src_width, _ = token_rows(src, op, src_name)
        if width != src_width:
            _fail(op, name, f"rows hold {width} elements but {src_name} has {src_width} per "
                  "token")
        check_scale(scale, cache, op, scale_name, width, kv_heads)
    if v_cache.dtype != k_cache.dtype:
        _fail(op, "v_cache", f"must have the dtype of k_cache ({k_cache.dtype}), got "
              f"{v_cache.dtype}")
    same = k_cache is v_cache or (
        has_storage(k_cache) and has_storage(v_cache) and k_cache.numel() > 0
        and k_cache.data_ptr() == v_cache.data_ptr())
    if same:
        _fail(op, "v_cache", "must not be the same tensor as k_cache")


def check_loc_range(loc: torch.Tensor, cache: torch.Tensor, op: str, arg: str) -> None:
    """CPU path only: every loc must name a slot of the cache."""
    slots = cache.size(0) * (cache.size(1) if cache.dim() == 4 else 1)
    if loc.numel() and (int(loc.min()) < 0 or int(loc.max()) >= slots):
        _fail(op, arg, f"holds slots outside [0, {slots}): min {int(loc.min())}, "
              f"max {int(loc.max())}")


def to_cache(x: torch.Tensor, cache_dtype: torch.dtype, scale: torch.Tensor | None
             ) -> torch.Tensor:
    """The value a cache slot holds for x [rows, width]: a plain cast, or scaled (per row
    element group, see check_scale), saturated fp8."""
    if cache_dtype != FP8:
        return x.to(cache_dtype)
    if scale is None:
        return x.float().clamp(-FP8_MAX, FP8_MAX).to(FP8)
    s = scale.float().reshape(-1).repeat_interleave(x.size(-1) // scale.numel())
    return (x.float() / s).clamp(-FP8_MAX, FP8_MAX).to(FP8)


def slot_view(cache: torch.Tensor) -> torch.Tensor:
    """The cache as [slots, width] (a view: writes land in the cache). The cache must have
    passed slot_rows already."""
    slots, width, stride = slot_rows(cache, "store_kv_cache", "cache")
    return cache.as_strided((slots, width), (stride, 1))


def write_cache_rows(cache: torch.Tensor, loc: torch.Tensor, rows: torch.Tensor,
                     scale: torch.Tensor | None) -> None:
    """cache[loc[i]] = rows[i] on the CPU (any cache layout that flattens to slots)."""
    values = to_cache(rows.flatten(1), cache.dtype, scale)  # flatten: also for 0 rows
    slot_view(cache)[loc.long()] = values


_SCHEMA = ("store_kv_cache(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor loc, Tensor k, "
           "Tensor v, Tensor? k_scale=None, Tensor? v_scale=None, bool? enable_pdl=None) -> ()")


def _check(k_cache, v_cache, loc, k, v, k_scale=None, v_scale=None, enable_pdl=None):
    check_cache_pair("store_kv_cache", k_cache, v_cache, loc, k, v, k_scale, v_scale)


def _cpu(k_cache, v_cache, loc, k, v, k_scale=None, v_scale=None, enable_pdl=None):
    _check(k_cache, v_cache, loc, k, v, k_scale, v_scale)
    check_loc_range(loc, k_cache, "store_kv_cache", "loc")
    check_loc_range(loc, v_cache, "store_kv_cache", "loc")
    write_cache_rows(k_cache, loc, k, k_scale)
    write_cache_rows(v_cache, loc, v, v_scale)


# Loads csrc/kvcache (building it on first use) and pushes its dispatch table.
load_cuda = module_loader("kvcache", "kvcache", push_kvcache)

define(_SCHEMA)
impl_cpu("store_kv_cache", _cpu)
impl_fake("store_kv_cache", _check)
impl_cuda_on_first_use("store_kv_cache", _check, load_cuda)


def store_kv_cache(k_cache: torch.Tensor, v_cache: torch.Tensor, loc: torch.Tensor,
                   k: torch.Tensor, v: torch.Tensor, k_scale: torch.Tensor | None = None,
                   v_scale: torch.Tensor | None = None, enable_pdl: bool | None = None) -> None:
    """Write k and v rows into their caches at slots `loc`, in one kernel (see module doc)."""
    torch.ops.fuseinfer.store_kv_cache(k_cache, v_cache, loc, k, v, k_scale, v_scale,
                                       enable_pdl)


__all__ = ["store_kv_cache"]
