"""Argument checks of the norm ops, shared by the CPU, fake and first-call CUDA paths
(the C++ launcher repeats them for direct CUDA calls). Each error names the argument."""

from __future__ import annotations

import torch

from ..arg_checks import FLOAT_DTYPES, has_storage
from ..arg_checks import fail as _fail


def check_rows(t: torch.Tensor, op: str, arg: str) -> None:
    """Last dim contiguous and leading dims that flatten to evenly spaced rows."""
    if t.dim() < 1:
        _fail(op, arg, "must have at least one dimension")
    hidden = t.size(-1)
    if t.stride(-1) != 1 and hidden != 1:
        _fail(op, arg, f"must be contiguous in its last dimension, got strides {t.stride()}")
    stride = expected = None
    rows = 1
    for d in range(t.dim() - 2, -1, -1):
        rows *= t.size(d)
        if t.size(d) == 1:
            continue
        if stride is None:
            stride = t.stride(d)
        elif t.stride(d) != expected:
            _fail(op, arg, f"must have leading dimensions that flatten to rows, got strides "
                  f"{t.stride()}")
        expected = t.stride(d) * t.size(d)
    if rows > 1 and stride is not None and stride < hidden:
        _fail(op, arg, f"rows must not overlap (row stride {stride} < hidden {hidden})")


def _row_stride(t: torch.Tensor) -> int:
    for d in range(t.dim() - 2, -1, -1):
        if t.size(d) != 1:
            return t.stride(d)
    return t.size(-1)


def _byte_range(t: torch.Tensor) -> tuple[int, int]:
    rows = t.numel() // max(t.size(-1), 1)
    first = t.data_ptr()
    return first, first + ((rows - 1) * _row_stride(t) + t.size(-1)) * t.element_size()


def check_no_overlap(a: torch.Tensor, b: torch.Tensor, op: str, a_name: str, b_name: str,
                     exact_alias_ok: bool = False) -> None:
    """One kernel block's rows must not be touched through a second tensor; only the
    exact alias `out is input` is allowed."""
    if a.numel() == 0 or b.numel() == 0 or not (has_storage(a) and has_storage(b)):
        return
    a0, a1 = _byte_range(a)
    b0, b1 = _byte_range(b)
    exact = a0 == b0 and a.shape == b.shape and _row_stride(a) == _row_stride(b)
    if not (a1 <= b0 or b1 <= a0 or (exact_alias_ok and exact)):
        hint = " (passing the same tensor for both is allowed)" if exact_alias_ok else ""
        _fail(op, a_name, f"must not overlap {b_name}{hint}")


def check_like_input(t: torch.Tensor, input: torch.Tensor, op: str, arg: str) -> None:
    if t.device != input.device:
        _fail(op, arg, f"must be on {input.device} like input, got {t.device}")
    if t.dtype != input.dtype:
        _fail(op, arg, f"must have dtype {input.dtype} like input, got {t.dtype}")


def check_norm_args(
    op: str,
    input: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    out: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> None:
    if input.dtype not in FLOAT_DTYPES:
        _fail(op, "input", f"must be bfloat16, float16 or float32, got {input.dtype}")
    check_rows(input, op, "input")
    check_like_input(weight, input, op, "weight")
    hidden = input.size(-1)
    if weight.dim() != 1 or weight.size(0) != hidden:
        _fail(op, "weight", f"must have shape [{hidden}] (the hidden size), got "
              f"{list(weight.shape)}")
    if not weight.is_contiguous():
        _fail(op, "weight", "must be contiguous")
    for arg, t in (("out", out), ("residual", residual)):
        if t is None:
            continue
        check_like_input(t, input, op, arg)
        if t.shape != input.shape:
            _fail(op, arg, f"must have shape {list(input.shape)} like input, got "
                  f"{list(t.shape)}")
        check_rows(t, op, arg)
    if not eps >= 0:
        _fail(op, "eps", f"must be >= 0, got {eps}")
    if residual is not None:
        check_no_overlap(residual, input, op, "residual", "input")
        check_no_overlap(weight, input, op, "weight", "input")
        check_no_overlap(weight, residual, op, "weight", "residual")
    if out is not None:
        check_no_overlap(out, input, op, "out", "input", exact_alias_ok=True)
        check_no_overlap(weight, out, op, "weight", "out")
