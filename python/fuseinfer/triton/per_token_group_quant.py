"""Triton kernels: per-token-group FP8 (or int8) quantization, alone and fused behind
SiLU·mul or residual add + RMSNorm. One
program per (row, block of groups), one pass: each group's amax, its scale, the quantized
values and the scale written."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def per_token_group_quant_kernel(X, Q, S, groups, stride_x, stride_q, stride_s_row,
                                 stride_s_group, eps, qmax, GROUP: tl.constexpr,
                                 GROUPS_PER_PROGRAM: tl.constexpr, UE8M0: tl.constexpr,
                                 USE_PDL: tl.constexpr, EXACT_ROUNDING: tl.constexpr,
                                 INT8: tl.constexpr = False):
    """FP8 (e4m3) or, with INT8, int8 values (scale = amax / 127, rounded half to even in
    fp32 arithmetic, so the GPU and the interpreter agree bit for bit)."""
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
    scale = group_scales(x, eps, qmax, UE8M0)
    if INT8:
        v = tl.clamp(tl.div_rn(x, tl.broadcast_to(scale[:, None], x.shape)), -qmax - 1.0,
                     qmax)
        q = (v + 12582912.0) - 12582912.0  # 1.5 * 2^23: round half to even
    else:
        q = quantize_groups(x, scale, qmax, EXACT_ROUNDING)
    tl.store(Q + row * stride_q + cols, q.to(Q.dtype.element_ty), mask=mask)
    tl.store(S + row * stride_s_row + g * stride_s_group, scale, mask=gmask)


@triton.jit
def group_scales(x, eps, qmax, UE8M0: tl.constexpr):
    """Per group (row of x [groups, GROUP]): max(amax, eps) / qmax, or the next power of
    two (exact to apply, and what UE8M0 formats store)."""
    # IEEE division (Triton's `/` is approximate on the GPU): the scales match torch's bits
    scale = tl.div_rn(tl.maximum(tl.max(tl.abs(x), axis=1), eps), qmax)
    if UE8M0:  # from the bits, not log2: exact for every scale
        bits = scale.to(tl.int32, bitcast=True)
        exponent = ((bits >> 23) & 0xFF) + ((bits & 0x7FFFFF) != 0).to(tl.int32)
        scale = (exponent << 23).to(tl.float32, bitcast=True)
    return scale


@triton.jit
def quantize_groups(x, scale, fp8_max, EXACT_ROUNDING: tl.constexpr):
    """x / scale clamped to the e4m3 range, ready for the fp8 cast."""
    q = tl.clamp(tl.div_rn(x, tl.broadcast_to(scale[:, None], x.shape)), -fp8_max, fp8_max)
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


@triton.jit
def fused_add_rmsnorm_quant_fp8_kernel(X, R, W, Q, S, hidden, stride_x, stride_r, stride_q,
                                       stride_s_row, stride_s_group, eps, qeps, fp8_max,
                                       BLOCK: tl.constexpr, GROUP: tl.constexpr,
                                       UE8M0: tl.constexpr, USE_PDL: tl.constexpr,
                                       EXACT_ROUNDING: tl.constexpr):
    """residual += input (rounded to its dtype, written back), then RMSNorm of the row
    straight to FP8 with per-group scales: one program per row, the row read once."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(R + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    summed = (x + r).to(R.dtype.element_ty)
    tl.store(R + row * stride_r + cols, summed, mask=mask)
    s = summed.to(tl.float32)
    inv_rms = 1.0 / tl.sqrt(tl.sum(s * s, axis=0) / hidden + eps)
    y = tl.reshape(s * inv_rms * w, (BLOCK // GROUP, GROUP))
    g = tl.arange(0, BLOCK // GROUP)
    scale = group_scales(y, qeps, fp8_max, UE8M0)
    q = quantize_groups(y, scale, fp8_max, EXACT_ROUNDING)
    qcols = g[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    tl.store(Q + row * stride_q + qcols, q.to(Q.dtype.element_ty), mask=qcols < hidden)
    tl.store(S + row * stride_s_row + g * stride_s_group, scale, mask=g * GROUP < hidden)

