"""What the gated activations (silu_and_mul, clamped_swiglu_and_mul) share: the layout of
their fused [gate | up] input and [tokens, inner] output, and their one-pass launch shape."""

from __future__ import annotations

import torch

from ..arg_checks import FLOAT_DTYPES, fail
from ..triton_launch import next_pow2

MAX_BLOCK = 1024


def check_gate_up(op: str, out: torch.Tensor, input: torch.Tensor) -> None:
    """input [tokens, 2 * inner] and out [tokens, inner]: bf16, fp16 or fp32 alike, on one
    device, contiguous last dims (any row stride); a ValueError naming the bad one."""
    if input.dim() != 2 or input.size(1) % 2:
        fail(op, "input", f"must be [tokens, 2 * inner], got {list(input.shape)}")
    if input.dtype not in FLOAT_DTYPES:
        fail(op, "input", f"must be bfloat16, float16 or float32, got {input.dtype}")
    if input.size(1) and input.stride(1) != 1:
        fail(op, "input", "must have a contiguous last dim")
    want = [input.size(0), input.size(1) // 2]
    if list(out.shape) != want:
        fail(op, "out", f"must be {want}, got {list(out.shape)}")
    if out.dtype != input.dtype or out.device != input.device:
        fail(op, "out", f"must be {input.dtype} on {input.device}, got {out.dtype} on "
             f"{out.device}")
    if out.size(1) and out.stride(1) != 1:
        fail(op, "out", "must have a contiguous last dim")


def gate_up_out(input: torch.Tensor) -> torch.Tensor:
    """An empty [tokens, inner] output for input [tokens, 2 * inner]."""
    return torch.empty(input.size(0), input.size(-1) // 2, dtype=input.dtype,
                       device=input.device)


def gate_up_launch(out: torch.Tensor) -> tuple[tuple[int, int], int] | None:
    """(grid, BLOCK) of the one-pass kernels: a program per row and BLOCK columns; None
    when out is empty (nothing to launch)."""
    rows, inner = out.shape
    if rows == 0 or inner == 0:
        return None
    block = min(MAX_BLOCK, next_pow2(inner))
    return (rows, -(-inner // block)), block


__all__: list[str] = []
