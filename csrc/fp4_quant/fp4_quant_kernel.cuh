// One-pass block-scaled quantization (NVFP4, MXFP4, MXFP8) of rows of bf16/fp16 values.
//
// Each thread converts 16-byte vectors (8 elements) in fp32; the 2 (16-element blocks) or
// 4 (32-element blocks) lanes of a scale block share its amax through xor shuffles inside
// their aligned team (no shared memory, no barrier), so every warp load stays one
// contiguous 512-byte access. Work is a grid-stride loop over units of (scale row, chunk
// of kUnroll * blockDim.x vectors): a thread issues its kUnroll loads of a unit before it
// uses any (memory-level parallelism), the unit's row lookup and address math are done
// once per unit, in 32 bits for columns, and the next unit is stepped to without a
// division. A small batch spreads a row over several units (smaller blocks). Swizzled
// scales iterate the padded scale rows too: padding rows and columns get zero scales, so
// every byte of the output is written (no memset, CUDA-graph safe).
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

constexpr int kElts = 8;  // elements of a vector: one 16-byte load of bf16/fp16

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

// The scale of a unit's rows: where its values come from (-1: a swizzled padding row).
template <ExpertMode M>
__device__ __forceinline__ RowSource row_source(const QuantArgs& a,
                                                const int32_t* shared_offsets, int64_t r) {
  if constexpr (M == ExpertMode::kSingle) {
    return {r < a.rows ? r : -1, 0};
  } else if constexpr (M == ExpertMode::kFew) {
    return row_in_few(shared_offsets, a.experts, r, a.swizzled);
  } else {
    return row_in_shared(shared_offsets, a.experts, r, a.swizzled);
  }
}

template <Format F, typename T, ExpertMode M>
__global__ void __launch_bounds__(1024) quantize_kernel(QuantArgs a) {
  using Fmt = FormatTraits<F>;
  extern __shared__ int32_t shared_offsets[];
  // A row has < 2^31 vectors (checked by the launcher): 32-bit column math.
  const uint32_t vecs = static_cast<uint32_t>(a.out_cols / kElts);
  const uint32_t in_vecs = static_cast<uint32_t>(a.in_cols / kElts);
  const uint32_t span = blockDim.x * kUnroll;  // vectors of a unit
  const uint32_t chunks = (vecs + span - 1) / span;
  const uint32_t k_tiles = static_cast<uint32_t>(a.scale_cols_padded / 4);
  const uint32_t scale_cols = static_cast<uint32_t>(a.scale_cols);
  const uint32_t pad_cols = static_cast<uint32_t>(a.scale_cols_padded - a.scale_cols);
  const bool leader = threadIdx.x % Fmt::kTeam == 0;

  pdl_wait();  // input, global scales and offsets may come from the previous kernel
  if constexpr (M != ExpertMode::kSingle) {
    for (int e = threadIdx.x; e <= a.experts; e += blockDim.x) {
      shared_offsets[e] = a.expert_offsets[e];
    }
    __syncthreads();
  }
  float global_scale = 0.f;
  if constexpr (F == Format::kNvfp4 && M == ExpertMode::kSingle) global_scale = a.global_scale[0];

  // Units (scale row r, chunk c) in a grid-stride loop, stepped without a division.
  const uint32_t step_r = gridDim.x / chunks;
  const uint32_t step_c = gridDim.x - step_r * chunks;
  int64_t r = blockIdx.x / chunks;
  uint32_t c = blockIdx.x - static_cast<uint32_t>(r) * chunks;
  for (; r < a.scale_rows; r += step_r) {
    const RowSource src = row_source<M>(a, shared_offsets, r);
    const uint32_t v0 = c * span + threadIdx.x;  // vector i is v0 + i * blockDim.x
    if constexpr (F == Format::kNvfp4 && M != ExpertMode::kSingle) {
      global_scale = a.global_scale[src.expert];
    }

    // Every load of the unit is issued before any is used (kUnroll 16-byte loads in flight).
    Vec<T, kElts> in[kUnroll];
    const T* in_row =
        static_cast<const T*>(a.input) + (src.row >= 0 ? src.row : 0) * a.input_stride;
#pragma unroll
    for (int i = 0; i < kUnroll; ++i) {
      const uint32_t v = v0 + i * blockDim.x;
      if (src.row >= 0 && v < in_vecs) {
        in[i] = load_vec<T, kElts>(in_row + static_cast<int64_t>(v) * kElts);
      } else {
        in[i].fill(from_float<T>(0.f));  // padding rows and columns, lanes past the row
      }
    }

    uint8_t* q_row = a.q + (src.row >= 0 ? src.row : 0) * a.q_stride;
    // this scale row: linear, or the row terms of the swizzled offset (columns added below)
    uint8_t* s_row =
        a.scales + (a.swizzled ? swizzled_row_offset(r, k_tiles) : r * a.scale_stride);
#pragma unroll
    for (int i = 0; i < kUnroll; ++i) {
      const uint32_t v = v0 + i * blockDim.x;
      float x[kElts];
      float amax = 0.f;
#pragma unroll
      for (int j = 0; j < kElts; ++j) {
        x[j] = to_float(in[i][j]);
        amax = fmaxf(amax, fabsf(x[j]));
      }
      // the team of a scale block: kTeam aligned lanes (blockDim.x and span are multiples
      // of 32, so they hold consecutive vectors of one block); every lane takes part
#pragma unroll
      for (int offset = Fmt::kTeam / 2; offset > 0; offset /= 2) {
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
      }
      float factor;
      uint32_t scale_byte = block_scale<F>(amax, global_scale, &factor);
      if (v >= vecs) continue;  // whole teams: vecs is a multiple of kTeam
      if (src.row >= 0) {
#pragma unroll
        for (int j = 0; j < kElts; ++j) x[j] = __fmul_rn(x[j], factor);
        if constexpr (Fmt::kFp4) {
          reinterpret_cast<uint32_t*>(q_row)[v] = pack_e2m1x8(x);
        } else {
          reinterpret_cast<uint2*>(q_row)[v] = pack_e4m3x8(x);
        }
      } else {
        scale_byte = 0;  // padding rows: zero scales
      }
      if (!leader) continue;
      const uint32_t sc = v / Fmt::kTeam;  // this team's scale column
      s_row[a.swizzled ? swizzled_col_offset(sc) : sc] = static_cast<uint8_t>(scale_byte);
    }
    // a swizzled row's padding columns (at most 3) are zeroed by the first threads of its
    // first chunk
    if (a.swizzled && v0 < pad_cols) s_row[swizzled_col_offset(scale_cols + v0)] = 0;
    if ((c += step_c) >= chunks) {  // the next unit: gridDim.x units further on
      c -= chunks;
      ++r;
    }
  }
  pdl_launch_dependents();
}

}  // namespace fuseinfer::fp4_quant
