"""Triton kernel: GPT-OSS's clamped SwiGLU over a [rows, 2 * inner] = [gate | up] input, one
pass, fp32 math: g = min(gate, limit), u = clamp(up, -limit, limit),
out = (u + 1) * g * sigmoid(alpha * g)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def clamped_swiglu_kernel(X, Out, inner, stride_x, stride_o, alpha, limit,
                          BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inner
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    gate = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(X + row * stride_x + inner + cols, mask=mask, other=0.0).to(tl.float32)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    g = tl.minimum(gate, limit)
    u = tl.minimum(tl.maximum(up, -limit), limit)
    y = (u + 1.0) * g / (1.0 + tl.exp(-alpha * g))
    tl.store(Out + row * stride_o + cols, y.to(Out.dtype.element_ty), mask=mask)
