"""The arguments of the two paged attention ops, written once: the schemas, the checks, the
CPU, fake and CUDA implementations and the Triton launchers all read these tuples.

`launch` is the plan's launch choice, passed to the op as an int list in the field order
of PrefillLaunch / DecodeLaunch (the plan builds them from the dispatch table).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch


class PrefillLaunch(NamedTuple):
    """Launch choice of paged_prefill_attention."""

    block_m: int  # queries per program
    block_n: int  # keys per loop step
    num_warps: int
    num_stages: int
    tma: int  # 1: bulk-copy key/value tiles that lie in one page (sm_90+), 0: plain loads
    hopper_kernel: int = 0  # 1: the warp-specialized sm_90a kernel where it applies
    pingpong: int = 0  # that kernel: 1: its consumers take turns issuing their MMAs
    persistent: int = 0  # that kernel: 1: one program per SM, tile after tile


class DecodeLaunch(NamedTuple):
    """Launch choice of paged_decode_attention."""

    block_n: int  # keys per loop step
    num_warps: int
    num_stages: int
    min_chunk: int  # fewest keys a split covers
    tensor_core_min_group: int  # KV groups of at least this many q heads use tensor cores
    kv_heads_per_program: int = 1  # tensor cores: KV heads a program reads side by side
    cuda_kernel: int = 0  # 1: csrc/attention's decode where it applies (the rule's "cuda")


class PrefillArgs(NamedTuple):
    """paged_prefill_attention's arguments, in schema order (out and lse are written)."""

    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    page_table: torch.Tensor
    q_indptr: torch.Tensor
    kv_lens: torch.Tensor
    work: torch.Tensor
    out: torch.Tensor
    lse: torch.Tensor | None = None
    sinks: torch.Tensor | None = None
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None
    sm_scale: float = 0.0  # 0: 1 / sqrt(head_dim)
    window_left: int | None = None
    logit_cap: float = 0.0
    launch: Sequence[int] = PrefillLaunch(128, 64, 8, 3, 1)
    enable_pdl: bool | None = None
    # the sm_90a kernel's persistent launch: int32 [waves, programs] tile numbers (-1: none)
    # from the plan (tile_schedule.py); None, or any other launch: the kernel deals tiles
    schedule: torch.Tensor | None = None


class DecodeArgs(NamedTuple):
    """paged_decode_attention's arguments, in schema order (partial_out, partial_lse, out,
    lse and merge_counters are written). merge_counters: int32 [>= batch, q_heads], zero,
    left at zero: given, the last split of each request and head group to finish merges the
    pieces (no second launch); None, a merge kernel follows."""

    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    page_table: torch.Tensor
    kv_lens: torch.Tensor
    partial_out: torch.Tensor
    partial_lse: torch.Tensor
    out: torch.Tensor
    lse: torch.Tensor | None = None
    sinks: torch.Tensor | None = None
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None
    sm_scale: float = 0.0  # 0: 1 / sqrt(head_dim)
    window_left: int | None = None
    logit_cap: float = 0.0
    launch: Sequence[int] = DecodeLaunch(64, 4, 2, 256, 4)
    enable_pdl: bool | None = None
    merge_counters: torch.Tensor | None = None


PREFILL_WRITES = ("out", "lse")
DECODE_WRITES = ("partial_out", "partial_lse", "out", "lse", "merge_counters")


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def softmax_scale(a: PrefillArgs | DecodeArgs) -> float:
    """The op's sm_scale, 0 meaning 1 / sqrt(head_dim)."""
    return a.sm_scale if a.sm_scale > 0 else default_scale(a.q.size(-1))
