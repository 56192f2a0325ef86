// Writing activation values into a KV cache slot: the same dtype, or FP8 (e4m3) scaled
// by 1/scale with saturation to +-448 (the CPU reference clamps the same way).
#pragma once

#include <cuda_fp8.h>

#include "vec.cuh"

namespace fuseinfer::kvcache {

using Fp8 = __nv_fp8_e4m3;

// N values (already rounded to T) -> N cache elements at dst.
template <typename T, typename CacheT, int N>
__device__ __forceinline__ void store_cache(CacheT* dst, const Vec<T, N>& values,
                                            float inv_scale) {
  if constexpr (std::is_same_v<CacheT, T>) {
    store_vec<T, N>(dst, values);
  } else {
    Vec<Fp8, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) out[j] = Fp8(to_float(values[j]) * inv_scale);  // SATFINITE
    store_vec<Fp8, N>(dst, out);
  }
}

// 1 / the scale of row element `elem` (scales of one element or one per `group` elements).
__device__ __forceinline__ float inverse_scale(const float* scale, int64_t elem, int group) {
  return scale == nullptr ? 1.f : 1.f / scale[elem / group];
}

__device__ __forceinline__ int64_t load_index(const void* ptr, bool is_int64, int64_t i) {
  return is_int64 ? static_cast<const int64_t*>(ptr)[i]
                  : static_cast<int64_t>(static_cast<const int32_t*>(ptr)[i]);
}

}  // namespace fuseinfer::kvcache
