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
#include <type_traits>

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

// RN(amax / 6) by a multiply and two FMA corrections: exact for every amax the kernel
// sees (a bf16 or fp16 value; checked for all of them), with no division's range check.
FP4_HD float div6(float amax) {
  const float c = float_of(0x3E2AAAABu);  // RN(1/6)
  const float q = mul_rn(amax, c);
  return fma_rn(fma_rn(-q, 6.f, amax), c, q);
}

// The scale byte of a block from its amax, and the factor its values are multiplied by.
template <Format F>
FP4_HD uint32_t block_scale(float amax, float global_scale, float* factor) {
  if constexpr (F == Format::kNvfp4) {
    // E4M3(global_scale * amax / 6); values times global_scale / scale (0 for a zero scale)
    const uint32_t byte = e4m3_byte(mul_rn(global_scale, div6(amax)));
    *factor = nvfp4_factor(byte, global_scale);
    return byte;
  } else {
    // the power of two >= amax / 6 (E2M1) or amax / 448 (E4M3): no value saturates
    const uint32_t byte = F == Format::kMxfp4 ? e8m0_ceil_div<2, 0x400000u>(amax, 6.f)
                                              : e8m0_ceil_div<8, 0x600000u>(amax, 448.f);
    *factor = e8m0_reciprocal(byte);
    return byte;
  }
}

// factor / 8 for e2m1_sum, or -1 where that is not exact (factor < 2^-123, not finite or
// negative: the general rounding takes those blocks, which real data never has).
FP4_HD float e2m1_f8(float factor) {
  const float f8 = factor * 0.125f;
  return factor == 0.f || (f8 >= 0x1p-126f && factor <= 0x1.fffffep127f) ? f8 : -1.f;
}

// A vector's 8 values from its raw words (element 2i in the low half of word i), in fp32.
template <typename T>
FP4_HD void unpack8(const uint32_t (&raw)[4], float (&x)[kElts]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      x[2 * i] = float_of(raw[i] << 16);
      x[2 * i + 1] = float_of(raw[i] & 0xFFFF0000u);
    } else {
      __half_raw lo, hi;
      lo.x = static_cast<unsigned short>(raw[i]);
      hi.x = static_cast<unsigned short>(raw[i] >> 16);
      x[2 * i] = __half2float(__half(lo));
      x[2 * i + 1] = __half2float(__half(hi));
    }
  }
}

// Software E2M1 (Hopper) of a vector: its values, raw words for the signs and f8 >= 0 from
// e2m1_f8 (the block's factor / 8).
FP4_HD uint32_t e2m1x8_fast(const float (&x)[kElts], const uint32_t (&raw)[4], float f8) {
  uint32_t sums[kElts];
#pragma unroll
  for (int j = 0; j < kElts; ++j) sums[j] = e2m1_sum(fabsf(x[j]), f8);
  return pack_e2m1_sums(sums, raw);
}

// The general rounding of a vector (any factor), for the blocks e2m1_f8 turns away.
template <typename T>
FP4_HD uint32_t e2m1x8_general(const uint32_t (&raw)[4], float factor) {
  float x[kElts];
  unpack8<T>(raw, x);
  uint32_t packed = 0;
#pragma unroll
  for (int j = 0; j < kElts; ++j) packed |= e2m1_code(mul_rn(x[j], factor)) << (4 * j);
  return packed;
}

// MXFP4's f8 = 2^(124 - byte), as e2m1_f8 (-1 once that is subnormal).
FP4_HD float mxfp4_f8(uint32_t byte) {
  return byte <= 250u ? float_of((251u - byte) << 23) : -1.f;
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
#ifdef FUSEINFER_HW_E2M1
  constexpr bool kSoftE2m1 = false;
#else
  constexpr bool kSoftE2m1 = Fmt::kFp4;
#endif
  // One global scale (software E2M1): f8 of each E4M3 scale byte in a table, so a block
  // looks its factor up instead of dividing.
  constexpr bool kTable = kSoftE2m1 && F == Format::kNvfp4 && M == ExpertMode::kSingle;
  __shared__ float f8_of_byte[kTable ? 256 : 1];
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
  // vector i of a unit has scale column v0 / kTeam + i * blockDim.x / kTeam, a multiple of
  // 4 further on (swizzled: the same k % 4, the next 512-byte k tile per 4 columns)
  const uint32_t team_cols = blockDim.x / Fmt::kTeam;
  const uint32_t s_step = a.swizzled ? team_cols / 4 * 512 : team_cols;

  pdl_wait();  // input, global scales and offsets may come from the previous kernel
  if constexpr (M != ExpertMode::kSingle) {
    for (int e = threadIdx.x; e <= a.experts; e += blockDim.x) {
      shared_offsets[e] = a.expert_offsets[e];
    }
    __syncthreads();
  }
  float global_scale = 0.f;
  if constexpr (F == Format::kNvfp4 && M == ExpertMode::kSingle) global_scale = a.global_scale[0];
  if constexpr (kTable) {
    for (uint32_t b = threadIdx.x; b < 256; b += blockDim.x) {
      f8_of_byte[b] = e2m1_f8(nvfp4_factor(b, global_scale));
    }
    __syncthreads();
  }
  // its shared-window address, computed once (not per lookup)
  [[maybe_unused]] const uint32_t f8_table = static_cast<uint32_t>(__cvta_generic_to_shared(f8_of_byte));

  // One unit: kChecked for a unit that is not wholly inside a real row (a swizzled padding
  // row or the last chunk of a row), which checks each vector.
  auto unit = [&](auto checked, const RowSource& src, int64_t r, uint32_t v0) {
    constexpr bool kChecked = decltype(checked)::value;
    [[maybe_unused]] uint32_t table = f8_table;
    if constexpr (kTable) asm volatile("" : "+r"(table));  // kept in a register, not rebuilt
    // Every load of the unit is issued before any is used (kUnroll 16-byte loads in flight).
    uint4 in[kUnroll];
    const T* in_row =
        static_cast<const T*>(a.input) + (src.row >= 0 ? src.row : 0) * a.input_stride;
#pragma unroll
    for (int i = 0; i < kUnroll; ++i) {
      const uint32_t v = v0 + i * blockDim.x;
      if (!kChecked || (src.row >= 0 && v < in_vecs)) {
        in[i] = *reinterpret_cast<const uint4*>(in_row + static_cast<int64_t>(v) * kElts);
      } else {
        in[i] = make_uint4(0, 0, 0, 0);  // padding rows and columns, lanes past the row
      }
    }

    uint8_t* q_row = a.q + (src.row >= 0 ? src.row : 0) * a.q_stride;
    // this unit's first scale: linear, or the row and column terms of the swizzled offset
    const uint32_t sc0 = v0 / Fmt::kTeam;
    uint8_t* s_unit = a.scales + (a.swizzled ? swizzled_row_offset(r, k_tiles) +
                                                   swizzled_col_offset(sc0)
                                             : r * a.scale_stride + sc0);
#pragma unroll
    for (int i = 0; i < kUnroll; ++i) {
      const uint32_t v = v0 + i * blockDim.x;
      const uint32_t raw[4] = {in[i].x, in[i].y, in[i].z, in[i].w};
      float x[kElts];
      unpack8<T>(raw, x);
      float amax = 0.f;
#pragma unroll
      for (int j = 0; j < kElts; ++j) amax = fmaxf(amax, fabsf(x[j]));
      // the team of a scale block: kTeam aligned lanes (blockDim.x and span are multiples
      // of 32, so they hold consecutive vectors of one block); every lane takes part
#pragma unroll
      for (int offset = Fmt::kTeam / 2; offset > 0; offset /= 2) {
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
      }
      float factor = 0.f, f8 = 0.f;
      uint32_t scale_byte;
      if constexpr (kTable) {
        scale_byte = e4m3_byte(mul_rn(global_scale, div6(amax)));
        asm volatile("ld.shared.f32 %0, [%1];" : "=f"(f8) : "r"(table + scale_byte * 4));
      } else {
        scale_byte = block_scale<F>(amax, global_scale, &factor);
        if constexpr (kSoftE2m1) {
          f8 = F == Format::kMxfp4 ? mxfp4_f8(scale_byte) : e2m1_f8(factor);
        }
      }
      if (kChecked && v >= vecs) continue;  // whole teams: vecs is a multiple of kTeam
      if (!kChecked || src.row >= 0) {
        if constexpr (kSoftE2m1) {
          uint32_t packed;
          if (f8 >= 0.f) {
            packed = e2m1x8_fast(x, raw, f8);
          } else {
            if constexpr (kTable) factor = nvfp4_factor(scale_byte, global_scale);
            packed = e2m1x8_general<T>(raw, factor);
          }
          reinterpret_cast<uint32_t*>(q_row)[v] = packed;
        } else {
#pragma unroll
          for (int j = 0; j < kElts; ++j) x[j] = __fmul_rn(x[j], factor);
          if constexpr (Fmt::kFp4) {
            reinterpret_cast<uint32_t*>(q_row)[v] = pack_e2m1x8(x);
          } else {
            reinterpret_cast<uint2*>(q_row)[v] = pack_e4m3x8(x);
          }
        }
      } else {
        scale_byte = 0;  // padding rows: zero scales
      }
      if (leader) s_unit[i * s_step] = static_cast<uint8_t>(scale_byte);
    }
    // a swizzled row's padding columns (at most 3) are zeroed by the first threads of its
    // first chunk
    if (a.swizzled && v0 < pad_cols) {
      a.scales[swizzled_row_offset(r, k_tiles) + swizzled_col_offset(scale_cols + v0)] = 0;
    }
  };

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
    // decided per warp, as the team shuffles need every lane
    if (__all_sync(0xffffffffu, src.row >= 0 && v0 + (kUnroll - 1) * blockDim.x < in_vecs)) {
      unit(std::false_type{}, src, r, v0);
    } else {
      unit(std::true_type{}, src, r, v0);
    }
    if ((c += step_c) >= chunks) {  // the next unit: gridDim.x units further on
      c -= chunks;
      ++r;
    }
  }
  pdl_launch_dependents();
}

}  // namespace fuseinfer::fp4_quant
