"""Random paged-KV attention inputs, shared by the attention bench suite and the tests.

Pages are handed out in a random order, so a request's tokens are scattered across the
cache the way a long-running server's are."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.kvcache.store_kv_cache import FP8


@dataclass
class PagedKv:
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    page_table: torch.Tensor  # int32 [batch, max_pages]
    k_scale: torch.Tensor | None
    v_scale: torch.Tensor | None

    def contiguous(self, b: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Request b's first `length` keys and values as [length, kv_heads, head_dim]
        (dequantized to float32 when the cache is fp8)."""
        from ..ops.attention.reference import gather_tokens

        return (gather_tokens(self.k_cache, self.page_table[b], length, self.k_scale),
                gather_tokens(self.v_cache, self.page_table[b], length, self.v_scale))


PER_HEAD_SPREAD = (1.0, 0.1, 2.0, 0.25, 4.0, 0.5, 0.15, 1.5)  # per-head scale factors


def make_paged_kv(kv_lens: list[int], kv_heads: int, head_dim: int, page_size: int,
                  dtype: torch.dtype, device: torch.device | str, *, fp8: bool = False,
                  spare_pages: int = 3, generator: torch.Generator | None = None,
                  poison: bool = False, per_head_scales: bool = False) -> PagedKv:
    """Caches holding random keys/values for requests of the given lengths (plus a few
    unused pages), and a page table whose rows are padded with pages of other requests.
    poison: every slot that holds no request's token is NaN (a kernel that lets one into
    its sums returns NaN). per_head_scales (fp8): each KV head its own scales (out of order,
    40x apart at most), the cache holding values / scale, so a head read back with another
    head's scale is off by up to 40x."""
    pages_per_req = [max(1, -(-n // page_size)) for n in kv_lens]
    total = sum(pages_per_req) + spare_pages
    width = max(pages_per_req)
    order = torch.randperm(total, generator=generator).to(torch.int32)
    table = torch.empty(len(kv_lens), width, dtype=torch.int32)
    at = 0
    for b, n in enumerate(pages_per_req):
        row = order[at:at + n]
        pad = order[torch.randint(0, total, (width - n,), generator=generator)]
        table[b] = torch.cat([row, pad])
        at += n
    shape = (total, page_size, kv_heads, head_dim) if page_size > 1 \
        else (total, kv_heads, head_dim)
    k = torch.randn(shape, generator=generator)
    v = torch.randn(shape, generator=generator)
    if poison:
        used = torch.zeros(total * page_size, dtype=torch.bool)
        for b, n in enumerate(kv_lens):
            pos = torch.arange(n)
            used[table[b, pos // page_size].long() * page_size + pos % page_size] = True
        for t in (k, v):
            t.view(total * page_size, -1)[~used] = float("nan")
    k, v = k.to(device=device), v.to(device=device)
    if fp8 and per_head_scales:
        spread = torch.tensor(PER_HEAD_SPREAD, device=device)[
            torch.arange(kv_heads, device=device) % len(PER_HEAD_SPREAD)]
        k_scale, v_scale = 0.5 * spread, 0.25 * spread.flip(0)
        # a scale per KV head broadcasts over [..., kv_heads, head_dim]
        return PagedKv((k / k_scale.view(-1, 1)).to(FP8), (v / v_scale.view(-1, 1)).to(FP8),
                       table.to(device), k_scale, v_scale)
    if fp8:
        k_scale = torch.tensor([0.5], device=device)
        v_scale = torch.tensor([0.25], device=device)
        return PagedKv((k / 0.5).to(FP8), (v / 0.25).to(FP8), table.to(device), k_scale,
                       v_scale)
    return PagedKv(k.to(dtype), v.to(dtype), table.to(device), None, None)
