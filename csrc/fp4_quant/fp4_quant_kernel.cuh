// One-pass block-scaled quantization (NVFP4, MXFP4, MXFP8) of rows of bf16/fp16 values.
//
// Each thread reads one 16-byte vector (8 elements) and converts it in fp32; the 2 (16-
// element blocks) or 4 (32-element blocks) threads of a scale block share its amax through
// xor shuffles inside their aligned team. Work is a grid-stride loop over units of
// (scale row, chunk of blockDim.x vectors), so a small batch can spread one row over many
// blocks. Swizzled scales iterate the padded scale rows too: padding rows and columns get
// zero scales, so every byte of the output is written (no memset, CUDA-graph safe).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "fp4_convert.cuh"
#include "fp4_quant_args.h"
#include "pdl.cuh"
#include "scale_layout.cuh"
#include "vec.cuh"

namespace fuseinfer::fp4_quant {

constexpr int kElts = 8;  // elements per thread: one 16-byte load of bf16/fp16

template <Format F>
struct FormatTraits {
  static constexpr int kBlock = F == Format::kNvfp4 ? 16 : 32;
  static constexpr int kTeam = kBlock / kElts;  // threads per scale
  static constexpr bool kFp4 = F != Format::kMxfp8;
};

// The scale byte of a block from its amax, and the factor its values are multiplied by.
template <Format F>
__device__ __forceinline__ uint32_t block_scale(float amax, float global_scale, float* factor) {
  if constexpr (F == Format::kNvfp4) {
    // E4M3(global_scale * amax / 6); values times global_scale / scale (0 for a zero scale)
    const uint32_t byte = e4m3_byte(__fmul_rn(global_scale, __fdiv_rn(amax, 6.f)));
    const float scale = e4m3_value(byte);
    *factor = scale != 0.f ? __fdiv_rn(global_scale, scale) : 0.f;
    return byte;
  } else {
    // the power of two >= amax / 6 (E2M1) or amax / 448 (E4M3): no value saturates
    const uint32_t byte = e8m0_ceil(__fdiv_rn(amax, F == Format::kMxfp4 ? 6.f : 448.f));
    *factor = e8m0_reciprocal(byte);
    return byte;
  }
}

template <Format F, typename T, ExpertMode M>
__global__ void __launch_bounds__(1024) quantize_kernel(QuantArgs a) {
  using Fmt = FormatTraits<F>;
  extern __shared__ int32_t shared_offsets[];
  const int64_t vecs = a.out_cols / kElts;
  const int64_t in_vecs = a.in_cols / kElts;
  const int64_t chunks = (vecs + blockDim.x - 1) / blockDim.x;
  const int64_t units = a.scale_rows * chunks;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const unsigned team_mask = ((1u << Fmt::kTeam) - 1u) << (lane & ~(Fmt::kTeam - 1));
  const bool leader = lane % Fmt::kTeam == 0;
  const int64_t k_tiles = a.scale_cols_padded / 4;
  const int64_t pad_cols = a.scale_cols_padded - a.scale_cols;

  pdl_wait();  // input, global scales and offsets may come from the previous kernel
  int32_t reg_offsets[kRegisterExperts + 1];
  if constexpr (M == ExpertMode::kRegisters) {
#pragma unroll
    for (int e = 0; e <= kRegisterExperts; ++e) {
      reg_offsets[e] = e <= a.experts ? a.expert_offsets[e] : INT32_MAX;
    }
  } else if constexpr (M == ExpertMode::kShared) {
    for (int e = threadIdx.x; e <= a.experts; e += blockDim.x) {
      shared_offsets[e] = a.expert_offsets[e];
    }
    __syncthreads();
  }
  float global_scale = 0.f;
  if constexpr (F == Format::kNvfp4 && M == ExpertMode::kSingle) global_scale = a.global_scale[0];

  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    const int64_t r = unit / chunks;
    const int64_t v = (unit - r * chunks) * blockDim.x + threadIdx.x;
    if (v >= vecs) continue;  // a whole team at once: vecs is a multiple of kTeam
    RowSource src{r, 0};
    if constexpr (M == ExpertMode::kSingle) {
      src.row = r < a.rows ? r : -1;
    } else if constexpr (M == ExpertMode::kRegisters) {
      src = row_in_registers(reg_offsets, a.experts, r, a.swizzled);
    } else {
      src = row_in_shared(shared_offsets, a.experts, r, a.swizzled);
    }
    const int64_t sc = v / Fmt::kTeam;  // this team's scale column
    uint32_t scale_byte = 0;            // padding rows: zero scales
    if (src.row >= 0) {
      float x[kElts];
      if (v < in_vecs) {
        const Vec<T, kElts> in = load_vec<T, kElts>(static_cast<const T*>(a.input) +
                                                    src.row * a.input_stride + v * kElts);
#pragma unroll
        for (int i = 0; i < kElts; ++i) x[i] = to_float(in[i]);
      } else {
#pragma unroll
        for (int i = 0; i < kElts; ++i) x[i] = 0.f;  // mxfp8's padded columns
      }
      float amax = 0.f;
#pragma unroll
      for (int i = 0; i < kElts; ++i) amax = fmaxf(amax, fabsf(x[i]));
#pragma unroll
      for (int offset = Fmt::kTeam / 2; offset > 0; offset /= 2) {
        amax = fmaxf(amax, __shfl_xor_sync(team_mask, amax, offset));
      }
      if constexpr (F == Format::kNvfp4 && M != ExpertMode::kSingle) {
        global_scale = a.global_scale[src.expert];
      }
      float factor;
      scale_byte = block_scale<F>(amax, global_scale, &factor);
#pragma unroll
      for (int i = 0; i < kElts; ++i) x[i] = __fmul_rn(x[i], factor);
      uint8_t* out = a.q + src.row * a.q_stride;
      if constexpr (Fmt::kFp4) {
        reinterpret_cast<uint32_t*>(out)[v] = pack_e2m1x8(x);
      } else {
        reinterpret_cast<uint2*>(out)[v] = pack_e4m3x8(x);
      }
    }
    if (!leader) continue;
    if (a.swizzled) {
      a.scales[swizzled_offset(r, sc, k_tiles)] = static_cast<uint8_t>(scale_byte);
      // the first teams of a row also zero its padding columns (at most 3)
      if (sc < pad_cols) a.scales[swizzled_offset(r, a.scale_cols + sc, k_tiles)] = 0;
    } else {
      a.scales[r * a.scale_stride + sc] = static_cast<uint8_t>(scale_byte);
    }
  }
  pdl_launch_dependents();
}

}  // namespace fuseinfer::fp4_quant
