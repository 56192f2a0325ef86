"""Triton kernels of fused_moe: the grouped GEMM over expert-aligned rows, and the combine.

Grouped GEMM: the rows come from moe_align_block_size (sorted_token_ids, one expert per
BLOCK_M tile). A program owns a BLOCK_M x BLOCK_N tile: it gathers its A rows (row r of the
routing reads A row r // A_DIV: the token's hidden row for the first GEMM, A_DIV = k; the
slot's own row for the second, A_DIV = 1), multiplies by the tile's expert's weights
B[e] [N, K] (rows contiguous), and scatters the result to C row r; sentinel rows (padding)
are masked. Tiles past num_tokens_post_padded exit at once: the grid is sized from the
shapes, so it is the same in every CUDA-graph replay. With QUANT, A and B are float8_e4m3fn
with per-row 128-group scales on A and 128 x 128 block scales on B; a k step (BLOCK_K
divides 128) lies in one scale group, its partial product scaled into the fp32 accumulator.
With QUANT == QUANT_MXFP4 (W4A16), B is uint8 [E, N, K/2] (two E2M1 codes per byte, the
even element in the low nibble) with E8M0 scales uint8 [E, N, K/32]: each k step loads the
packed [BLOCK_N, BLOCK_K/2] bytes and their scales, decodes them in registers (mxfp4.py) to
A's dtype and runs a plain dot (BLOCK_K a multiple of 32; K tails masked to zero). With
SPLIT_DOT the packed bytes load as [BLOCK_K/2, BLOCK_N] with each byte's scale broadcast
beside it, the low and high nibbles decode into two B halves in that layout, and A's even
and odd columns (split from the A tile) multiply them in two dots: no interleave of the B
tile. FAST_DECODE (bf16 A on sm_80+) decodes through mxfp4_pairs_bf16's PTX instead of the
float32 bit arithmetic, which the interpreter and fp16/fp32 A keep.
With HAS_BIAS the row's expert's bias BIAS[e, n] (fp32 after load) is added to the fp32
accumulator; with MUL_WEIGHT each row is then scaled by its routing weight before the store.

Combine: out[t] = sum over the slots j of t with an id in [0, E) of Y[t * k + j], in fp32.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .mxfp4 import e2m1_to_float, e8m0_to_float, mxfp4_pairs_bf16, mxfp4_tile

DOT_NATIVE = 0  # bf16/fp16 tensor cores; fp8 tensor cores (sm_89+)
DOT_BF16 = 1    # fp8 operands widened to bf16 (exact) for GPUs without fp8 dots
DOT_FP32 = 2    # fp32 operands, IEEE products: fp32 inputs and the interpreter
QUANT_NONE = 0
QUANT_FP8 = 1    # fp8_block: fp8 A and B, 128-group scales
QUANT_MXFP4 = 2  # mxfp4 weights, bf16/fp16/fp32 A


@triton.jit
def fused_moe_gemm_kernel(A, B, C, AS, BS, W, BIAS, SORTED, EXPERT_IDS, NUM_POST,
                          N, K, num_rows, a_div, top_k, num_m_blocks,
                          stride_am, stride_be, stride_bn, stride_cm,
                          stride_as_m, stride_as_k, stride_bs_e, stride_bs_n, stride_bs_k,
                          stride_w_t, stride_w_j, stride_bias_e,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                          QUANT: tl.constexpr, MUL_WEIGHT: tl.constexpr,
                          HAS_BIAS: tl.constexpr, DOT: tl.constexpr, USE_PDL: tl.constexpr,
                          SPLIT_DOT: tl.constexpr = False, FAST_DECODE: tl.constexpr = False):
    # grouped order: GROUP_M row tiles walk the N tiles together, so weight tiles of one
    # expert are reused from L2
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(N, BLOCK_N)
    in_group = GROUP_M * n_blocks
    first_m = (pid // in_group) * GROUP_M
    group_rows = tl.minimum(num_m_blocks - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % group_rows
    pid_n = (pid % in_group) // group_rows

    if USE_PDL:
        tl.extra.cuda.gdc_wait()  # every input below may come from the launches before
    if pid_m * BLOCK_M >= tl.load(NUM_POST):
        return
    expert = tl.load(EXPERT_IDS + pid_m).to(tl.int64)
    rows = tl.load(SORTED + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    row_ok = rows < num_rows
    a_rows = (rows // a_div).to(tl.int64)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = A + a_rows[:, None] * stride_am + rk[None, :]
    if QUANT == 2 and SPLIT_DOT:
        # [BLOCK_K/2, BLOCK_N] packed bytes and [BLOCK_K/32, BLOCK_N] scales
        rkb = tl.arange(0, BLOCK_K // 2)
        rks = tl.arange(0, BLOCK_K // 32)
        b_ptrs = B + expert * stride_be + rn[None, :].to(tl.int64) * stride_bn + rkb[:, None]
        bs_ptrs = (BS + expert * stride_bs_e + rn[None, :].to(tl.int64) * stride_bs_n
                   + rks[:, None] * stride_bs_k)
    elif QUANT == 2:
        # [BLOCK_N, BLOCK_K/2] packed bytes and [BLOCK_N, BLOCK_K/32] scales, K contiguous
        rkb = tl.arange(0, BLOCK_K // 2)
        rks = tl.arange(0, BLOCK_K // 32)
        b_ptrs = B + expert * stride_be + rn[:, None].to(tl.int64) * stride_bn + rkb[None, :]
        bs_ptrs = (BS + expert * stride_bs_e + rn[:, None].to(tl.int64) * stride_bs_n
                   + rks[None, :] * stride_bs_k)
    else:
        b_ptrs = B + expert * stride_be + rn[None, :].to(tl.int64) * stride_bn + rk[:, None]
    if QUANT == 1:
        as_ptrs = AS + a_rows * stride_as_m
        bs_ptrs = BS + expert * stride_bs_e + (rn // 128) * stride_bs_n
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = k0 + rk < K
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        if QUANT == 2 and SPLIT_DOT:
            kb_ok = k0 // 2 + rkb < K // 2
            ks_ok = k0 // 32 + rks < K // 32
            packed = tl.load(b_ptrs, mask=kb_ok[:, None] & n_ok[None, :], other=0)
            sc = tl.load(bs_ptrs, mask=ks_ok[:, None] & n_ok[None, :], other=127)
            # each byte's scale: 16 bytes (32 codes) share one
            sc = tl.reshape(tl.broadcast_to(sc[:, None, :], (BLOCK_K // 32, 16, BLOCK_N)),
                            (BLOCK_K // 2, BLOCK_N))
            if FAST_DECODE:
                b_lo, b_hi = mxfp4_pairs_bf16(packed, sc)
            else:
                packed = packed.to(tl.int32)
                sc = e8m0_to_float(sc.to(tl.int32))
                b_lo = (e2m1_to_float(packed & 15) * sc).to(A.dtype.element_ty)
                b_hi = (e2m1_to_float(packed >> 4) * sc).to(A.dtype.element_ty)
            # A's even columns (the low nibbles' elements) and odd ones
            a_even, a_odd = tl.split(tl.reshape(a, (BLOCK_M, BLOCK_K // 2, 2)))
            if DOT == 2:
                part = tl.dot(a_even.to(tl.float32), b_lo.to(tl.float32),
                              input_precision="ieee")
                part += tl.dot(a_odd.to(tl.float32), b_hi.to(tl.float32),
                               input_precision="ieee")
            else:
                part = tl.dot(a_even, b_lo)
                part += tl.dot(a_odd, b_hi)
            acc += part
        elif QUANT == 2:
            kb_ok = k0 // 2 + rkb < K // 2
            packed = tl.load(b_ptrs, mask=n_ok[:, None] & kb_ok[None, :], other=0)
            ks_ok = k0 // 32 + rks < K // 32
            sc = tl.load(bs_ptrs, mask=n_ok[:, None] & ks_ok[None, :], other=127)
            if FAST_DECODE:
                sc = tl.reshape(tl.broadcast_to(sc[:, :, None], (BLOCK_N, BLOCK_K // 32, 16)),
                                (BLOCK_N, BLOCK_K // 2))
                lo, hi = mxfp4_pairs_bf16(packed, sc)
                b = tl.trans(tl.reshape(tl.join(lo, hi), (BLOCK_N, BLOCK_K)))
            else:
                b = tl.trans(mxfp4_tile(packed, sc, BLOCK_N, BLOCK_K, A.dtype.element_ty))
        else:
            b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if not (QUANT == 2 and SPLIT_DOT):
            if DOT == 0:
                part = tl.dot(a, b)
            elif DOT == 1:
                part = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
            else:
                part = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
            if QUANT == 1:
                group = k0 // 128
                sa = tl.load(as_ptrs + group * stride_as_k, mask=row_ok, other=0.0)
                sb = tl.load(bs_ptrs + group * stride_bs_k, mask=n_ok, other=0.0)
                acc += part * (sa[:, None] * sb[None, :])
            else:
                acc += part
        a_ptrs += BLOCK_K
        if QUANT == 2:
            b_ptrs += BLOCK_K // 2
            bs_ptrs += (BLOCK_K // 32) * stride_bs_k
        else:
            b_ptrs += BLOCK_K
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    if HAS_BIAS:
        bias = tl.load(BIAS + expert * stride_bias_e + rn, mask=n_ok, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    if MUL_WEIGHT:
        w = tl.load(W + (rows // top_k) * stride_w_t + (rows % top_k) * stride_w_j,
                    mask=row_ok, other=0.0)
        acc = acc * w[:, None]
    c_ptrs = C + rows[:, None].to(tl.int64) * stride_cm + rn[None, :]
    tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def moe_combine_kernel(Y, IDS, ROW_OF, W, OUT, H, top_k, num_experts, stride_ym, stride_om,
                       BLOCK_H: tl.constexpr, MAP_ROWS: tl.constexpr, WEIGHTED: tl.constexpr,
                       USE_PDL: tl.constexpr):
    """OUT [T, H] = sum over token t's k slots of Y rows; IDS [T, k] contiguous. Slot
    s = t * k + j reads Y row s, or ROW_OF[s] with MAP_ROWS (Y sorted by expert), and is
    scaled by W[s] (float32 [T, k] contiguous) with WEIGHTED (else Y rows are weighted)."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = cols < H
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    acc = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for j in range(0, top_k):
        slot = t * top_k + j
        e = tl.load(IDS + slot + cols * 0)  # broadcast: a per-lane mask
        # a dropped slot's row was never written: skip it rather than read garbage
        valid = (e >= 0) & (e < num_experts)
        row = slot
        if MAP_ROWS:
            row = tl.load(ROW_OF + slot + cols * 0, mask=valid, other=0).to(tl.int64)
        y = tl.load(Y + row * stride_ym + cols, mask=mask & valid, other=0.0).to(tl.float32)
        if WEIGHTED:
            y = y * tl.load(W + slot + cols * 0)
        acc += y
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    tl.store(OUT + t * stride_om + cols, acc.to(OUT.dtype.element_ty), mask=mask)
