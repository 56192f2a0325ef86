"""Triton kernels: dynamic FP8 (e4m3) quantization with one scale per token or one per
tensor. Per token: one program per row, an amax pass then a quantize pass over the row
(the second read mostly hits L2). Per tensor: an amax kernel folds every block's amax
into a float32 word with atomic max, then the quantize kernel reads the scale from device
memory: no host sync, so the pair is CUDA-graph safe."""

from __future__ import annotations

import triton
import triton.language as tl

from .per_token_group_quant import quantize_groups


@triton.jit
def _quantize_row_block(x, scale, fp8_max, EXACT_ROUNDING: tl.constexpr,
                        BLOCK: tl.constexpr):
    """x [BLOCK] / scale as e4m3-ready values (the group kernels' rounding, one group)."""
    one = tl.zeros((1,), tl.float32) + scale
    q = quantize_groups(tl.reshape(x, (1, BLOCK)), one, fp8_max, EXACT_ROUNDING)
    return tl.reshape(q, (BLOCK,))


@triton.jit
def per_token_quant_fp8_kernel(X, Q, S, k, stride_x, stride_q, stride_s, eps, fp8_max,
                               BLOCK: tl.constexpr, USE_PDL: tl.constexpr,
                               EXACT_ROUNDING: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_x
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    amax = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, k, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_row + cols, mask=cols < k, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    # IEEE division, as in the group kernels: the scale matches torch's bits
    scale = tl.div_rn(tl.maximum(tl.max(amax, axis=0), eps), fp8_max)
    for start in range(0, k, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_row + cols, mask=cols < k, other=0.0).to(tl.float32)
        q = _quantize_row_block(x, scale, fp8_max, EXACT_ROUNDING, BLOCK)
        tl.store(Q + row * stride_q + cols, q.to(Q.dtype.element_ty), mask=cols < k)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    tl.store(S + row * stride_s, scale)


@triton.jit
def tensor_amax_kernel(X, A, rows, k, stride_x, ROWS: tl.constexpr, BLOCK: tl.constexpr,
                       USE_PDL: tl.constexpr):
    """A[0] = max(A[0], amax of this program's [ROWS, BLOCK] tile); A starts at 0."""
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = (r < rows)[:, None] & (cols < k)[None, :]
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    x = tl.load(X + r[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    tl.atomic_max(A, tl.max(tl.max(tl.abs(x.to(tl.float32)), axis=1), axis=0))


@triton.jit
def per_tensor_quant_fp8_kernel(X, Q, S, A, rows, k, stride_x, stride_q, eps, fp8_max,
                                ROWS: tl.constexpr, BLOCK: tl.constexpr,
                                STATIC: tl.constexpr, USE_PDL: tl.constexpr,
                                EXACT_ROUNDING: tl.constexpr):
    """Quantize a [ROWS, BLOCK] tile with the tensor's scale: S[0] when STATIC, else
    max(A[0], eps) / fp8_max (written to S[0] by the first program)."""
    pr, pc = tl.program_id(0), tl.program_id(1)
    r = pr.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = pc * BLOCK + tl.arange(0, BLOCK)
    mask = (r < rows)[:, None] & (cols < k)[None, :]
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    if STATIC:
        scale = tl.load(S)
    else:
        scale = tl.div_rn(tl.maximum(tl.load(A), eps), fp8_max)
    x = tl.load(X + r[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    scales = tl.zeros((ROWS,), tl.float32) + scale
    q = quantize_groups(x.to(tl.float32), scales, fp8_max, EXACT_ROUNDING)
    tl.store(Q + r[:, None] * stride_q + cols[None, :], q.to(Q.dtype.element_ty), mask=mask)
    if not STATIC:
        if (pr == 0) & (pc == 0):
            tl.store(S, scale)
