"""Paged attention: ragged prefill/extend and split-KV decode over a paged KV cache.

    paged_prefill_attention  queries of each request attend causally to the request's
                             cached tokens (prefix + themselves, already in the cache)
    paged_decode_attention   one query per request, KV split across programs, then merged

Semantics (causal mask, sliding window, sinks, soft-cap, FP8 scales, lse) are defined by
fuseinfer.ops.attention.reference, which is also the CPU path. Layouts:
  q, out        [tokens, q_heads, head_dim] (decode: tokens = batch), last dim contiguous
  k/v cache     [slots, kv_heads, head_dim] (page size 1) or
                [pages, page_size, kv_heads, head_dim]; bf16/fp16 like q, or float8_e4m3fn
                with optional float32 one-element k_scale / v_scale
  page_table    int32 [batch, max_pages]: request b's token t lives in slot
                page_table[b, t // page_size] * page_size + t % page_size
  q_indptr      int32 [batch + 1], cumulative query counts; kv_lens int32 [batch]
  lse           optional float32 [tokens, q_heads], natural log of the softmax denominator
                (the sink included)
  sinks         optional float32/bfloat16 [q_heads]; window_left W: keys p - W .. p
head_dim is 64, 128 or 256; q_heads must be a multiple of kv_heads (GQA/MQA).
Launch metadata (work items, split buffers, block sizes) comes from
fuseinfer.ops.attention.plan, which checks lengths on the host; the ops check only shapes,
dtypes and layouts (no device-to-host sync), so lengths that disagree with the page table
are the caller's contract on the GPU.
"""

from __future__ import annotations

import math

import torch

from ..arg_checks import fail
from ..library import LIB, define, impl_cpu, impl_fake
from .checks import check_common, check_int_vector
from .reference import reference_paged_attention

_COMMON = ("Tensor(a!) out, Tensor(b!)? lse=None, Tensor? sinks=None, Tensor? k_scale=None, "
           "Tensor? v_scale=None, float sm_scale=0.0, int? window_left=None, "
           "float logit_cap=0.0")
_PREFILL_SCHEMA = (
    "paged_prefill_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor page_table, "
    "Tensor q_indptr, Tensor kv_lens, Tensor work, " + _COMMON
    + ", int[] launch=[128, 64, 8, 3, 1], bool? enable_pdl=None) -> ()")
_DECODE_SCHEMA = (
    "paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor page_table, "
    "Tensor kv_lens, Tensor(c!) partial_out, Tensor(d!) partial_lse, " + _COMMON
    + ", int[] launch=[64, 4, 2, 256, 4], bool? enable_pdl=None) -> ()")


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def _scale(q: torch.Tensor, sm_scale: float) -> float:
    return sm_scale if sm_scale > 0 else default_scale(q.size(-1))


def _check_prefill(q, k_cache, v_cache, page_table, q_indptr, kv_lens, work, out, lse=None,
                   sinks=None, k_scale=None, v_scale=None, sm_scale=0.0, window_left=None,
                   logit_cap=0.0, launch=(128, 64, 8, 3, 1), enable_pdl=None):
    op = "paged_prefill_attention"
    check_int_vector(op, "kv_lens", kv_lens, None, q.device)
    batch = kv_lens.size(0)
    check_common(op, q, k_cache, v_cache, page_table, kv_lens, batch, out, lse, sinks,
                 k_scale, v_scale, window_left, logit_cap, _scale(q, sm_scale))
    check_int_vector(op, "q_indptr", q_indptr, batch + 1, q.device)
    if work.dtype != torch.int32 or work.dim() != 2 or work.size(1) != 2 \
            or not work.is_contiguous():
        fail(op, "work", f"must be contiguous int32 [items, 2] (request, query block) from "
             f"the plan, got {work.dtype} {list(work.shape)}")
    if len(launch) != 5:
        fail(op, "launch", "must be [block_m, block_n, num_warps, num_stages, tma], got "
             f"{launch}")


def _check_decode(q, k_cache, v_cache, page_table, kv_lens, partial_out, partial_lse, out,
                  lse=None, sinks=None, k_scale=None, v_scale=None, sm_scale=0.0,
                  window_left=None, logit_cap=0.0, launch=(64, 4, 2, 256, 4),
                  enable_pdl=None):
    op = "paged_decode_attention"
    check_common(op, q, k_cache, v_cache, page_table, kv_lens, q.size(0), out, lse, sinks,
                 k_scale, v_scale, window_left, logit_cap, _scale(q, sm_scale))
    batch, q_heads, head_dim = q.shape
    if partial_lse.dtype != torch.float32 or partial_lse.dim() != 3 \
            or partial_lse.size(0) < batch or partial_lse.size(1) != q_heads \
            or partial_lse.size(2) < 1 or not partial_lse.is_contiguous():
        fail(op, "partial_lse", f"must be contiguous float32 [>= {batch}, {q_heads}, splits], "
             f"got {partial_lse.dtype} {list(partial_lse.shape)}")
    if partial_out.dtype != torch.float32 or partial_out.shape != (*partial_lse.shape,
                                                                     head_dim) \
            or not partial_out.is_contiguous():
        want = [*partial_lse.shape, head_dim]
        fail(op, "partial_out", f"must be contiguous float32 {want}, got {partial_out.dtype} "
             f"{list(partial_out.shape)}")
    for name, t in (("partial_out", partial_out), ("partial_lse", partial_lse)):
        if t.device != q.device:
            fail(op, name, f"must be on {q.device} like q, got {t.device}")
    if len(launch) != 5:
        fail(op, "launch", "must be [block_n, num_warps, num_stages, min_chunk, "
             f"tensor_core_min_group], got {launch}")


def _write(out, lse, ref_out, ref_lse) -> None:
    out.copy_(ref_out.to(out.dtype))
    if lse is not None:
        lse.copy_(ref_lse)


def _prefill_cpu(q, k_cache, v_cache, page_table, q_indptr, kv_lens, work, out, lse=None,
                 sinks=None, k_scale=None, v_scale=None, sm_scale=0.0, window_left=None,
                 logit_cap=0.0, launch=(128, 64, 8, 3, 1), enable_pdl=None):
    _check_prefill(q, k_cache, v_cache, page_table, q_indptr, kv_lens, work, out, lse, sinks,
                   k_scale, v_scale, sm_scale, window_left, logit_cap, launch)
    ref_out, ref_lse = reference_paged_attention(
        q, k_cache, v_cache, page_table, q_indptr, kv_lens, sm_scale=_scale(q, sm_scale),
        window_left=window_left, sinks=sinks, logit_cap=logit_cap, k_scale=k_scale,
        v_scale=v_scale)
    _write(out, lse, ref_out, ref_lse)


def _decode_cpu(q, k_cache, v_cache, page_table, kv_lens, partial_out, partial_lse, out,
                lse=None, sinks=None, k_scale=None, v_scale=None, sm_scale=0.0,
                window_left=None, logit_cap=0.0, launch=(64, 4, 2, 256, 4), enable_pdl=None):
    _check_decode(q, k_cache, v_cache, page_table, kv_lens, partial_out, partial_lse, out, lse,
                  sinks, k_scale, v_scale, sm_scale, window_left, logit_cap, launch)
    q_indptr = torch.arange(q.size(0) + 1, dtype=torch.int32)
    ref_out, ref_lse = reference_paged_attention(
        q, k_cache, v_cache, page_table, q_indptr, kv_lens, sm_scale=_scale(q, sm_scale),
        window_left=window_left, sinks=sinks, logit_cap=logit_cap, k_scale=k_scale,
        v_scale=v_scale)
    _write(out, lse, ref_out, ref_lse)


def _pdl_default(enable_pdl: bool | None) -> bool:
    if enable_pdl is not None:
        return enable_pdl
    from .dispatch import attention_table

    return attention_table().enable_pdl


def _prefill_cuda(q, k_cache, v_cache, page_table, q_indptr, kv_lens, work, out, lse=None,
                  sinks=None, k_scale=None, v_scale=None, sm_scale=0.0, window_left=None,
                  logit_cap=0.0, launch=(128, 64, 8, 3, 1), enable_pdl=None):
    from .launch import launch_prefill

    _check_prefill(q, k_cache, v_cache, page_table, q_indptr, kv_lens, work, out, lse, sinks,
                   k_scale, v_scale, sm_scale, window_left, logit_cap, launch)
    launch_prefill(q, k_cache, v_cache, page_table, q_indptr, kv_lens, work, out, lse, sinks,
                   k_scale, v_scale, _scale(q, sm_scale), window_left, logit_cap, list(launch),
                   _pdl_default(enable_pdl))


def _decode_cuda(q, k_cache, v_cache, page_table, kv_lens, partial_out, partial_lse, out,
                 lse=None, sinks=None, k_scale=None, v_scale=None, sm_scale=0.0,
                 window_left=None, logit_cap=0.0, launch=(64, 4, 2, 256, 4), enable_pdl=None):
    from .launch import launch_decode

    _check_decode(q, k_cache, v_cache, page_table, kv_lens, partial_out, partial_lse, out, lse,
                  sinks, k_scale, v_scale, sm_scale, window_left, logit_cap, launch)
    launch_decode(q, k_cache, v_cache, page_table, kv_lens, partial_out, partial_lse, out, lse,
                  sinks, k_scale, v_scale, _scale(q, sm_scale), window_left, logit_cap,
                  list(launch), _pdl_default(enable_pdl))


define(_PREFILL_SCHEMA)
define(_DECODE_SCHEMA)
impl_cpu("paged_prefill_attention", _prefill_cpu)
impl_cpu("paged_decode_attention", _decode_cpu)
impl_fake("paged_prefill_attention", _check_prefill)
impl_fake("paged_decode_attention", _check_decode)
LIB.impl("paged_prefill_attention", _prefill_cuda, "CUDA")
LIB.impl("paged_decode_attention", _decode_cuda, "CUDA")
