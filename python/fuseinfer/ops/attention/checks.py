"""Argument checks of the paged attention ops: shapes, dtypes and layouts only, so they run
before any launch with no device-to-host sync. Length consistency (kv_len >= q_len, the
page table covering kv_len) needs the host-side lengths and is checked by the plan."""

from __future__ import annotations

import torch

from ..arg_checks import fail
from ..kvcache.store_kv_cache import FP8, check_scale, slot_rows
from .dispatch import HEAD_DIMS

Q_DTYPES = (torch.bfloat16, torch.float16)


def check_int_vector(op: str, name: str, t: torch.Tensor, length: int | None,
                     device: torch.device) -> None:
    if t.dtype != torch.int32 or t.dim() != 1 or not t.is_contiguous():
        fail(op, name, f"must be a contiguous int32 vector, got {t.dtype} {list(t.shape)}")
    if length is not None and t.numel() != length:
        fail(op, name, f"must have {length} elements, got {t.numel()}")
    if t.device != device:
        fail(op, name, f"must be on {device} like q, got {t.device}")


def check_rows(op: str, name: str, t: torch.Tensor, tokens: int, heads: int, head_dim: int,
               dtypes: tuple[torch.dtype, ...], device: torch.device) -> None:
    """A [tokens, heads, head_dim] tensor with a contiguous last dim."""
    if t.dim() != 3 or tuple(t.shape) != (tokens, heads, head_dim):
        fail(op, name, f"must have shape [{tokens}, {heads}, {head_dim}], got {list(t.shape)}")
    if t.dtype not in dtypes:
        fail(op, name, f"must have dtype {' or '.join(str(d) for d in dtypes)}, got {t.dtype}")
    if t.stride(2) != 1:
        fail(op, name, f"must have a contiguous last dim, got strides {t.stride()}")
    if t.device != device:
        fail(op, name, f"must be on {device} like q, got {t.device}")


def check_caches(op: str, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 k_scale: torch.Tensor | None, v_scale: torch.Tensor | None) -> int:
    """Checks both caches against q; returns the KV head count."""
    head_dim = q.size(-1)
    if k_cache.dim() not in (3, 4):
        fail(op, "k_cache", f"must be [slots, kv_heads, head_dim] or [pages, page_size, "
             f"kv_heads, head_dim], got {list(k_cache.shape)}")
    if v_cache.shape != k_cache.shape:
        fail(op, "v_cache", f"must have the shape of k_cache {list(k_cache.shape)}, got "
             f"{list(v_cache.shape)}")
    kv_heads = k_cache.size(-2)
    for name, cache, scale, scale_name in (("k_cache", k_cache, k_scale, "k_scale"),
                                           ("v_cache", v_cache, v_scale, "v_scale")):
        if cache.dtype not in (q.dtype, FP8):
            fail(op, name, f"must have dtype {q.dtype} (like q) or float8_e4m3fn, got "
                 f"{cache.dtype}")
        if cache.device != q.device:
            fail(op, name, f"must be on {q.device} like q, got {cache.device}")
        if cache.size(-1) != head_dim:
            fail(op, name, f"must have head_dim {head_dim} like q, got {cache.size(-1)}")
        slot_rows(cache, op, name)
        check_scale(scale, cache, op, scale_name, kv_heads * head_dim, kv_heads)
    if v_cache.dtype != k_cache.dtype:
        fail(op, "v_cache", f"must have the dtype of k_cache ({k_cache.dtype}), got "
             f"{v_cache.dtype}")
    if (k_scale is None) != (v_scale is None):  # the kernels scale K and V together
        fail(op, "k_scale" if v_scale is None else "v_scale",
             "needs its partner: pass k_scale and v_scale, or neither")
    return kv_heads


def check_common(op: str, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 page_table: torch.Tensor, kv_lens: torch.Tensor, batch: int,
                 out: torch.Tensor, lse: torch.Tensor | None, sinks: torch.Tensor | None,
                 k_scale: torch.Tensor | None, v_scale: torch.Tensor | None,
                 window_left: int | None, logit_cap: float, sm_scale: float) -> None:
    if q.dim() != 3:
        fail(op, "q", f"must be [tokens, q_heads, head_dim], got {list(q.shape)}")
    if q.dtype not in Q_DTYPES and not (q.dtype == torch.float32 and q.device.type == "cpu"):
        fail(op, "q", f"must be bfloat16 or float16 (float32 on the CPU), got {q.dtype}")
    if q.stride(2) != 1:
        fail(op, "q", f"must have a contiguous last dim, got strides {q.stride()}")
    tokens, q_heads, head_dim = q.shape
    if head_dim not in HEAD_DIMS:
        fail(op, "q", f"head_dim {head_dim} is not supported (supported: {list(HEAD_DIMS)})")
    kv_heads = check_caches(op, q, k_cache, v_cache, k_scale, v_scale)
    if kv_heads < 1 or q_heads % kv_heads:
        fail(op, "k_cache", f"has {kv_heads} KV heads, which must divide q's {q_heads} heads")
    if page_table.dtype != torch.int32 or page_table.dim() != 2 \
            or page_table.stride(1) != 1 or page_table.size(0) < batch:
        fail(op, "page_table", f"must be int32 [>= {batch}, pages] with contiguous rows, got "
             f"{page_table.dtype} {list(page_table.shape)} strides {page_table.stride()}")
    if page_table.device != q.device:
        fail(op, "page_table", f"must be on {q.device} like q, got {page_table.device}")
    check_int_vector(op, "kv_lens", kv_lens, batch, q.device)
    check_rows(op, "out", out, tokens, q_heads, head_dim, (q.dtype,), q.device)
    if lse is not None:
        if lse.dtype != torch.float32 or tuple(lse.shape) != (tokens, q_heads) \
                or lse.stride(1) != 1:
            fail(op, "lse", f"must be float32 [{tokens}, {q_heads}] with contiguous rows, got "
                 f"{lse.dtype} {list(lse.shape)}")
        if lse.device != q.device:
            fail(op, "lse", f"must be on {q.device} like q, got {lse.device}")
    if sinks is not None:
        if sinks.dtype not in (torch.float32, torch.bfloat16) or sinks.dim() != 1 \
                or sinks.numel() != q_heads or not sinks.is_contiguous():
            fail(op, "sinks", f"must be a contiguous float32 or bfloat16 vector of {q_heads} "
                 f"(one per q head), got {sinks.dtype} {list(sinks.shape)}")
        if sinks.device != q.device:
            fail(op, "sinks", f"must be on {q.device} like q, got {sinks.device}")
    if window_left is not None and window_left < 0:
        fail(op, "window_left", f"must be >= 0 (keys at positions p - window_left .. p), or "
             f"None for no window, got {window_left}")
    if not logit_cap >= 0.0:
        fail(op, "logit_cap", f"must be >= 0 (0 turns it off), got {logit_cap}")
    if not sm_scale > 0.0:
        fail(op, "sm_scale", f"must be > 0, got {sm_scale}")
