// RMSNorm and fused residual-add + RMSNorm kernels.
//
//   y = x * rsqrt(mean(x^2) + eps) * (w + weight_offset)      (weight_offset = 1: Gemma)
//   fused add:  residual = T(input + residual);  input = rmsnorm(residual)
//
// Accumulation is fp32. A block holds `rows_per_block` rows, `threads_per_row` threads
// each (blockDim = {threads_per_row, rows_per_block}); the launch shape comes from the
// dispatch table, not from this file.
#pragma once

#include "pdl.cuh"
#include "vec.cuh"

namespace fuseinfer::norm {

struct RowPointers {
  void* out;             // output rows (== input for the fused variants)
  int64_t out_stride;    // elements between rows
  const void* input;
  int64_t input_stride;
  void* residual;        // nullptr unless fused
  int64_t residual_stride;
  const void* weight;
};

// Sum over the threads of one row. Rows of fewer than 32 threads reduce inside a warp
// (threads_per_row is then a power of two); wider rows combine one partial per warp.
__device__ __forceinline__ float row_sum(float value, int threads_per_row) {
  const int lanes = threads_per_row < 32 ? threads_per_row : 32;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    if (offset < lanes) value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  if (threads_per_row <= 32) return value;

  __shared__ float warp_partials[32];
  const int thread = threadIdx.y * threads_per_row + threadIdx.x;
  const int warps_per_row = threads_per_row / 32;
  if ((thread & 31) == 0) warp_partials[thread >> 5] = value;
  __syncthreads();
  float total = 0.f;
  const int first = threadIdx.y * warps_per_row;
  for (int w = 0; w < warps_per_row; ++w) total += warp_partials[first + w];
  return total;
}

// Fast path: hidden is a multiple of VEC, rows are 16-byte aligned, and each thread keeps
// at most VPT vectors of its row in registers, so every input is read exactly once.
template <typename T, int VPT, bool FUSED_ADD>
__global__ void rmsnorm_vec_kernel(RowPointers p, int64_t rows, int hidden, float eps,
                                   float weight_offset) {
  constexpr int VEC = kVec16<T>;
  const int threads_per_row = blockDim.x;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool active = row < rows;
  const int num_vec = hidden / VEC;

  pdl_wait();

  // Every load of the row (and the weight) is issued before the first use, so they are
  // all in flight together and the weight costs no extra round trip after the reduction.
  Vec<T, VEC> x[VPT];
  Vec<T, VEC> r[VPT];
  Vec<T, VEC> w[VPT];
  const T* in_row = static_cast<const T*>(p.input) + row * p.input_stride;
  T* res_row = FUSED_ADD ? static_cast<T*>(p.residual) + row * p.residual_stride : nullptr;
  const T* weight = static_cast<const T*>(p.weight);
  if (active) {
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int v = threadIdx.x + i * threads_per_row;
      if (v < num_vec) {
        x[i] = load_vec<T, VEC>(in_row + v * VEC);
        if constexpr (FUSED_ADD) r[i] = load_vec<T, VEC>(res_row + v * VEC);
        w[i] = load_vec<T, VEC>(weight + v * VEC);
      }
    }
  }
  // Our reads are issued; the next kernel may start its prologue (it still waits for
  // this grid to finish before reading what we write).
  pdl_launch_dependents();

  // The row stays packed in registers in its own dtype (x holds the rounded sum when
  // fused) and is widened again on use: half the registers of an fp32 copy for 16-bit
  // types, so twice the blocks fit per SM and more loads are in flight.
  float sum_sq = 0.f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int v = threadIdx.x + i * threads_per_row;
    if (active && v < num_vec) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        if constexpr (FUSED_ADD) {
          // normalize the rounded residual, as the model sees it
          x[i][j] = from_float<T>(to_float(x[i][j]) + to_float(r[i][j]));
        }
        const float s = to_float(x[i][j]);
        sum_sq += s * s;
      }
      if constexpr (FUSED_ADD) store_vec<T, VEC>(res_row + v * VEC, x[i]);
    }
  }

  // Every thread of the block takes part in the reduction, active row or not.
  const float total = row_sum(sum_sq, threads_per_row);
  if (!active) return;

  const float scale = rsqrtf(total / static_cast<float>(hidden) + eps);
  T* out_row = static_cast<T*>(p.out) + row * p.out_stride;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int v = threadIdx.x + i * threads_per_row;
    if (v < num_vec) {
      Vec<T, VEC> y;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        y[j] = from_float<T>(to_float(x[i][j]) * scale * (to_float(w[i][j]) + weight_offset));
      }
      store_vec<T, VEC>(out_row + v * VEC, y);
    }
  }
}

// General path: any hidden size, alignment or stride. Two passes over the row; the
// second re-reads from L2 (or, fused, the residual this thread just wrote).
template <typename T, bool FUSED_ADD>
__global__ void rmsnorm_generic_kernel(RowPointers p, int64_t rows, int hidden, float eps,
                                       float weight_offset) {
  const int threads_per_row = blockDim.x;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool active = row < rows;

  pdl_wait();

  const T* in_row = static_cast<const T*>(p.input) + row * p.input_stride;
  T* res_row = FUSED_ADD ? static_cast<T*>(p.residual) + row * p.residual_stride : nullptr;
  float sum_sq = 0.f;
  if (active) {
    for (int i = threadIdx.x; i < hidden; i += threads_per_row) {
      float s = to_float(in_row[i]);
      if constexpr (FUSED_ADD) {
        const T rounded = from_float<T>(s + to_float(res_row[i]));
        res_row[i] = rounded;
        s = to_float(rounded);
      }
      sum_sq += s * s;
    }
  }
  const float total = row_sum(sum_sq, threads_per_row);
  pdl_launch_dependents();
  if (!active) return;

  const float scale = rsqrtf(total / static_cast<float>(hidden) + eps);
  const T* w = static_cast<const T*>(p.weight);
  T* out_row = static_cast<T*>(p.out) + row * p.out_stride;
  for (int i = threadIdx.x; i < hidden; i += threads_per_row) {
    const float s = FUSED_ADD ? to_float(res_row[i]) : to_float(in_row[i]);
    out_row[i] = from_float<T>(s * scale * (to_float(w[i]) + weight_offset));
  }
}

}  // namespace fuseinfer::norm
