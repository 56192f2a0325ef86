// Element and scale conversions of the FP4/MXFP8 quantizers, bit-exact with the CPU
// reference (fuseinfer/ops/quant/fp4_format.py and the op files).
#pragma once

#include <cuda_fp8.h>

#include <cstdint>
#ifndef __CUDA_ARCH__
#include <cmath>
#include <cstring>
#endif

// The bit-level helpers are host-callable too, so a host harness can check them.
#define FP4_HD __host__ __device__ __forceinline__

namespace fuseinfer::fp4_quant {

FP4_HD uint32_t bits_of(float v) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(v);
#else
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u;
#endif
}

FP4_HD float float_of(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float v;
  std::memcpy(&v, &u, 4);
  return v;
#endif
}

FP4_HD float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

FP4_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

FP4_HD float fma_rn(float a, float b, float c) {
#ifdef __CUDA_ARCH__
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

FP4_HD float div_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// min(max(a * b, 0), 1) rounded once; NaN gives 0 (mul.sat).
FP4_HD float mul_sat(float a, float b) {
#ifdef __CUDA_ARCH__
  float d;
  asm("mul.rn.sat.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
  return d;
#else
  const float p = a * b;
  return p != p ? 0.f : std::fmin(std::fmax(p, 0.f), 1.f);
#endif
}

// PTX prmt (generic mode): byte i of the result is byte c[4i+2:4i] of {b, a}, or that
// byte's sign replicated when c[4i+3] is set.
FP4_HD uint32_t prmt(uint32_t a, uint32_t b, uint32_t c) {
#ifdef __CUDA_ARCH__
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
#else
  const uint64_t both = (static_cast<uint64_t>(b) << 32) | a;
  uint32_t d = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t sel = (c >> (4 * i)) & 0xF;
    uint32_t byte = static_cast<uint32_t>(both >> (8 * (sel & 7))) & 0xFF;
    if (sel & 8) byte = (byte & 0x80) ? 0xFF : 0;
    d |= byte << (8 * i);
  }
  return d;
#endif
}

// sm_100a and later have a hardware float -> E2M1 conversion; Hopper has none.
#if (defined(__CUDA_ARCH_SPECIFIC__) && __CUDA_ARCH_SPECIFIC__ >= 1000) || \
    (defined(__CUDA_ARCH_FAMILY_SPECIFIC__) && __CUDA_ARCH_FAMILY_SPECIFIC__ >= 1000)
#define FUSEINFER_HW_E2M1 1
#endif

// The E2M1 code nearest v, ties to the even code, saturating at +-6. NaN gives a signed
// zero code; the sign bit is kept, so -0 and tiny negatives give code 8 (negative zero).
// Hopper has no E2M1 conversion, so the rounding is one float add: with
// e = max(floor(log2 |v|), 0) clamped to 2 (|v| saturated at 6 first), magic = 2^(22 + e)
// has ulp 2^(e - 1), E2M1's spacing in that binade (0.5 below 2), so RN(|v| + magic) - magic
// is |v| rounded to the E2M1 grid with ties to even (magic's last mantissa bit is 0 and the
// sum stays in magic's binade); the code is then j + 2e for j = that difference in ulps.
// The general path (any factor); the hot loop uses e2m1_sum below.
FP4_HD uint32_t e2m1_code(float v) {
  const float a = fminf(fmaxf(fabsf(v), 0.f), 6.f);  // fmaxf: NaN -> 0
  const uint32_t k = bits_of(fmaxf(a, 1.f)) & 0x7F800000u;  // 2^e, e in {0, 1, 2}
  const uint32_t magic = k + (22u << 23);
  const uint32_t sum = bits_of(add_rn(a, float_of(magic)));
  const uint32_t code = sum - magic + ((k >> 22) - 254u);  // j + 2e, at most 7
  return code | ((bits_of(v) >> 28) & 8u);
}

// The same rounding of |x| * factor in fewer instructions, given f8 = factor / 8 exactly
// (normal): p = sat(|x| * f8) is the scaled value / 8 (NaN -> 0, exact up to the scaling
// since f8 is factor times a power of two), clamped to 6/8; the magic for p's binade e
// (p >= 2^(e-3)) also carries 2e in its last bits, magic = 2^(19 + e) + 2e ulps, which
// keeps the parity that ties-to-even reads, so the sum's low byte is the code j + 2e.
// The magic comes from p's biased exponent E = 124 + e by one multiply-add:
// (E + 22) << 23 + 2 (E - 124) = E * 0x800002 + (22 << 23) - 248.
FP4_HD uint32_t e2m1_sum(float abs_x, float f8) {
  const float p = fminf(mul_sat(abs_x, f8), 0.75f);
  const uint32_t e = bits_of(fmaxf(p, 0.125f)) >> 23;
  const uint32_t magic = e * 0x800002u + ((22u << 23) - 248u);
  return bits_of(add_rn(p, float_of(magic)));
}

// Eight e2m1_sum results (element i's code in the low byte of sums[i]) and the signs of
// the raw 16-bit inputs (element 2i in the low half of word i) to the packed nibbles:
// bytes gathered by prmt, the signs replicated out of the input words, then byte pairs
// folded into nibble pairs.
FP4_HD uint32_t pack_e2m1_sums(const uint32_t (&sums)[8], const uint32_t (&raw)[4]) {
  uint32_t half[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const uint32_t codes = prmt(prmt(sums[4 * h], sums[4 * h + 1], 0x40u),
                                prmt(sums[4 * h + 2], sums[4 * h + 3], 0x40u), 0x5410u);
    const uint32_t signs = prmt(raw[2 * h], raw[2 * h + 1], 0xFDB9u);  // 0xFF per negative
    const uint32_t nibbles = codes | (signs & 0x08080808u);  // element i in byte i
    half[h] = nibbles + (nibbles >> 4);  // pairs in bytes 0 and 2 (no bits overlap)
  }
  return prmt(half[0], half[1], 0x6420u);
}

// Eight values to eight E2M1 codes, packed: value 2i in the low nibble of byte i.
__device__ __forceinline__ uint32_t pack_e2m1x8(const float (&v)[8]) {
#ifdef FUSEINFER_HW_E2M1
  // cvt.rn.satfinite.e2m1x2 puts its first source in the high nibble
  uint32_t packed;
  asm("{\n"
      ".reg .b8 b0, b1, b2, b3;\n"
      "cvt.rn.satfinite.e2m1x2.f32 b0, %2, %1;\n"
      "cvt.rn.satfinite.e2m1x2.f32 b1, %4, %3;\n"
      "cvt.rn.satfinite.e2m1x2.f32 b2, %6, %5;\n"
      "cvt.rn.satfinite.e2m1x2.f32 b3, %8, %7;\n"
      "mov.b32 %0, {b0, b1, b2, b3};\n"
      "}"
      : "=r"(packed)
      : "f"(v[0]), "f"(v[1]), "f"(v[2]), "f"(v[3]), "f"(v[4]), "f"(v[5]), "f"(v[6]),
        "f"(v[7]));
  return packed;
#else
  uint32_t packed = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) packed |= e2m1_code(v[i]) << (4 * i);
  return packed;
#endif
}

// Eight values to eight E4M3 bytes (round to nearest even, saturating at +-448).
__device__ __forceinline__ uint2 pack_e4m3x8(const float (&v)[8]) {
  uint32_t word[2];
#pragma unroll
  for (int w = 0; w < 2; ++w) {
    const __nv_fp8x2_storage_t lo = __nv_cvt_float2_to_fp8x2(
        make_float2(v[4 * w], v[4 * w + 1]), __NV_SATFINITE, __NV_E4M3);
    const __nv_fp8x2_storage_t hi = __nv_cvt_float2_to_fp8x2(
        make_float2(v[4 * w + 2], v[4 * w + 3]), __NV_SATFINITE, __NV_E4M3);
    word[w] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
  }
  return make_uint2(word[0], word[1]);
}

// The E8M0 byte of the smallest power of two >= s (s >= 0; 255 for inf/NaN), read off
// the float's bits: exact for every float, subnormals included.
FP4_HD uint32_t e8m0_ceil(float s) {
  const uint32_t bits = bits_of(s);
  const uint32_t exponent = (bits >> 23) & 0xFFu;
  const uint32_t mantissa = bits & 0x7FFFFFu;
  if (exponent == 0xFFu) return 0xFFu;
  if (exponent == 0u) return mantissa > 0x400000u ? 1u : 0u;  // 2^-127 or 2^-126
  const uint32_t up = exponent + (mantissa != 0u);
  return up > 254u ? 254u : up;
}

// 2^(127 - e): the exact reciprocal of the E8M0 scale e (e <= 254).
FP4_HD float e8m0_reciprocal(uint32_t e) {
  return e == 254u ? float_of(0x00400000u) : float_of((254u - e) << 23);
}

// e8m0_ceil(amax / d) for d = m * 2^k (m in [1, 2)) read off amax's bits, no division:
// exact for amax of biased exponent k + 2 .. 254 (amax / d normal). There
// RN(amax / d) is a power of two only when amax's mantissa is m's (RN moves the quotient
// by at most half an ulp, and a mantissa one ulp off m puts it over an ulp away), so the
// result is amax's exponent - k, plus one above m. Other amax: the division.
template <uint32_t kShift, uint32_t kMantissa>
FP4_HD uint32_t e8m0_ceil_div(float amax, float d) {
  const uint32_t bits = bits_of(amax);
  const uint32_t exponent = bits >> 23;  // amax >= 0
  if (exponent >= kShift + 2 && exponent < 255u) {
    return exponent - kShift + ((bits & 0x7FFFFFu) > kMantissa);
  }
  return e8m0_ceil(div_rn(amax, d));
}

// An E4M3 byte (round to nearest even, saturating) and its value.
FP4_HD uint32_t e4m3_byte(float s) {
  return static_cast<uint32_t>(__nv_cvt_float_to_fp8(s, __NV_SATFINITE, __NV_E4M3));
}

FP4_HD float e4m3_value(uint32_t byte) {
  const __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(byte),
                                               __NV_E4M3);
  return __half2float(__half(h));
}

// NVFP4's factor global_scale / scale for the E4M3 scale byte (0 for a zero scale).
FP4_HD float nvfp4_factor(uint32_t byte, float global_scale) {
  const float scale = e4m3_value(byte);
  return scale != 0.f ? div_rn(global_scale, scale) : 0.f;
}

}  // namespace fuseinfer::fp4_quant
