"""Triton kernels: per-token-group FP8 quantization, alone and fused behind SiLU·mul. One
program per (row, block of groups), one pass: each group's amax, its scale, the quantized
values and the scale written."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def per_token_group_quant_fp8_kernel(X, Q, S, groups, stride_x, stride_q, stride_s_row,
                                     stride_s_group, eps, fp8_max,
                                     GROUP: tl.constexpr, GROUPS_PER_PROGRAM: tl.constexpr,
                                     UE8M0: tl.constexpr, USE_PDL: tl.constexpr,
                                     EXACT_ROUNDING: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1) * GROUPS_PER_PROGRAM + tl.arange(0, GROUPS_PER_PROGRAM)
    gmask = g < groups
    cols = g[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    mask = gmask[:, None]
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    scale = group_scales(x, eps, fp8_max, UE8M0)
    q = quantize_groups(x, scale, fp8_max, EXACT_ROUNDING)
    tl.store(Q + row * stride_q + cols, q.to(Q.dtype.element_ty), mask=mask)
    tl.store(S + row * stride_s_row + g * stride_s_group, scale, mask=gmask)


@triton.jit
def group_scales(x, eps, fp8_max, UE8M0: tl.constexpr):
    """Per group (row of x [groups, GROUP]): max(amax, eps) / fp8_max, or the next power of
    two (exact to apply, and what UE8M0 formats store)."""
    scale = tl.maximum(tl.max(tl.abs(x), axis=1), eps) / fp8_max
    if UE8M0:
        scale = tl.exp2(tl.ceil(tl.log2(scale)))
    return scale


@triton.jit
def quantize_groups(x, scale, fp8_max, EXACT_ROUNDING: tl.constexpr):
    """x / scale clamped to the e4m3 range, ready for the fp8 cast."""
    q = tl.clamp(x / scale[:, None], -fp8_max, fp8_max)
    if EXACT_ROUNDING:
        # Triton's interpreter casts to fp8 rounding ties away and losing the carry into
        # the exponent; round to the e4m3 grid here (to nearest even) so its cast is exact.
        # On the GPU the hardware cast (cvt.rn.satfinite) does this.
        a = tl.abs(q)
        step = tl.exp2(tl.maximum(tl.floor(tl.log2(a)), -6.0) - 3.0)
        r = (a / step + 12582912.0) - 12582912.0  # 1.5 * 2^23: round half to even
        q = tl.where(q < 0, -r * step, r * step)
    return q


@triton.jit
def silu_and_mul_quant_fp8_kernel(X, Q, S, inner, groups, stride_x, stride_q, stride_s_row,
                                  stride_s_group, eps, fp8_max, GROUP: tl.constexpr,
                                  GROUPS_PER_PROGRAM: tl.constexpr, UE8M0: tl.constexpr,
                                  USE_PDL: tl.constexpr, EXACT_ROUNDING: tl.constexpr):
    """silu(gate) * up of X = [gate | up] straight to FP8 with per-group scales: the
    activation is never written in 16 bits and read again."""
    row = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1) * GROUPS_PER_PROGRAM + tl.arange(0, GROUPS_PER_PROGRAM)
    gmask = g < groups
    cols = g[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    mask = gmask[:, None]
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    gate = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(X + row * stride_x + inner + cols, mask=mask, other=0.0).to(tl.float32)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    y = gate / (1.0 + tl.exp(-gate)) * up
    scale = group_scales(y, eps, fp8_max, UE8M0)
    q = quantize_groups(y, scale, fp8_max, EXACT_ROUNDING)
    tl.store(Q + row * stride_q + cols, q.to(Q.dtype.element_ty), mask=mask)
    tl.store(S + row * stride_s_row + g * stride_s_group, scale, mask=gmask)
