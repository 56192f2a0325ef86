// Per-token-group FP8 (e4m3) quantization, one pass:
//   scale = max(amax(|group|), 1e-10) / 448   (optionally rounded up to a power of two)
//   q     = e4m3(x / scale)                   (round to nearest even, saturating)
// Each group of GROUP channels is read by a power-of-two team of up to 32 consecutive
// lanes with 16-byte loads; the team's amax comes from xor shuffles that stay inside it.
// Math in fp32.
//
// Included by exactly one translation unit per build variant, which first defines
// FUSEINFER_QUANT_VARIANT (precise or fast_math): everything here lives in that namespace,
// so the precise and the --use_fast_math instantiations of the same templates are distinct
// symbols (no ODR clash when both are linked into one module).
#pragma once

#ifndef FUSEINFER_QUANT_VARIANT
#error "define FUSEINFER_QUANT_VARIANT (this build's namespace) before including this header"
#endif

#include <cuda_fp8.h>

#include <cstdint>

#include "group_quant_launch.h"
#include "pdl.cuh"
#include "vec.cuh"

namespace fuseinfer::quant::FUSEINFER_QUANT_VARIANT {

constexpr int kThreads = 256;
constexpr float kFp8Max = 448.f;
constexpr float kScaleFloor = 1e-10f;  // an all-zero group still gets a finite scale

template <typename T, int GROUP>
struct GroupShape {
  static constexpr int kVec = kVec16<T>;  // elements per 16-byte load
  static constexpr int kVecsPerGroup = GROUP / kVec;
  static constexpr int kLanesPerGroup = kVecsPerGroup < 32 ? kVecsPerGroup : 32;
  static constexpr int kVecsPerLane = kVecsPerGroup / kLanesPerGroup;
  static constexpr int kGroupsPerBlock = kThreads / kLanesPerGroup;
  static_assert(GROUP % kVec == 0 && kVecsPerGroup % kLanesPerGroup == 0, "bad group size");
  static_assert((kLanesPerGroup & (kLanesPerGroup - 1)) == 0, "teams must tile a warp");
};

// The next power of two >= s, from the bits (exact for every normal scale).
__device__ __forceinline__ float ceil_pow2(float s) {
  const uint32_t bits = __float_as_uint(s);
  const uint32_t exponent = ((bits >> 23) & 0xFFu) + ((bits & 0x7FFFFFu) != 0u);
  return __uint_as_float(exponent << 23);
}

template <typename T, int GROUP>
__global__ void __launch_bounds__(kThreads) group_quant_fp8_kernel(GroupQuantArgs a) {
  using S = GroupShape<T, GROUP>;
  const int lane = static_cast<int>(threadIdx.x) % S::kLanesPerGroup;
  const int64_t flat = static_cast<int64_t>(blockIdx.x) * S::kGroupsPerBlock +
                       static_cast<int64_t>(threadIdx.x) / S::kLanesPerGroup;
  // Lanes past the last group still take part in the shuffles below, then store nothing.
  const bool valid = flat < a.rows * a.groups;
  const int64_t row = valid ? flat / a.groups : 0;
  const int64_t group = valid ? flat - row * a.groups : 0;
  const T* in = static_cast<const T*>(a.input) + row * a.input_stride + group * GROUP;

  Vec<T, S::kVec> x[S::kVecsPerLane];
  pdl_wait();  // input may be the previous kernel's output
  if (valid) {
#pragma unroll
    for (int i = 0; i < S::kVecsPerLane; ++i) {
      x[i] = load_vec<T, S::kVec>(in + (lane + i * S::kLanesPerGroup) * S::kVec);
    }
  }
  pdl_launch_dependents();

  float v[S::kVecsPerLane][S::kVec];
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < S::kVecsPerLane; ++i) {
#pragma unroll
    for (int j = 0; j < S::kVec; ++j) {
      v[i][j] = valid ? to_float(x[i][j]) : 0.f;
      amax = fmaxf(amax, fabsf(v[i][j]));
    }
  }
#pragma unroll
  for (int offset = S::kLanesPerGroup / 2; offset > 0; offset /= 2) {
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
  }
  if (!valid) return;

  // The scale is IEEE-divided in both builds (__fdiv_rn survives --use_fast_math), so both
  // write the reference's scales, UE8M0 included; the builds differ only in x / scale below
  // (approximate under fast math: a value may land one e4m3 step away).
  float scale = __fdiv_rn(fmaxf(amax, kScaleFloor), kFp8Max);
  if (a.ue8m0) scale = ceil_pow2(scale);

  uint8_t* out = a.q + row * a.q_stride + group * GROUP;
#pragma unroll
  for (int i = 0; i < S::kVecsPerLane; ++i) {
    Vec<uint8_t, S::kVec> packed;
#pragma unroll
    for (int j = 0; j < S::kVec; j += 2) {
      // satfinite clamps to +-448 as the reference's clamp does before its cast
      const __nv_fp8x2_storage_t pair = __nv_cvt_float2_to_fp8x2(
          make_float2(v[i][j] / scale, v[i][j + 1] / scale), __NV_SATFINITE, __NV_E4M3);
      packed[j] = static_cast<uint8_t>(pair & 0xFFu);
      packed[j + 1] = static_cast<uint8_t>(pair >> 8);
    }
    store_vec<uint8_t, S::kVec>(out + (lane + i * S::kLanesPerGroup) * S::kVec, packed);
  }
  if (lane == 0) a.scales[row * a.scale_row_stride + group * a.scale_group_stride] = scale;
}

template <typename T, int GROUP>
cudaError_t launch_shape(const GroupQuantArgs& a, bool pdl, cudaStream_t stream) {
  using S = GroupShape<T, GROUP>;
  const int64_t blocks = (a.rows * a.groups + S::kGroupsPerBlock - 1) / S::kGroupsPerBlock;
  return launch_kernel(group_quant_fp8_kernel<T, GROUP>, dim3(static_cast<unsigned>(blocks)),
                       dim3(kThreads), 0, stream, pdl, a);
}

template <typename T>
cudaError_t launch_type(const GroupQuantArgs& a, int group_size, bool pdl,
                        cudaStream_t stream) {
  switch (group_size) {
    case 16: return launch_shape<T, 16>(a, pdl, stream);
    case 32: return launch_shape<T, 32>(a, pdl, stream);
    case 64: return launch_shape<T, 64>(a, pdl, stream);
    case 128: return launch_shape<T, 128>(a, pdl, stream);
    case 256: return launch_shape<T, 256>(a, pdl, stream);
    case 512: return launch_shape<T, 512>(a, pdl, stream);
    case 1024: return launch_shape<T, 1024>(a, pdl, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_group_quant_fp8(const GroupQuantArgs& args, InputType type, int group_size,
                                   bool pdl, cudaStream_t stream) {
  if (args.rows == 0 || args.groups == 0) return cudaSuccess;
  switch (type) {
    case InputType::kBFloat16: return launch_type<__nv_bfloat16>(args, group_size, pdl, stream);
    case InputType::kHalf: return launch_type<__half>(args, group_size, pdl, stream);
    case InputType::kFloat: return launch_type<float>(args, group_size, pdl, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fuseinfer::quant::FUSEINFER_QUANT_VARIANT
