"""Argument-check helpers shared by every op family's CPU, fake and first-call CUDA paths.
Each error is a ValueError naming the op and the argument, as the C++ launchers' are."""

from __future__ import annotations

import torch

# the float dtypes the activation-side ops read and write
FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def fail(op: str, arg: str, message: str) -> None:
    raise ValueError(f"fuseinfer.{op}: {arg} {message}")


def has_storage(t: torch.Tensor) -> bool:
    """False for meta and fake tensors, whose data pointers cannot be read."""
    from torch._subclasses.fake_tensor import is_fake

    return t.device.type != "meta" and not is_fake(t)


def contiguous_tail(t: torch.Tensor, first: int) -> bool:
    """Dims first.. of t are laid out contiguously (size-1 dims may have any stride)."""
    expected = 1
    for d in range(t.dim() - 1, first - 1, -1):
        if t.size(d) != 1 and t.stride(d) != expected:
            return False
        expected *= t.size(d)
    return True


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors with storage share any byte (fake tensors: never)."""
    if not (has_storage(a) and has_storage(b)) or not a.numel() or not b.numel() \
            or a.device != b.device:
        return False

    def span(t: torch.Tensor) -> tuple[int, int]:
        last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(),
                                                                strict=True))
        return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1
