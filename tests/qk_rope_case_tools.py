"""Helpers of the qk_rmsnorm_rope tests on the CPU and on the GPU: copying a case's
arguments and comparing float tensors by their bits."""

from __future__ import annotations

import torch


def clone_args(buffer: torch.Tensor, args: list) -> tuple[torch.Tensor, list]:
    """A copy of the case: a new buffer with qkv as the same view of it, new caches."""
    copy = buffer.clone()
    new = list(args)
    new[1] = copy.as_strided(args[1].shape, args[1].stride(), args[1].storage_offset())
    new[9], new[10] = args[9].clone(), args[10].clone()
    return copy, new


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal, NaN included (torch.equal says NaN != NaN)."""
    int_type = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[a.element_size()]
    return a.dtype == b.dtype and torch.equal(a.view(int_type), b.view(int_type))


def ulp_distance(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Steps between two same-dtype float tensors on the representable number line."""
    int_type = {1: torch.int8, 2: torch.int16, 4: torch.int32}[got.element_size()]
    magnitude = (1 << (8 * got.element_size() - 1)) - 1

    def line(t):
        bits = t.view(int_type).long()
        return torch.where(bits < 0, -(bits & magnitude), bits)

    return (line(got) - line(want)).abs()
