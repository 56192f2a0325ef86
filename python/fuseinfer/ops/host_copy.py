"""Host values to the device without a host sync.

`torch.tensor(values, device="cuda")` copies from pageable memory, which waits for the
stream: the CPU would stall behind the GPU work already queued. Staging the values in
pinned memory makes the copy asynchronous (torch keeps the pinned buffer alive until the
copy is done)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def to_device(values: Sequence[int | float], dtype: torch.dtype, device: torch.device | str,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """`values` as a `dtype` tensor on `device` (written into `out` when given)."""
    device = torch.device(device) if out is None else out.device
    host = torch.tensor(values, dtype=dtype, pin_memory=device.type == "cuda")
    if out is None:
        return host.to(device, non_blocking=True)
    out.copy_(host, non_blocking=True)
    return out
