"""The paged KV cache the model reads and writes: per-layer K and V buffers (and FP8
scales), laid out [pages, page_size, kv_heads, head_dim] as the attention and KV-write ops
take them. Which pages a request owns is the runtime's business (runtime/kv_pool.py); the
model only sees page ids through the attention plan and the KV slots of a step.

Page 0 is reserved: padded batch rows and unused page-table entries point at it, so a
stray read or write stays in bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8 = torch.float8_e4m3fn


@dataclass(frozen=True)
class KvCacheConfig:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    page_size: int
    dtype: torch.dtype  # bfloat16, float16 or float8_e4m3fn (float32 on the CPU)

    def bytes_per_page(self) -> int:
        item = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.page_size * self.num_kv_heads * self.head_dim * item


class PagedKvCache:
    """Per-layer K and V caches of `num_pages` pages. FP8 caches carry float32 scales per
    layer and KV head (1.0 until calibrated)."""

    def __init__(self, config: KvCacheConfig, num_pages: int, device: torch.device | str
                 ) -> None:
        if config.dtype not in (torch.bfloat16, torch.float16, FP8) and not (
                config.dtype == torch.float32 and torch.device(device).type == "cpu"):
            raise ValueError(f"KV dtype must be bfloat16, float16 or float8_e4m3fn (float32 "
                             f"on the CPU), got {config.dtype}")
        if num_pages < 2:
            raise ValueError(f"num_pages must be >= 2 (page 0 is reserved), got {num_pages}")
        self.config = config
        self.num_pages = num_pages
        shape = (num_pages, config.page_size, config.num_kv_heads, config.head_dim)
        self.k = [torch.zeros(shape, dtype=config.dtype, device=device)
                  for _ in range(config.num_layers)]
        self.v = [torch.zeros(shape, dtype=config.dtype, device=device)
                  for _ in range(config.num_layers)]
        fp8 = config.dtype == FP8
        # one scale per KV head (runtime/kv_scale_calibration sets them in place)
        self.k_scale = [torch.ones(config.num_kv_heads, device=device) if fp8 else None
                        for _ in range(config.num_layers)]
        self.v_scale = [torch.ones(config.num_kv_heads, device=device) if fp8 else None
                        for _ in range(config.num_layers)]

    @property
    def page_size(self) -> int:
        return self.config.page_size
