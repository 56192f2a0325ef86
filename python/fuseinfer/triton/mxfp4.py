"""Triton helpers: MXFP4 weight tiles decoded in registers (the W4A16 grouped GEMM's B).

E2M1 codes decode with three integer ops and one multiply, no table and no int-to-float
conversion: the code's sign, 2 exponent bits and mantissa bit placed in a float32's sign,
low exponent bits and top mantissa bit ((c & 7) << 22 | (c & 8) << 28) read as the E2M1
value times 2^-126 for every code (the codes with exponent 0, 0 and 0.5, land on the
float32 subnormals 0 and 2^-127, so one rule covers all 16; plain float32 multiplies keep
subnormals, the libdevice-only ftz aside). E8M0 scales are 2^(s - 127) built as float32
bits (s = 0: the subnormal 2^-127; 255: NaN). Every product is exact in float32 and bf16, so
a decoded tile is bit-identical to fp4_format.dequantize_mxfp4.

On sm_80+ with bf16 activations the GEMM decodes with `mxfp4_pairs_bf16` instead: a few PTX
integer ops per packed 32-bit word place each code's sign and magnitude bits straight into
a bf16 pair, then two bf16x2 fmas (with -0 added: exact products) apply 2^126 and the
scale. That is about 60% of the float32 path's instructions per k step, and the decode is
what bounds the W4A16 GEMM at few tokens.
"""

from __future__ import annotations

import triton
import triton.language as tl


def _pair_asm(shift: int, out: str, scale: str) -> str:
    """One output bf16 pair: the nibbles at bits `12 - shift` of each half of q, sign to
    bit 15 and magnitude to bits 6..8, then x 2^126 and x the scale pair."""
    src = "q"
    lines = []
    if shift:
        lines.append(f"shl.b32 u, q, {shift};")
        src = "u"
    lines += [f"and.b32 v, {src}, 0x70007000;", "shr.b32 v, v, 6;",
              f"and.b32 u, {src}, 0x80008000;", "or.b32 u, u, v;",
              "fma.rn.bf16x2 u, u, bias, nz;", f"fma.rn.bf16x2 {out}, u, {scale}, nz;"]
    return "\n".join(lines)


# $4: 4 packed bytes b0..b3, $5: their 4 E8M0 scale bytes. Out: $0 = (b0.lo, b1.lo),
# $1 = (b2.lo, b3.lo), $2 = (b0.hi, b1.hi), $3 = (b2.hi, b3.hi) as bf16 pairs. Bytes are
# reordered b0 b2 b1 b3 so each 16-bit half holds one element's byte; a code's magnitude
# bits go to bf16 bits 6..8 and its sign to bit 15 (the E2M1 value x 2^-126, a subnormal
# for exponent 0), x 2^126 (0x7E80) is exact, then x the scale 2^(s - 127) built as the
# bf16 bits s << 7 (exact for s in 1..254; s = 0 gives 0 rather than 2^-127, and s = 255
# infinity rather than NaN).
_PAIRS_ASM = tl.constexpr("\n".join([
    "", "{",
    ".reg .b32 q, u, v, z, nz, s01, s23, bias;",
    "mov.b32 z, 0;",
    "mov.b32 nz, 0x80008000;",
    "mov.b32 bias, 0x7E807E80;",
    "prmt.b32 q, $4, z, 0x3120;",
    "prmt.b32 s01, $5, z, 0x4140;",
    "shl.b32 s01, s01, 7;",
    "prmt.b32 s23, $5, z, 0x4342;",
    "shl.b32 s23, s23, 7;",
    _pair_asm(12, "$0", "s01"),  # (b0.lo, b1.lo)
    _pair_asm(8, "$2", "s01"),   # (b0.hi, b1.hi)
    _pair_asm(4, "$1", "s23"),   # (b2.lo, b3.lo)
    _pair_asm(0, "$3", "s23"),   # (b2.hi, b3.hi)
    "}", ""]))


@triton.jit
def mxfp4_pairs_bf16(packed, scale_bytes):
    """uint8 packed codes and each byte's E8M0 scale byte (the same shape) -> (the low
    nibbles' values, the high nibbles' values) in bf16, each in the shape of `packed`.
    PTX for sm_80+ (bf16x2 fma); not for the interpreter."""
    return tl.inline_asm_elementwise(_PAIRS_ASM, "=r,=r,=r,=r,r,r", [packed, scale_bytes],
                                     dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)


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
