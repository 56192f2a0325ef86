"""Helpers shared by the Triton launchers (attention, silu_and_mul, qk_rmsnorm,
small_batch_linear)."""

from __future__ import annotations

import torch


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): Triton block sizes."""
    return 1 << max(n - 1, 0).bit_length()


def use_pdl(enable_pdl: bool | None, device: torch.device) -> bool:
    """Launch with PDL (griddepcontrol)? It needs sm_90+; the interpreter has no such
    thing. None means on where supported."""
    return enable_pdl is not False and device.type == "cuda" \
        and torch.cuda.get_device_capability(device)[0] >= 9
