"""Triton kernel: FP8 blockwise-scaled matmul for a handful of tokens (decode), streaming
the weights with every SM instead of tiling the output.

Each program owns BLOCK_N rows of the e4m3 weight b [N, K] (BLOCK_N divides 128, so they
share one row of 128 x 128 block scales), loads them whole (K padded to a power of two)
and scales them before it waits on the previous kernel (PDL): the weight stream does not
depend on it. Then each of the up to M_MAX token rows is dequantized with its 1 x 128
scales and reduced in fp32 against the tile held in registers.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def fp8_gemv_kernel(A, AS, B, BS, Out, M, N, K, stride_am, stride_as_m, stride_as_k,
                    stride_bn, stride_bs_n, stride_bs_k, stride_om,
                    BLOCK_N: tl.constexpr, K_PAD: tl.constexpr, M_MAX: tl.constexpr,
                    USE_PDL: tl.constexpr):
    GROUPS: tl.constexpr = K_PAD // 128
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, K_PAD)
    groups = tl.arange(0, GROUPS)
    kmask = ks < K
    gmask = groups < K // 128
    w = tl.load(B + rows[:, None].to(tl.int64) * stride_bn + ks[None, :],
                mask=(rows < N)[:, None] & kmask[None, :], other=0.0).to(tl.float32)
    w_scale = tl.load(BS + ((pid * BLOCK_N) // 128) * stride_bs_n + groups * stride_bs_k,
                      mask=gmask, other=0.0)
    w = tl.reshape(w, (BLOCK_N, GROUPS, 128)) * w_scale[None, :, None]
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    for m in tl.static_range(M_MAX):
        if m < M:
            a = tl.load(A + m * stride_am + ks, mask=kmask, other=0.0).to(tl.float32)
            a_scale = tl.load(AS + m * stride_as_m + groups * stride_as_k, mask=gmask,
                              other=0.0)
            x = tl.reshape(a, (GROUPS, 128)) * a_scale[:, None]
            y = tl.sum(tl.sum(w * x[None, :, :], axis=2), axis=1)
            tl.store(Out + m * stride_om + rows, y.to(Out.dtype.element_ty), mask=rows < N)
