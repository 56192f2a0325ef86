"""Argument checks and output allocation shared by the FP4/MX quantizers; every error is a
ValueError naming the op and the argument (the C++ launcher's checks say the same)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..arg_checks import fail
from .scale_layout import swizzled_shape

DTYPES = (torch.bfloat16, torch.float16)
MAX_EXPERTS = 4096  # expert offsets held in a block's shared memory


@dataclass(frozen=True)
class QuantFormat:
    """What differs between the three ops: the block size, the dtype of q and of the
    scales, and how many q bytes an element takes (halves for FP4)."""

    op: str
    block: int
    q_dtype: torch.dtype
    scale_dtype: torch.dtype
    fp4: bool

    def q_width(self, cols: int) -> int:
        return cols // 2 if self.fp4 else cols

    def scale_shape(self, rows: int, cols: int, swizzled: bool,
                    experts: int = 1) -> tuple[int, int]:
        if swizzled:
            return swizzled_shape(rows, cols // self.block, experts)
        return rows, cols // self.block


NVFP4 = QuantFormat("nvfp4_quantize", 16, torch.uint8, torch.float8_e4m3fn, True)
MXFP4 = QuantFormat("mxfp4_quantize", 32, torch.uint8, torch.uint8, True)
MXFP8 = QuantFormat("mxfp8_quantize", 32, torch.float8_e4m3fn, torch.uint8, False)


def check_input(fmt: QuantFormat, input: torch.Tensor) -> None:
    op = fmt.op
    if input.dim() != 2:
        fail(op, "input", f"must be [tokens, hidden], got {list(input.shape)}")
    if input.dtype not in DTYPES:
        fail(op, "input", f"must be bfloat16 or float16, got {input.dtype}")
    k = input.shape[1]
    if k % fmt.block:
        fail(op, "input", f"its hidden size ({k}) must be a multiple of {fmt.block} (one "
             f"scale per block of {fmt.block} elements)")
    if k and input.stride(1) != 1:
        fail(op, "input", f"must have a contiguous last dim, got strides {input.stride()}")


def check_outputs(fmt: QuantFormat, q: torch.Tensor, scales: torch.Tensor,
                  input: torch.Tensor, out_cols: int, swizzled: bool, experts: int = 1) -> None:
    """q [M, out_cols (/ 2 for FP4)] and scales in their layout, on input's device."""
    op, m = fmt.op, input.shape[0]
    want_q = [m, fmt.q_width(out_cols)]
    if list(q.shape) != want_q or q.dtype != fmt.q_dtype or q.device != input.device:
        fail(op, "q", f"must be {fmt.q_dtype} {want_q} on {input.device}, got {q.dtype} "
             f"{list(q.shape)} on {q.device}")
    if want_q[1] and q.stride(1) != 1:
        fail(op, "q", "must have a contiguous last dim")
    want_s = list(fmt.scale_shape(m, out_cols, swizzled, experts))
    if list(scales.shape) != want_s or scales.dtype != fmt.scale_dtype \
            or scales.device != input.device:
        fail(op, "scales", f"must be {fmt.scale_dtype} {want_s} on {input.device}"
             f"{' (swizzled)' if swizzled else ''}, got {scales.dtype} "
             f"{list(scales.shape)} on {scales.device}")
    if swizzled and not scales.is_contiguous():
        fail(op, "scales", "must be contiguous when swizzled")
    if not swizzled and want_s[1] and scales.stride(1) != 1:
        fail(op, "scales", "must have a contiguous last dim")


def check_expert_offsets(op: str, expert_offsets: torch.Tensor | None,
                         input: torch.Tensor) -> int:
    """The number of expert groups (1 without offsets). Offsets must be non-decreasing from
    0 to M; their values are device data, not read here (no host sync)."""
    if expert_offsets is None:
        return 1
    o = expert_offsets
    if o.dtype != torch.int32 or o.dim() != 1 or not 2 <= o.numel() <= MAX_EXPERTS + 1 \
            or o.device != input.device or not o.is_contiguous():
        fail(op, "expert_offsets", f"must be a contiguous int32 [experts + 1] on "
             f"{input.device} with 1 to {MAX_EXPERTS} experts, got {o.dtype} "
             f"{list(o.shape)} on {o.device}")
    return o.numel() - 1


def empty_outputs(fmt: QuantFormat, input: torch.Tensor, out_cols: int, swizzled: bool,
                  experts: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    m = input.shape[0]
    q = torch.empty(m, fmt.q_width(out_cols), dtype=fmt.q_dtype, device=input.device)
    scales = torch.empty(fmt.scale_shape(m, out_cols, swizzled, experts),
                         dtype=fmt.scale_dtype, device=input.device)
    return q, scales


def blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] as float32 blocks [M, K / block, block] and their amax [M, K / block]."""
    m, k = x.shape
    b = x.float().reshape(m, k // block, block)
    return b, b.abs().amax(dim=-1)


def divided(t: torch.Tensor, value: float) -> torch.Tensor:
    """t / value with IEEE division on every device (a CUDA tensor divided by a Python
    number is multiplied by its reciprocal instead)."""
    return t / torch.full((), value, dtype=t.dtype, device=t.device)


__all__: list[str] = []
