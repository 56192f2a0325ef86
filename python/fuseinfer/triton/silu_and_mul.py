"""Triton kernel: SiLU(gate) * up over a [rows, 2 * inner] input, one pass, fp32 math."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def silu_and_mul_kernel(X, Out, inner, stride_x, stride_o, BLOCK: tl.constexpr,
                        USE_PDL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inner
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    gate = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(X + row * stride_x + inner + cols, mask=mask, other=0.0).to(tl.float32)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    y = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(Out + row * stride_o + cols, y.to(Out.dtype.element_ty), mask=mask)
