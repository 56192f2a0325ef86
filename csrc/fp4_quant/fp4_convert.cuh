// Element and scale conversions of the FP4/MXFP8 quantizers, bit-exact with the CPU
// reference (fuseinfer/ops/quant/fp4_format.py and the op files).
#pragma once

#include <cuda_fp8.h>

#include <cstdint>

namespace fuseinfer::fp4_quant {

// sm_100a and later have a hardware float -> E2M1 conversion; Hopper has none.
#if (defined(__CUDA_ARCH_SPECIFIC__) && __CUDA_ARCH_SPECIFIC__ >= 1000) || \
    (defined(__CUDA_ARCH_FAMILY_SPECIFIC__) && __CUDA_ARCH_FAMILY_SPECIFIC__ >= 1000)
#define FUSEINFER_HW_E2M1 1
#endif

// The E2M1 code nearest v, ties to the even code, saturating at +-6. NaN gives a signed
// zero code; the sign bit is kept, so -0 and tiny negatives give code 8 (negative zero).
// Hopper has no E2M1 conversion, so the rounding is one float add (about 10 instructions
// a value instead of 7 compares and selects): with e = max(floor(log2 |v|), 0) clamped to
// 2 (|v| saturated at 6 first), magic = 2^(22 + e) has ulp 2^(e - 1), E2M1's spacing in that
// binade (0.5 below 2), so RN(|v| + magic) - magic is |v| rounded to the E2M1 grid with
// ties to even (magic's last mantissa bit is 0 and the sum stays in magic's binade); the
// code is then j + 2e for j = that difference in ulps. Checked against the 7-boundary
// count for every float of exponent 100..140 and samples of the rest.
__device__ __forceinline__ uint32_t e2m1_code(float v) {
  const float a = fminf(fmaxf(fabsf(v), 0.f), 6.f);  // fmaxf: NaN -> 0
  const uint32_t k = __float_as_uint(fmaxf(a, 1.f)) & 0x7F800000u;  // 2^e, e in {0, 1, 2}
  const uint32_t magic = k + (22u << 23);
  const uint32_t sum = __float_as_uint(__fadd_rn(a, __uint_as_float(magic)));
  const uint32_t code = sum - magic + ((k >> 22) - 254u);  // j + 2e, at most 7
  return code | ((__float_as_uint(v) >> 28) & 8u);
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
__device__ __forceinline__ uint32_t e8m0_ceil(float s) {
  const uint32_t bits = __float_as_uint(s);
  const uint32_t exponent = (bits >> 23) & 0xFFu;
  const uint32_t mantissa = bits & 0x7FFFFFu;
  if (exponent == 0xFFu) return 0xFFu;
  if (exponent == 0u) return mantissa > 0x400000u ? 1u : 0u;  // 2^-127 or 2^-126
  const uint32_t up = exponent + (mantissa != 0u);
  return up > 254u ? 254u : up;
}

// 2^(127 - e): the exact reciprocal of the E8M0 scale e (e <= 254).
__device__ __forceinline__ float e8m0_reciprocal(uint32_t e) {
  return e == 254u ? __uint_as_float(0x00400000u) : __uint_as_float((254u - e) << 23);
}

// An E4M3 byte (round to nearest even, saturating) and its value.
__device__ __forceinline__ uint32_t e4m3_byte(float s) {
  return static_cast<uint32_t>(__nv_cvt_float_to_fp8(s, __NV_SATFINITE, __NV_E4M3));
}

__device__ __forceinline__ float e4m3_value(uint32_t byte) {
  const __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(byte),
                                               __NV_E4M3);
  return __half2float(__half(h));
}

}  // namespace fuseinfer::fp4_quant
