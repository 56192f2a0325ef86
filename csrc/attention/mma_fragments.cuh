// Register-fragment helpers of the CUDA decode kernel: row runs loaded into 32-bit words,
// FP8 pairs converted, packed 16-bit pairs, and the mma.m16n8k16 product (f32 accumulate).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace fuseinfer::attention {

template <int WORDS>
struct Words {
  uint32_t w[WORDS];
};

// A run of BYTES bytes of a q or key row (16-byte aligned when BYTES >= 16, 8 otherwise).
// Plain coherent loads: the previous kernel (PDL) writes q and the newest slots, and a
// plain load never moves above pdl_wait's memory clobber.
template <int BYTES>
__device__ __forceinline__ Words<BYTES / 4> load_run(const void* p) {
  Words<BYTES / 4> r;
  if constexpr (BYTES % 16 == 0) {
#pragma unroll
    for (int i = 0; i < BYTES / 16; ++i) {
      const uint4 v = static_cast<const uint4*>(p)[i];
      r.w[4 * i] = v.x;
      r.w[4 * i + 1] = v.y;
      r.w[4 * i + 2] = v.z;
      r.w[4 * i + 3] = v.w;
    }
  } else {
    static_assert(BYTES == 8, "runs are 8 bytes or a multiple of 16");
    const uint2 v = *static_cast<const uint2*>(p);
    r.w[0] = v.x;
    r.w[1] = v.y;
  }
  return r;
}

// BYTES (8 or 16) of shared memory at src into dst's words, one vector load.
template <int BYTES>
__device__ __forceinline__ void copy_words(uint32_t* dst, const void* src) {
  if constexpr (BYTES == 16) {
    const uint4 v = *static_cast<const uint4*>(src);
    dst[0] = v.x;
    dst[1] = v.y;
    dst[2] = v.z;
    dst[3] = v.w;
  } else {
    static_assert(BYTES == 8, "copies are 8 or 16 bytes");
    const uint2 v = *static_cast<const uint2*>(src);
    dst[0] = v.x;
    dst[1] = v.y;
  }
}

template <int WORDS>
__device__ __forceinline__ void zero(Words<WORDS>& r) {
#pragma unroll
  for (int i = 0; i < WORDS; ++i) r.w[i] = 0u;
}

// Two e4m3 values (low byte first) -> float16x2; the instruction needs sm_89+ (the
// launcher sends FP8 caches here only there).
__device__ __forceinline__ uint32_t e4m3x2_to_f16x2(uint32_t pair16) {
  uint32_t out = 0u;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  const uint16_t in = static_cast<uint16_t>(pair16 & 0xffffu);
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(out) : "h"(in));
#else
  __trap();
#endif
  return out;
}

// 2^x on the MUFU unit (what the Triton kernel's exp2 compiles to): exp2f without fast
// math adds a range fix-up around it; denormal results flush to zero (softmax weights).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

template <typename MmaT>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  if constexpr (std::is_same_v<MmaT, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

template <typename MmaT>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t r;
  if constexpr (std::is_same_v<MmaT, __half>) {
    const __half2 h = __floats2half2_rn(lo, hi);
    r = *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    r = *reinterpret_cast<const uint32_t*>(&h);
  }
  return r;
}

template <typename T>
__device__ __forceinline__ float2 unpack2(uint32_t w) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half22float2(*reinterpret_cast<const __half2*>(&w));
  } else {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w));
  }
}

template <typename T>
__device__ __forceinline__ void store_float(T* dst, float v) {
  if constexpr (std::is_same_v<T, __half>) {
    *dst = __float2half_rn(v);
  } else {
    *dst = __float2bfloat16_rn(v);
  }
}

}  // namespace fuseinfer::attention
