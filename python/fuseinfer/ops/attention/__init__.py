"""Paged attention family (Triton): paged_prefill_attention and paged_decode_attention,
and the PagedAttention plan/run wrapper that the runtime uses."""

from __future__ import annotations

from ..discovery import import_modules
from .arguments import DecodeLaunch, PrefillLaunch
from .plan import AttentionShape, DecodePlan, PagedAttention, PrefillPlan

# Every module of the family, imported (paged_attention registers the two schemas) and
# kept as a module attribute; fuseinfer.ops re-exports what each lists in __all__. The
# plan and launch types are importable from the family too.
__all__ = [*import_modules(__name__, __path__), "AttentionShape", "DecodeLaunch",
           "DecodePlan", "PagedAttention", "PrefillLaunch", "PrefillPlan"]
