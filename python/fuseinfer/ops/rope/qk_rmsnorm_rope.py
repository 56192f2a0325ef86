"""qk_rmsnorm_rope: Qwen3's per-head q/k RMSNorm, RoPE and the KV-cache write, in one launch.

    qk_rmsnorm_rope(positions, qkv, num_q_heads, num_kv_heads, head_size, q_weight,
                    k_weight, eps, cos_sin_cache, k_cache, v_cache, cache_loc,
                    k_scale=None, v_scale=None, enable_pdl=None)

qkv [tokens, (num_q_heads + 2 * num_kv_heads) * head_size] is the fused qkv projection:
q heads, then k heads, then v heads; bf16, fp16 or fp32, last dim contiguous, rows may be
strided (a view of a wider buffer). For every token t:

  1. each q and k head x becomes x * rsqrt(mean(x^2) + eps) * w (w = q_weight for q heads,
     k_weight for k heads), in fp32, rounded to qkv's dtype;
  2. those rounded heads are rotated NeoX style (halves: (x[i], x[i + head_size/2])) at
     position positions[t], in fp32, rounded once and written back into qkv: q and k are
     updated in place, v is only read;
  3. the rotated k and the raw v go to k_cache and v_cache at slot cache_loc[t].

That is qk_rmsnorm followed by rope_with_cos_sin_cache(..., is_neox=True, v, k_cache,
v_cache, cache_loc, k_scale, v_scale), with the same rounding points. RoPE covers the
whole head: rotary_dim = cos_sin_cache.size(1) must equal head_size. Caches, slots and FP8
scales are those of ops/kvcache/store_kv_cache.py: flat [num_slots, num_kv_heads,
head_size] or paged [num_pages, page_size, num_kv_heads, head_size], dtype of qkv or
float8_e4m3fn (k / k_scale and v / v_scale, saturated to +-448; a missing scale is 1).

CUDA path: one Triton launch, head_size a power of two <= 512; the norm is qk_rmsnorm's
Triton code on the same tile and the rotation rounds as the CUDA RoPE kernel does, so the
results are those of the two-kernel sequence (an FP8 cache gets value * (1 / scale), as
the CUDA cache writers store it, where the CPU path divides). PDL on sm_90+ unless
enable_pdl=False. The CPU path checks positions against the cos/sin cache length and
cache_loc against the cache size; on the GPU they are the caller's contract (checking
would need a device-to-host sync).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..arg_checks import FLOAT_DTYPES, fail
from ..kvcache.store_kv_cache import (
    FP8,
    check_cache_pair,
    check_loc_range,
    scale_stride,
    slot_stride,
    token_rows,
    write_cache_rows,
)
from ..library import LIB, define, impl_cpu, impl_fake
from ..norm.qk_rmsnorm import reference_qk_rmsnorm
from ..signature import call_args, op_schema
from ..triton_launch import next_pow2, use_pdl
from .rope_with_cos_sin_cache import (
    check_position_range,
    check_positions_and_cos_sin,
    reference_rope,
)

OP = "qk_rmsnorm_rope"


class QkRmsnormRopeArgs(NamedTuple):
    """The op's arguments, in schema order (qkv, k_cache and v_cache are written)."""

    positions: torch.Tensor
    qkv: torch.Tensor
    num_q_heads: int
    num_kv_heads: int
    head_size: int
    q_weight: torch.Tensor
    k_weight: torch.Tensor
    eps: float
    cos_sin_cache: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    cache_loc: torch.Tensor
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None
    enable_pdl: bool | None = None


_SCHEMA = op_schema(OP, QkRmsnormRopeArgs, mutated=("qkv", "k_cache", "v_cache"))


def _fail(arg: str, message: str) -> None:
    fail(OP, arg, message)


def _check_qkv(qkv: torch.Tensor, num_q_heads: int, num_kv_heads: int,
               head_size: int) -> None:
    if qkv.dtype not in FLOAT_DTYPES:
        _fail("qkv", f"must be bfloat16, float16 or float32, got {qkv.dtype}")
    if head_size <= 0:
        _fail("head_size", f"must be positive, got {head_size}")
    if num_q_heads < 1:
        _fail("num_q_heads", f"must be >= 1, got {num_q_heads}")
    if num_kv_heads < 1:
        _fail("num_kv_heads", f"must be >= 1, got {num_kv_heads}")
    width = (num_q_heads + 2 * num_kv_heads) * head_size
    if qkv.dim() != 2 or qkv.size(1) != width:
        _fail("qkv", f"must be [tokens, (num_q_heads + 2 * num_kv_heads) * head_size] = "
              f"[tokens, {width}], got {list(qkv.shape)}")
    token_rows(qkv, OP, "qkv")  # each row contiguous, rows not overlapping


def check_qk_rmsnorm_rope_args(a: QkRmsnormRopeArgs) -> None:
    (positions, qkv, num_q_heads, num_kv_heads, head_size, q_weight, k_weight, eps,
     cos_sin_cache, k_cache, v_cache, cache_loc, k_scale, v_scale, _) = a
    _check_qkv(qkv, num_q_heads, num_kv_heads, head_size)
    tokens = qkv.size(0)
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if w.dim() != 1 or w.numel() != head_size or (head_size > 1 and w.stride(0) != 1):
            _fail(name, f"must be a contiguous 1-D [head_size] = [{head_size}], got "
                  f"{list(w.shape)} with stride {list(w.stride())}")
        if w.dtype != qkv.dtype:
            _fail(name, f"must have qkv's dtype {qkv.dtype}, got {w.dtype}")
    if not eps > 0:
        _fail("eps", f"must be > 0, got {eps}")
    for name, t in (("q_weight", q_weight), ("k_weight", k_weight),
                    ("positions", positions), ("cos_sin_cache", cos_sin_cache)):
        if t.device != qkv.device:
            _fail(name, f"must be on {qkv.device} like qkv, got {t.device}")
    check_positions_and_cos_sin(OP, positions, tokens, cos_sin_cache)
    if cos_sin_cache.size(1) != head_size or head_size % 2:
        _fail("cos_sin_cache", f"rotary_dim {cos_sin_cache.size(1)} must equal head_size "
              f"{head_size} (an even number): this op rotates whole heads; for partial "
              "rotary use qk_rmsnorm and rope_with_cos_sin_cache")
    k_start, kv_width = num_q_heads * head_size, num_kv_heads * head_size
    check_cache_pair(OP, k_cache, v_cache, cache_loc, qkv[:, k_start:k_start + kv_width],
                     qkv[:, k_start + kv_width:], k_scale, v_scale,
                     k_name="qkv's k", v_name="qkv's v", kv_heads=num_kv_heads)


def reference_qk_rmsnorm_rope(positions: torch.Tensor, qkv: torch.Tensor, num_q_heads: int,
                              num_kv_heads: int, head_size: int, q_weight: torch.Tensor,
                              k_weight: torch.Tensor, eps: float,
                              cos_sin_cache: torch.Tensor) -> torch.Tensor:
    """The rotated q and k heads, float32 [tokens, (num_q_heads + num_kv_heads) *
    head_size], computed from the normalized heads rounded to qkv's dtype (what qk_rmsnorm
    writes back): the CPU kernel and the test oracle."""
    q_and_k = qkv[:, :(num_q_heads + num_kv_heads) * head_size]
    normed = reference_qk_rmsnorm(q_and_k, q_weight, k_weight, num_q_heads, eps)
    return reference_rope(positions, normed.to(qkv.dtype), head_size, cos_sin_cache, True)


def _cpu(*args, **kwargs) -> None:
    a = call_args(QkRmsnormRopeArgs, args, kwargs)
    check_qk_rmsnorm_rope_args(a)
    check_position_range(OP, a.positions, a.cos_sin_cache)
    check_loc_range(a.cache_loc, a.k_cache, OP, "cache_loc")
    check_loc_range(a.cache_loc, a.v_cache, OP, "cache_loc")
    d, qkv = a.head_size, a.qkv
    k_start, v_start = a.num_q_heads * d, (a.num_q_heads + a.num_kv_heads) * d
    qkv[:, :v_start].copy_(reference_qk_rmsnorm_rope(
        a.positions, qkv, a.num_q_heads, a.num_kv_heads, d, a.q_weight, a.k_weight, a.eps,
        a.cos_sin_cache))
    write_cache_rows(a.k_cache, a.cache_loc, qkv[:, k_start:v_start], a.k_scale)
    write_cache_rows(a.v_cache, a.cache_loc, qkv[:, v_start:], a.v_scale)


def launch_qk_rmsnorm_rope(a: QkRmsnormRopeArgs, pdl: bool) -> None:
    """The Triton launch (also used directly by the interpreter tests on the CPU)."""
    from ...triton.qk_rmsnorm_rope import qk_rmsnorm_rope_kernel

    (positions, qkv, num_q_heads, num_kv_heads, head_size, q_weight, k_weight, eps,
     cos_sin_cache, k_cache, v_cache, cache_loc, k_scale, v_scale, _) = a
    tokens = qkv.size(0)
    if tokens == 0:
        return
    # qk_rmsnorm's tile height: the same tile shape reduces each head in the same order
    per_program = min(8, next_pow2(num_q_heads + num_kv_heads))
    heads = num_q_heads + 2 * num_kv_heads
    kv_width = num_kv_heads * head_size
    extra = {"launch_pdl": True} if pdl else {}
    # a missing scale is not read (HAS_*_SCALE): any float32 tensor stands in for it
    qk_rmsnorm_rope_kernel[(tokens, -(-heads // per_program))](
        qkv, q_weight, k_weight, positions, cos_sin_cache, k_cache, v_cache, cache_loc,
        cos_sin_cache if k_scale is None else k_scale,
        cos_sin_cache if v_scale is None else v_scale, qkv.stride(0),
        slot_stride(k_cache, kv_width), slot_stride(v_cache, kv_width), num_q_heads,
        num_kv_heads, scale_stride(k_scale), scale_stride(v_scale), eps,
        HEAD_DIM=head_size, HEADS=per_program, FP8_CACHE=k_cache.dtype == FP8,
        HAS_K_SCALE=k_scale is not None, HAS_V_SCALE=v_scale is not None, USE_PDL=pdl,
        EXACT_ROUNDING=qkv.device.type == "cpu", num_warps=4, **extra)


def _cuda(*args, **kwargs) -> None:
    a = call_args(QkRmsnormRopeArgs, args, kwargs)
    check_qk_rmsnorm_rope_args(a)
    if a.head_size & (a.head_size - 1) or a.head_size > 512:
        _fail("head_size", f"{a.head_size}: the CUDA path needs a power of two <= 512")
    launch_qk_rmsnorm_rope(a, use_pdl(a.enable_pdl, a.qkv.device))


def _fake(*args, **kwargs) -> None:
    check_qk_rmsnorm_rope_args(call_args(QkRmsnormRopeArgs, args, kwargs))


define(_SCHEMA)
impl_cpu(OP, _cpu)
impl_fake(OP, _fake)
LIB.impl(OP, _cuda, "CUDA")


def qk_rmsnorm_rope(
    positions: torch.Tensor, qkv: torch.Tensor, num_q_heads: int, num_kv_heads: int,
    head_size: int, q_weight: torch.Tensor, k_weight: torch.Tensor, eps: float,
    cos_sin_cache: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    cache_loc: torch.Tensor, k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None, enable_pdl: bool | None = None,
) -> None:
    """Normalize and rotate the q and k heads of qkv in place and write the rotated k and
    the v heads into the caches at slots cache_loc, in one kernel (see module doc)."""
    torch.ops.fuseinfer.qk_rmsnorm_rope(
        positions, qkv, num_q_heads, num_kv_heads, head_size, q_weight, k_weight, eps,
        cos_sin_cache, k_cache, v_cache, cache_loc, k_scale, v_scale, enable_pdl)


__all__ = ["qk_rmsnorm_rope"]
