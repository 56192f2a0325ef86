"""Paged attention: ragged prefill/extend and split-KV decode over a paged KV cache.

    paged_prefill_attention  queries of each request attend causally to the request's
                             cached tokens (prefix + themselves, already in the cache)
    paged_decode_attention   one query per request, KV split across programs, then merged
                             (by the last split to finish, given merge_counters)

Semantics (causal mask, sliding window, sinks, soft-cap, FP8 scales, lse) are defined by
fuseinfer.ops.attention.reference, which is also the CPU path. Layouts:
  q, out        [tokens, q_heads, head_dim] (decode: tokens = batch), last dim contiguous
  k/v cache     [slots, kv_heads, head_dim] (page size 1) or
                [pages, page_size, kv_heads, head_dim]; bf16/fp16 like q, or float8_e4m3fn
                with optional float32 k_scale / v_scale (one element, or one per KV head)
  page_table    int32 [batch, max_pages]: request b's token t lives in slot
                page_table[b, t // page_size] * page_size + t % page_size
  q_indptr      int32 [batch + 1], cumulative query counts; kv_lens int32 [batch]
  lse           optional float32 [tokens, q_heads], natural log of the softmax denominator
                (the sink included)
  schedule      optional int32 [waves, programs]: the sm_90a kernel's persistent programs'
                tiles, from the plan (other launches ignore it)
  sinks         optional float32/bfloat16 [q_heads]; window_left W: keys p - W .. p
head_dim is 64, 128 or 256; q_heads must be a multiple of kv_heads (GQA/MQA).
The arguments, in order, are PrefillArgs / DecodeArgs (fuseinfer.ops.attention.arguments),
from which the schemas below are derived. Launch metadata (work items, split buffers,
block sizes) comes from fuseinfer.ops.attention.plan, which checks lengths on the host;
the ops check only shapes, dtypes and layouts (no device-to-host sync), so lengths that
disagree with the page table are the caller's contract on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..arg_checks import fail
from ..library import LIB, define, impl_cpu, impl_fake
from ..signature import call_args, op_schema
from .arguments import (
    DECODE_WRITES,
    PREFILL_WRITES,
    DecodeArgs,
    DecodeLaunch,
    PrefillArgs,
    PrefillLaunch,
    softmax_scale,
)
from .checks import check_common, check_int_vector
from .launch import launch_decode, launch_prefill
from .reference import reference_paged_attention

PREFILL_SCHEMA = op_schema("paged_prefill_attention", PrefillArgs, PREFILL_WRITES)
DECODE_SCHEMA = op_schema("paged_decode_attention", DecodeArgs, DECODE_WRITES)


def _check_shared(op: str, a: PrefillArgs | DecodeArgs, batch: int) -> None:
    check_common(op, a.q, a.k_cache, a.v_cache, a.page_table, a.kv_lens, batch, a.out, a.lse,
                 a.sinks, a.k_scale, a.v_scale, a.window_left, a.logit_cap, softmax_scale(a))


def _check_launch(op: str, launch: Sequence[int], fields: tuple[str, ...]) -> None:
    if len(launch) != len(fields):
        fail(op, "launch", f"must be [{', '.join(fields)}], got {launch}")


def check_prefill(a: PrefillArgs) -> None:
    op = "paged_prefill_attention"
    check_int_vector(op, "kv_lens", a.kv_lens, None, a.q.device)
    batch = a.kv_lens.size(0)
    _check_shared(op, a, batch)
    check_int_vector(op, "q_indptr", a.q_indptr, batch + 1, a.q.device)
    work = a.work
    if work.dtype != torch.int32 or work.dim() != 2 or work.size(1) != 2 \
            or not work.is_contiguous():
        fail(op, "work", f"must be contiguous int32 [items, 2] (request, query block) from "
             f"the plan, got {work.dtype} {list(work.shape)}")
    schedule = a.schedule
    if schedule is not None:
        tiles = work.size(0) * a.q.size(1)
        if schedule.dtype != torch.int32 or schedule.dim() != 2 or schedule.size(1) < 1 \
                or not schedule.is_contiguous() \
                or schedule.size(0) != -(-tiles // schedule.size(1)):
            fail(op, "schedule", f"must be contiguous int32 [waves, programs] with waves * "
                 f"programs just covering the {tiles} tiles (work items x q heads), got "
                 f"{schedule.dtype} {list(schedule.shape)}")
        if schedule.device != a.q.device:
            fail(op, "schedule", f"must be on {a.q.device} like q, got {schedule.device}")
    _check_launch(op, a.launch, PrefillLaunch._fields)


def check_decode(a: DecodeArgs) -> None:
    op = "paged_decode_attention"
    _check_shared(op, a, a.q.size(0))
    batch, q_heads, head_dim = a.q.shape
    partial_out, partial_lse = a.partial_out, a.partial_lse
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
    counters = a.merge_counters
    if counters is not None and (counters.dtype != torch.int32 or counters.dim() != 2
                                 or counters.size(0) < batch or counters.size(1) != q_heads
                                 or not counters.is_contiguous()):
        fail(op, "merge_counters", f"must be contiguous int32 [>= {batch}, {q_heads}], got "
             f"{counters.dtype} {list(counters.shape)}")
    for name, t in (("partial_out", partial_out), ("partial_lse", partial_lse),
                    ("merge_counters", counters)):
        if t is not None and t.device != a.q.device:
            fail(op, name, f"must be on {a.q.device} like q, got {t.device}")
    _check_launch(op, a.launch, DecodeLaunch._fields)


def _reference_into(a: PrefillArgs | DecodeArgs, q_indptr: torch.Tensor) -> None:
    """The CPU path: the float32 reference, written into out (and lse)."""
    out, lse = reference_paged_attention(
        a.q, a.k_cache, a.v_cache, a.page_table, q_indptr, a.kv_lens,
        sm_scale=softmax_scale(a), window_left=a.window_left, sinks=a.sinks,
        logit_cap=a.logit_cap, k_scale=a.k_scale, v_scale=a.v_scale)
    a.out.copy_(out.to(a.out.dtype))
    if a.lse is not None:
        a.lse.copy_(lse)


def _prefill_cpu(*args, **kwargs) -> None:
    a = call_args(PrefillArgs, args, kwargs)
    check_prefill(a)
    _reference_into(a, a.q_indptr)


def _decode_cpu(*args, **kwargs) -> None:
    a = call_args(DecodeArgs, args, kwargs)
    check_decode(a)
    _reference_into(a, torch.arange(a.q.size(0) + 1, dtype=torch.int32))


def _prefill_fake(*args, **kwargs) -> None:
    check_prefill(call_args(PrefillArgs, args, kwargs))


def _decode_fake(*args, **kwargs) -> None:
    check_decode(call_args(DecodeArgs, args, kwargs))


def _prefill_cuda(*args, **kwargs) -> None:
    a = call_args(PrefillArgs, args, kwargs)
    check_prefill(a)
    launch_prefill(a)


def _decode_cuda(*args, **kwargs) -> None:
    a = call_args(DecodeArgs, args, kwargs)
    check_decode(a)
    launch_decode(a)


define(PREFILL_SCHEMA)
define(DECODE_SCHEMA)
impl_cpu("paged_prefill_attention", _prefill_cpu)
impl_cpu("paged_decode_attention", _decode_cpu)
impl_fake("paged_prefill_attention", _prefill_fake)
impl_fake("paged_decode_attention", _decode_fake)
LIB.impl("paged_prefill_attention", _prefill_cuda, "CUDA")
LIB.impl("paged_decode_attention", _decode_cuda, "CUDA")
