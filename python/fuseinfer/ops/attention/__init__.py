"""Paged attention family (Triton): paged_prefill_attention and paged_decode_attention,
and the PagedAttention plan/run wrapper that the runtime uses."""

from __future__ import annotations

from . import paged_attention  # registers the two op schemas
from .arguments import DecodeLaunch, PrefillLaunch
from .plan import AttentionShape, DecodePlan, PagedAttention, PrefillPlan

__all__ = ["AttentionShape", "DecodeLaunch", "DecodePlan", "PagedAttention", "PrefillLaunch",
           "PrefillPlan", "paged_attention"]
