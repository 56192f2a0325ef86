"""Triton helpers: MXFP4 weight tiles decoded in registers (the W4A16 grouped GEMM's B).

E2M1 codes decode with three integer ops and one multiply, no table and no int-to-float
conversion: the code's sign, 2 exponent bits and mantissa bit placed in a float32's sign,
low exponent bits and top mantissa bit ((c & 7) << 22 | (c & 8) << 28) read as the E2M1
value times 2^-126 for every code (the codes with exponent 0, 0 and 0.5, land on the
float32 subnormals 0 and 2^-127, so one rule covers all 16; plain float32 multiplies keep
subnormals, the libdevice-only ftz aside). E8M0 scales are 2^(s - 127) built as float32
bits (s = 0: the subnormal 2^-127; 255: NaN). Every product is exact in float32 and bf16, so
a decoded tile is bit-identical to fp4_format.dequantize_mxfp4.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def e2m1_to_float(code):
    """int32 codes 0..15 to float32 values."""
    bits = ((code & 7) << 22) | ((code & 8) << 28)
    return bits.to(tl.float32, bitcast=True) * 8.507059173023462e37  # x 2^126


@triton.jit
def e8m0_to_float(s):
    """int32 biased exponents 0..255 to float32 2^(s - 127) (255: NaN)."""
    value = (s << 23).to(tl.float32, bitcast=True)
    value = tl.where(s == 0, 5.877471754111438e-39, value)  # 2^-127, a subnormal
    return tl.where(s == 255, float("nan"), value)


@triton.jit
def _scaled_half(codes, scale, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, OUT: tl.constexpr):
    """[BLOCK_N, BLOCK_K / 2] codes (one nibble of each byte) times their float32 scales
    [BLOCK_N, BLOCK_K / 32] (16 codes each), in OUT."""
    v = tl.reshape(e2m1_to_float(codes), (BLOCK_N, BLOCK_K // 32, 16)) * scale[:, :, None]
    return tl.reshape(v.to(OUT), (BLOCK_N, BLOCK_K // 2))


@triton.jit
def mxfp4_tile(packed, scales, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
               OUT: tl.constexpr):
    """packed uint8 [BLOCK_N, BLOCK_K / 2] (the even element in the low nibble) and E8M0
    scales uint8 [BLOCK_N, BLOCK_K / 32] -> [BLOCK_N, BLOCK_K] in OUT (the dot's dtype:
    each half is narrowed before the two are interleaved, to keep registers low)."""
    p = packed.to(tl.int32)
    s = e8m0_to_float(scales.to(tl.int32))
    lo = _scaled_half(p & 15, s, BLOCK_N, BLOCK_K, OUT)
    hi = _scaled_half(p >> 4, s, BLOCK_N, BLOCK_K, OUT)
    # join puts (lo, hi) side by side in a new minor dim: elements 2j, 2j + 1 of the row
    return tl.reshape(tl.join(lo, hi), (BLOCK_N, BLOCK_K))
