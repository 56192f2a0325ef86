"""Baselines for `fuseinfer bench attention`, on contiguous (unpaged) KV as they take it.

sdpa: torch.nn.functional.scaled_dot_product_attention, [batch, heads, len, dim] with
      enable_gqa; decode with a window reads the window's slice; causal prefill uses
      is_causal, extend an explicit bottom-right mask. SDPA has no sinks: those rows time
      it without them (it does less work than asked).
flex: torch flex_attention compiled, causal / window / prefix offset as a mask_mod; sinks
      emulated exactly from its lse: out * sigmoid(lse - sink).
flashinfer: not timed here (no wheel on the device); published figures are cited in
      docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

_FLEX: dict[str, Any] = {}


def contiguous_kv(k_rows: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """[batch * length, heads, dim] rows as [batch, heads, length, dim]."""
    return k_rows.view(batch, length, *k_rows.shape[1:]).transpose(1, 2).contiguous()


def sdpa_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                window_left: int | None) -> Callable[[], torch.Tensor]:
    """q [batch, hq, dim]; k, v [batch, hkv, len, dim]."""
    if window_left is not None and k.size(2) > window_left + 1:
        k, v = k[:, :, -(window_left + 1):], v[:, :, -(window_left + 1):]
    q4 = q.unsqueeze(2)
    return lambda: F.scaled_dot_product_attention(q4, k, v, enable_gqa=True)


def sdpa_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                 ) -> Callable[[], torch.Tensor]:
    """q [batch, hq, q_len, dim]; k, v [batch, hkv, kv_len, dim]; causal, bottom-right."""
    q_len, kv_len = q.size(2), k.size(2)
    if q_len == kv_len:
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    rows = torch.arange(kv_len - q_len, kv_len, device=q.device)
    mask = torch.arange(kv_len, device=q.device)[None, :] <= rows[:, None]
    return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def _flex():
    if not _FLEX:
        import torch._dynamo.config as dynamo_config
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        # One compile per shape; past the recompile limit torch would silently fall back
        # to an unfused flex that materializes the scores: time that and the row lies.
        dynamo_config.recompile_limit = 1024
        dynamo_config.fail_on_recompile_limit_hit = True
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
        _FLEX["mask"] = create_block_mask
    return _FLEX["fn"], _FLEX["mask"]


def flex_attention_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        window_left: int | None, sinks: torch.Tensor | None
                        ) -> Callable[[], torch.Tensor]:
    """q [batch, hq, q_len, dim] (its rows are the last q_len positions); k, v
    [batch, hkv, kv_len, dim]."""
    flex, create_block_mask = _flex()
    q_len, kv_len = q.size(2), k.size(2)
    offset = kv_len - q_len

    def mask_mod(b, h, qi, kj):
        visible = kj <= qi + offset
        if window_left is not None:
            visible = visible & (kj >= qi + offset - window_left)
        return visible

    block_mask = create_block_mask(mask_mod, None, None, q_len, kv_len, device=q.device)
    if sinks is None:
        return lambda: flex(q, k, v, block_mask=block_mask, enable_gqa=True)
    sink = sinks.float().view(1, -1, 1)

    def with_sinks() -> torch.Tensor:
        out, lse = flex(q, k, v, block_mask=block_mask, enable_gqa=True, return_lse=True)
        return out * torch.sigmoid(lse - sink).unsqueeze(-1).to(out.dtype)

    return with_sinks
