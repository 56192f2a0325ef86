"""Triton kernel: Qwen3's attention prologue after the qkv projection in one launch. For
each token and block of heads of the fused qkv row: RMSNorm of every q and k head, NeoX
RoPE over the whole head, both written back in place, and the rotated k and the raw v
stored into the token's KV-cache slot. Each head is loaded once, math in fp32.

The rounding points are those of qk_rmsnorm followed by rope_with_cos_sin_cache's fused
KV write: the normalized head is rounded to the activation dtype, rotated from those
values and rounded once more; an FP8 cache gets the rounded value times the fp32 reciprocal
of its scale, cast with saturation."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _round(x, TY: tl.constexpr, EXACT_ROUNDING: tl.constexpr):
    """fp32 x rounded to TY (to nearest even)."""
    if EXACT_ROUNDING and TY == tl.bfloat16:
        # Triton's interpreter truncates fp32 to bf16: round the bits here (to nearest
        # even) so its cast only drops zeros. The GPU's cast (cvt.rn) rounds by itself.
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(TY)


@triton.jit
def _cache_values(x, inv_scale, CACHE_TY: tl.constexpr, FP8_CACHE: tl.constexpr,
                  EXACT_ROUNDING: tl.constexpr):
    """x (fp32 holding activation-dtype values) as the cache stores it."""
    if FP8_CACHE:
        q = x * inv_scale
        if EXACT_ROUNDING:
            # Triton's interpreter casts to fp8 without saturating, rounding ties away and
            # losing the carry into the exponent: saturate and round to the e4m3 grid (to
            # nearest even) here so its cast is exact. On the GPU the cast
            # (cvt.rn.satfinite) does both, and keeps NaN, which a clamp here would not.
            q = tl.clamp(q, -448.0, 448.0)
            a = tl.abs(q)
            # e4m3 has 3 mantissa bits; below 2^-6 its steps are 2^-9 (subnormals)
            step = tl.exp2(tl.floor(tl.log2(tl.maximum(a, 0.015625))) - 3.0)
            r = (a / step + 12582912.0) - 12582912.0  # 1.5 * 2^23: round half to even
            q = tl.where(q < 0, -r * step, r * step)
        return q.to(CACHE_TY)
    return x.to(CACHE_TY)


@triton.jit
def qk_rmsnorm_rope_kernel(QKV, Wq, Wk, Positions, CosSin, KCache, VCache, Loc, KScale,
                           VScale, stride_row, kc_stride, vc_stride, num_q_heads,
                           num_kv_heads, k_scale_stride, v_scale_stride, eps,
                           HEAD_DIM: tl.constexpr, HEADS: tl.constexpr,
                           FP8_CACHE: tl.constexpr, HAS_K_SCALE: tl.constexpr,
                           HAS_V_SCALE: tl.constexpr, USE_PDL: tl.constexpr,
                           EXACT_ROUNDING: tl.constexpr):
    HALF: tl.constexpr = HEAD_DIM // 2
    token = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * HEADS + tl.arange(0, HEADS)  # [q heads | k heads | v heads]
    dims = tl.arange(0, HEAD_DIM)
    qk_heads = num_q_heads + num_kv_heads
    is_q = heads < num_q_heads
    is_k = (heads >= num_q_heads) & (heads < qk_heads)
    is_v = (heads >= qk_heads) & (heads < qk_heads + num_kv_heads)
    qkv_tile = QKV + token * stride_row + heads[:, None] * HEAD_DIM + dims[None, :]
    # the norm weights are parameters, not a predecessor's output: read before the wait
    wq = tl.load(Wq + dims).to(tl.float32)
    wk = tl.load(Wk + dims).to(tl.float32)
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    x = tl.load(qkv_tile, mask=(is_q | is_k | is_v)[:, None], other=0.0).to(tl.float32)
    position = tl.load(Positions + token).to(tl.int64)
    slot = tl.load(Loc + token).to(tl.int64)
    # per row of the tile, its KV head's scale (stride 0: one scale for all heads)
    k_inv = tl.full([HEADS], 1.0, tl.float32)
    v_inv = tl.full([HEADS], 1.0, tl.float32)
    if HAS_K_SCALE:  # IEEE reciprocal, as the CUDA cache writers compute it
        kv_head = tl.maximum(heads - num_q_heads, 0)
        k_inv = tl.div_rn(1.0, tl.load(KScale + kv_head * k_scale_stride, mask=is_k,
                                       other=1.0))
    if HAS_V_SCALE:
        kv_head = tl.maximum(heads - qk_heads, 0)
        v_inv = tl.div_rn(1.0, tl.load(VScale + kv_head * v_scale_stride, mask=is_v,
                                       other=1.0))
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()

    # qk_rmsnorm's arithmetic, op for op on the same tile shape, so the compiler reduces in
    # the same order and the rounded heads match that kernel's bit for bit
    scale = tl.rsqrt(tl.sum(x * x, axis=1) / HEAD_DIM + eps)
    x_scaled = x * scale[:, None]
    normed = tl.where(is_q[:, None], x_scaled * wq[None, :], x_scaled * wk[None, :])
    normed = _round(normed, QKV.dtype.element_ty, EXACT_ROUNDING).to(tl.float32)

    # NeoX pairs (x1[i], x2[i]) = (x[i], x[i + HALF]) -> (x1 * cos - x2 * sin,
    # x2 * cos + x1 * sin), each as one fma with the other product rounded first: the
    # operation order the CUDA RoPE kernel compiles to. Splitting the tile into its halves
    # moves values between the lanes of a warp, no shared memory.
    x1, x2 = tl.split(tl.permute(tl.reshape(normed, (HEADS, 2, HALF)), (0, 2, 1)))
    half_dims = tl.arange(0, HALF)
    cos_sin_row = CosSin + position * HEAD_DIM
    cos = tl.load(cos_sin_row + half_dims)[None, :]
    sin = tl.load(cos_sin_row + HALF + half_dims)[None, :]
    r1 = _round(tl.fma(x1, cos, -(x2 * sin)), QKV.dtype.element_ty, EXACT_ROUNDING)
    r2 = _round(tl.fma(x2, cos, x1 * sin), QKV.dtype.element_ty, EXACT_ROUNDING)
    first_half = QKV + token * stride_row + heads[:, None] * HEAD_DIM + half_dims[None, :]
    is_qk = (is_q | is_k)[:, None]
    tl.store(first_half, r1, mask=is_qk)
    tl.store(first_half + HALF, r2, mask=is_qk)

    # the key cache gets the rotated k as written back (rounded), the value cache raw v
    k_row = KCache + slot * kc_stride + (heads - num_q_heads)[:, None] * HEAD_DIM \
        + half_dims[None, :]
    k_ty = KCache.dtype.element_ty
    tl.store(k_row, _cache_values(r1.to(tl.float32), k_inv[:, None], k_ty, FP8_CACHE,
                                  EXACT_ROUNDING), mask=is_k[:, None])
    tl.store(k_row + HALF, _cache_values(r2.to(tl.float32), k_inv[:, None], k_ty, FP8_CACHE,
                                         EXACT_ROUNDING), mask=is_k[:, None])
    # v goes out as [HEADS, 2, HALF], not in the tile's shape: Triton sizes a load's
    # per-thread vector by the other memory ops of its shape that touch its value, and an
    # aligned cache store would change the tile's layout (so the order of the sum above)
    # wherever qkv's rows are not 16-element aligned.
    v_row = VCache + slot * vc_stride + (heads - qk_heads)[:, None, None] * HEAD_DIM \
        + (tl.arange(0, 2) * HALF)[None, :, None] + half_dims[None, None, :]
    tl.store(v_row, _cache_values(tl.reshape(x, (HEADS, 2, HALF)), v_inv[:, None, None],
                                  VCache.dtype.element_ty, FP8_CACHE, EXACT_ROUNDING),
             mask=is_v[:, None, None])
