"""Paged attention semantics, in float32 on any device: the CPU path and the test oracle.

For request b with q_len = q_indptr[b+1] - q_indptr[b] new tokens and kv_len = kv_lens[b]
cached tokens (the new ones included, already written), query i sits at position
p = kv_len - q_len + i and sees key j when

    j <= p                                  (causal)
    j >= p - window_left                    (sliding window; None: no window)

Logits: s_j = sm_scale * (q . k_j), then s_j = cap * tanh(s_j / cap) when logit_cap > 0.
A sink (one learned logit per q head) joins the softmax denominator and carries no value:

    out = sum_j exp(s_j) v_j / (sum_j exp(s_j) + exp(sink)),   lse = log(the denominator)

FP8 caches hold k / k_scale and v / v_scale (a scale: one element, or one per KV head): keys
and values are read back times the scale.
A request with kv_len = 0 (a padded batch row) gives zeros and lse = -inf.
"""

from __future__ import annotations

import torch


def cache_rows(cache: torch.Tensor) -> torch.Tensor:
    """A [slots, heads, dim] or paged [pages, page_size, heads, dim] cache as
    [slots, heads, dim] (a view when the layout allows)."""
    if cache.dim() == 4:
        return cache.reshape(cache.size(0) * cache.size(1), cache.size(2), cache.size(3))
    return cache


def page_size_of(cache: torch.Tensor) -> int:
    return cache.size(1) if cache.dim() == 4 else 1


def gather_tokens(cache: torch.Tensor, page_table_row: torch.Tensor, length: int,
                  scale: torch.Tensor | float | None) -> torch.Tensor:
    """Tokens 0..length-1 of one request, as float32 [length, heads, dim]."""
    page_size = page_size_of(cache)
    pos = torch.arange(length, device=cache.device)
    slots = page_table_row.long()[pos // page_size] * page_size + pos % page_size
    rows = cache_rows(cache)[slots].float()
    if isinstance(scale, torch.Tensor):  # one element, or one per KV head
        rows = rows * scale.float().reshape(-1, 1)
    elif scale is not None:
        rows = rows * scale
    return rows


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
           sm_scale: float, window_left: int | None, sinks: torch.Tensor | None,
           logit_cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q [n, hq, d] at absolute `positions` [n] over keys 0..L-1 (k, v [L, hkv, d]), float32.
    Returns out [n, hq, d] and lse [n, hq]."""
    n, hq, d = q.shape
    hkv = k.size(1)
    group = hq // hkv
    kk = k.repeat_interleave(group, dim=1)  # [L, hq, d]
    vv = v.repeat_interleave(group, dim=1)
    s = torch.einsum("nhd,lhd->hnl", q.float(), kk) * sm_scale
    if logit_cap > 0:
        s = logit_cap * torch.tanh(s / logit_cap)
    j = torch.arange(k.size(0), device=q.device)
    visible = j[None, :] <= positions[:, None]
    if window_left is not None:
        visible &= j[None, :] >= positions[:, None] - window_left
    s = s.masked_fill(~visible[None], float("-inf"))
    if sinks is not None:
        sink_col = sinks.float().view(hq, 1, 1).expand(hq, n, 1)
        s = torch.cat([s, sink_col], dim=2)
    lse = torch.logsumexp(s, dim=2)  # [hq, n]
    p = torch.exp(s - lse[..., None])
    if sinks is not None:
        p = p[..., :-1]
    p = torch.nan_to_num(p, nan=0.0)  # rows with no visible key and no sink
    out = torch.einsum("hnl,lhd->nhd", p, vv)
    return out, lse.transpose(0, 1).contiguous()


def reference_paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, page_table: torch.Tensor,
    q_indptr: torch.Tensor, kv_lens: torch.Tensor, *, sm_scale: float,
    window_left: int | None = None, sinks: torch.Tensor | None = None,
    logit_cap: float = 0.0, k_scale: torch.Tensor | float | None = None,
    v_scale: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged paged attention (prefill, extend and decode alike), float32.

    q [tokens, hq, d] holds each request's new tokens back to back (q_indptr [batch+1]);
    returns out [tokens, hq, d] and lse [tokens, hq] (natural log)."""
    tokens, hq, d = q.shape
    out = torch.zeros(tokens, hq, d, dtype=torch.float32, device=q.device)
    lse = torch.full((tokens, hq), float("-inf"), dtype=torch.float32, device=q.device)
    starts = q_indptr.tolist()
    for b, kv_len in enumerate(kv_lens.tolist()):
        q0, q1 = starts[b], starts[b + 1]
        if q1 == q0 or kv_len == 0:
            continue
        k = gather_tokens(k_cache, page_table[b], kv_len, k_scale)
        v = gather_tokens(v_cache, page_table[b], kv_len, v_scale)
        positions = torch.arange(kv_len - (q1 - q0), kv_len, device=q.device)
        o, l_ = attend(q[q0:q1], k, v, positions, sm_scale, window_left, sinks, logit_cap)
        out[q0:q1] = o
        lse[q0:q1] = l_
    return out, lse
