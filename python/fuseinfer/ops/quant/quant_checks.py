"""The arguments every quantization of rows checks (input [M, K], q like it) and, for a
group quantization, its group size and scales; errors name the calling op."""

from __future__ import annotations

import torch

from ..arg_checks import FLOAT_DTYPES, fail

FP8 = torch.float8_e4m3fn


def check_group_quant(op: str, q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor,
                      group_size: int, q_dtype: torch.dtype = FP8) -> None:
    """The arguments of a group quantization of `input` [M, K] (for a fused op: the
    values it quantizes), errors in `op`'s name."""
    check_rows_quant(op, q, input, q_dtype)
    if group_size < 16 or group_size > 1024 or group_size & (group_size - 1):
        fail(op, "group_size", f"must be a power of two in [16, 1024], got {group_size}")
    m, k = input.shape
    if k % group_size:
        fail(op, "input", f"its quantized channels ({k}) must be a multiple of group_size "
             f"({group_size})")
    want = [m, k // group_size]
    if list(scales.shape) != want or scales.dtype != torch.float32 \
            or scales.device != input.device:
        fail(op, "scales", f"must be float32 {want} on {input.device}, got {scales.dtype} "
             f"{list(scales.shape)} on {scales.device}")


def check_rows_quant(op: str, q: torch.Tensor, input: torch.Tensor,
                     q_dtype: torch.dtype = FP8) -> None:
    """input [M, K] (bf16, fp16 or fp32, contiguous last dim) and q like it in q_dtype:
    what every quantization of rows checks, errors in `op`'s name."""
    if input.dim() != 2:
        fail(op, "input", f"must be [tokens, channels], got {list(input.shape)}")
    if input.dtype not in FLOAT_DTYPES:
        fail(op, "input", f"must be bfloat16, float16 or float32, got {input.dtype}")
    m, k = input.shape
    if k and input.stride(1) != 1:
        fail(op, "input", "must have a contiguous last dim")
    if list(q.shape) != [m, k] or q.dtype != q_dtype or q.device != input.device:
        fail(op, "q", f"must be {q_dtype} {[m, k]} on {input.device}, got {q.dtype} "
             f"{list(q.shape)} on {q.device}")
    if k and q.stride(1) != 1:
        fail(op, "q", "must have a contiguous last dim")
