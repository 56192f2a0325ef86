"""Triton kernel: per-token-group FP8 quantization, one program per (row, block of groups),
one pass: each group's amax, its scale, the quantized values and the scale written."""

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
    amax = tl.max(tl.abs(x), axis=1)
    scale = tl.maximum(amax, eps) / fp8_max
    if UE8M0:  # a power of two, rounded up: exact to apply and to store as an exponent
        scale = tl.exp2(tl.ceil(tl.log2(scale)))
    q = tl.clamp(x / scale[:, None], -fp8_max, fp8_max)
    if EXACT_ROUNDING:
        # Triton's interpreter casts to fp8 rounding ties away and losing the carry into
        # the exponent; round to the e4m3 grid here (to nearest even) so its cast is exact.
        # On the GPU the hardware cast (cvt.rn.satfinite) does this.
        a = tl.abs(q)
        step = tl.exp2(tl.maximum(tl.floor(tl.log2(a)), -6.0) - 3.0)
        r = (a / step + 12582912.0) - 12582912.0  # 1.5 * 2^23: round half to even
        q = tl.where(q < 0, -r * step, r * step)
    tl.store(Q + row * stride_q + cols, q.to(Q.dtype.element_ty), mask=mask)
    tl.store(S + row * stride_s_row + g * stride_s_group, scale, mask=gmask)
