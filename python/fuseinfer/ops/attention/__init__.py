"""Paged attention family (Triton): paged_prefill_attention and paged_decode_attention,
and the PagedAttention plan/run wrapper that the runtime uses."""

from __future__ import annotations

from . import paged_attention  # registers the two op schemas
from .plan import AttentionShape, DecodePlan, PagedAttention, PrefillPlan

__all__ = ["AttentionShape", "DecodePlan", "PagedAttention", "PrefillPlan", "paged_attention"]
