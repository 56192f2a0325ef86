"""One token sequence through the model outside the scheduler: FP8 KV-scale calibration and
accuracy checks run a prefill on a fresh engine with nothing else in its cache.

The sequence's KV goes to pages 1, 2, ... (page 0 is the reserved pad page); those are
ordinary pages that later requests overwrite. Not for a cache holding live requests.
"""

from __future__ import annotations

import torch

from ..models.decoder import DecoderModel, ForwardBatch


def max_direct_tokens(model: DecoderModel) -> int:
    """The longest sequence the cache's pages 1.. hold."""
    kv = model.kv
    return (kv.num_pages - 1) * kv.page_size


def direct_prefill(model: DecoderModel, ids: torch.Tensor,
                   logits_rows: torch.Tensor | None = None) -> torch.Tensor:
    """The logits of `ids` (int64 [T], on the model's device) at `logits_rows` (default:
    the last token), float as the model computes them: [len(logits_rows), vocab]."""
    kv = model.kv
    n, page_size = ids.numel(), kv.page_size
    if not 1 <= n <= max_direct_tokens(model):
        raise ValueError(f"direct_prefill: {n} tokens; the cache holds 1 to "
                         f"{max_direct_tokens(model)} outside page 0")
    device = kv.k[0].device
    table = torch.arange(1, -(-n // page_size) + 1, dtype=torch.int32, device=device)[None, :]
    positions = torch.arange(n, device=device)
    cache_loc = table[0].long()[positions // page_size] * page_size + positions % page_size
    rows = torch.tensor([n - 1], device=device) if logits_rows is None else logits_rows
    batch = ForwardBatch(ids.to(device), positions, cache_loc,
                         model.attention.plan_prefill([n], [n], table), rows.to(device))
    return model.forward(batch)
