"""Triton kernel: FP8 GEMM with 1 x 128 activation and 128 x 128 weight scales, the path for
GPUs without the CUTLASS kernels (before sm_90) and for shapes they do not take. Correct,
not tuned: one program per BLOCK_M x BLOCK_N output tile, K walked in 128-deep scale groups,
each group's partial product scaled into an fp32 accumulator."""

from __future__ import annotations

import triton
import triton.language as tl

DOT_FP8 = 0   # fp8 tensor-core dot (sm_89+)
DOT_BF16 = 1  # e4m3 -> bf16 is exact; bf16 dot with fp32 accumulation (sm_80)
DOT_FP32 = 2  # the interpreter


@triton.jit
def fp8_blockwise_mm_kernel(A, AS, B, BS, OUT, M, N, K, stride_am, stride_as_m, stride_as_k,
                            stride_bn, stride_bs_n, stride_bs_k, stride_om,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            DOT: tl.constexpr):
    """BLOCK_N divides 128, so one program's columns share one weight-scale block."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, 128)
    m_ok = rm < M
    n_ok = rn < N
    a_ptrs = A + rm[:, None].to(tl.int64) * stride_am + rk[None, :]
    b_ptrs = B + rn[:, None].to(tl.int64) * stride_bn + rk[None, :]
    as_ptrs = AS + rm.to(tl.int64) * stride_as_m
    bs_ptr = BS + ((pid_n * BLOCK_N) // 128) * stride_bs_n
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, K // 128):
        a = tl.load(a_ptrs, mask=m_ok[:, None], other=0.0)
        b = tl.load(b_ptrs, mask=n_ok[:, None], other=0.0)
        if DOT == 0:
            part = tl.dot(a, tl.trans(b))
        elif DOT == 1:
            part = tl.dot(a.to(tl.bfloat16), tl.trans(b.to(tl.bfloat16)))
        else:
            part = tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)),
                          input_precision="ieee")
        sa = tl.load(as_ptrs + kb * stride_as_k, mask=m_ok, other=0.0)
        sb = tl.load(bs_ptr + kb * stride_bs_k)
        acc += part * (sa[:, None] * sb)
        a_ptrs += 128
        b_ptrs += 128
    out_ptrs = OUT + rm[:, None].to(tl.int64) * stride_om + rn[None, :]
    tl.store(out_ptrs, acc.to(OUT.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])
