// Allreduce kernels over the peer-mapped workspace (allreduce_workspace.cuh).
//
// Every kernel first copies its input into this rank's staging area, so callers pass any
// tensor (CUDA-graph captured ones included) and only the workspace is peer-mapped.
// Reductions add the ranks in rank order in fp32, so every rank gets the same bits.
//   one-shot: every rank reads all peers' staging areas and reduces everything itself.
//   two-shot: rank r reduces 1/world of the data into its result area (reduce-scatter),
//             then every rank copies each rank's reduced part (all-gather).
// The fused variants add the residual and apply RMSNorm to each reduced row; two-shot
// normalizes only its own rows and gathers both the normalized rows and the residual.
#pragma once

#include <cuda_runtime.h>

#include "allreduce_workspace.cuh"
#include "pdl.cuh"
#include "vec.cuh"

namespace fuseinfer::allreduce {

template <typename T>
using Row16 = Vec<T, kVec16<T>>;

// A 16-byte load that skips L1: peers' areas change behind this SM's back.
template <typename T>
__device__ __forceinline__ Row16<T> load_peer(const T* ptr) {
  const uint4 raw = __ldcg(reinterpret_cast<const uint4*>(ptr));
  return *reinterpret_cast<const Row16<T>*>(&raw);
}

template <typename T, int kWorld>
__device__ __forceinline__ void sum_ranks(const Peers& peers, int64_t offset,
                                          float (&acc)[kVec16<T>]) {
#pragma unroll
  for (int j = 0; j < kVec16<T>; ++j) acc[j] = 0.f;
#pragma unroll
  for (int r = 0; r < kWorld; ++r) {
    const Row16<T> v = load_peer(peers.stage<T>(r) + offset);
#pragma unroll
    for (int j = 0; j < kVec16<T>; ++j) acc[j] += to_float(v[j]);
  }
}

template <typename T, int kWorld>
__global__ void __launch_bounds__(512)
    one_shot_kernel(const T* in, T* out, Peers peers, int rank, int64_t n_vec) {
  constexpr int N = kVec16<T>;
  pdl_wait();
  const uint32_t flag = next_flag(peers, rank);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  T* mine = peers.stage<T>(rank);
  for (int64_t i = first; i < n_vec; i += stride)
    store_vec<T, N>(mine + i * N, load_vec<T, N>(in + i * N));
  barrier<kWorld>(peers, rank, flag, &Signal::start);
  for (int64_t i = first; i < n_vec; i += stride) {
    float acc[N];
    sum_ranks<T, kWorld>(peers, i * N, acc);
    Row16<T> o;
#pragma unroll
    for (int j = 0; j < N; ++j) o[j] = from_float<T>(acc[j]);
    store_vec<T, N>(out + i * N, o);
  }
  // Peers may still read our staging area; the next call must not overwrite it before.
  barrier<kWorld>(peers, rank, flag, &Signal::end);
  pdl_launch_dependents();
}

// Part p of the vectors: [p * part, min(n_vec, (p + 1) * part)). Block b handles the same
// offsets within every part, so block b of each rank only needs block b of the others.
template <typename T, int kWorld>
__global__ void __launch_bounds__(512)
    two_shot_kernel(const T* in, T* out, Peers peers, int rank, int64_t n_vec,
                    int64_t part) {
  constexpr int N = kVec16<T>;
  pdl_wait();
  const uint32_t flag = next_flag(peers, rank);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  T* mine = peers.stage<T>(rank);
  for (int p = 0; p < kWorld; ++p)
    for (int64_t i = p * part + first; i < min(n_vec, (p + 1) * part); i += stride)
      store_vec<T, N>(mine + i * N, load_vec<T, N>(in + i * N));
  barrier<kWorld>(peers, rank, flag, &Signal::start);
  T* reduced = peers.result<T>(rank);
  for (int64_t i = rank * part + first; i < min(n_vec, (rank + 1) * part); i += stride) {
    float acc[N];
    sum_ranks<T, kWorld>(peers, i * N, acc);
    Row16<T> o;
#pragma unroll
    for (int j = 0; j < N; ++j) o[j] = from_float<T>(acc[j]);
    store_vec<T, N>(reduced + i * N, o);
  }
  barrier<kWorld>(peers, rank, flag, &Signal::mid);
  for (int p = 0; p < kWorld; ++p) {
    const T* theirs = peers.result<T>(p);
    for (int64_t i = p * part + first; i < min(n_vec, (p + 1) * part); i += stride)
      store_vec<T, N>(out + i * N, load_peer(theirs + i * N));
  }
  barrier<kWorld>(peers, rank, flag, &Signal::end);
  pdl_launch_dependents();
}

__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[32];
  __shared__ float total;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < (blockDim.x + 31) / 32 ? warp_sums[lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

// One reduced row: residual_out = round(round(sum) + residual_in) (as an allreduce followed
// by fused_add_rmsnorm rounds), out = rmsnorm(residual_out) * weight. The thread that
// writes a vector of residual_out reads it back for the second pass.
template <typename T, int kWorld>
__device__ __forceinline__ void add_norm_row(const Peers& peers, int64_t row, int h_vec,
                                             const T* residual_in, T* residual_out, T* out,
                                             const T* __restrict__ weight, float eps) {
  constexpr int N = kVec16<T>;
  float sumsq = 0.f;
  for (int j = threadIdx.x; j < h_vec; j += blockDim.x) {
    float acc[N];
    sum_ranks<T, kWorld>(peers, (row * h_vec + j) * N, acc);
    const Row16<T> res = load_vec<T, N>(residual_in + j * N);
    Row16<T> x;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      x[k] = from_float<T>(to_float(from_float<T>(acc[k])) + to_float(res[k]));
      const float xf = to_float(x[k]);
      sumsq += xf * xf;
    }
    store_vec<T, N>(residual_out + j * N, x);
  }
  const float scale = rsqrtf(block_sum(sumsq) / static_cast<float>(h_vec * N) + eps);
  for (int j = threadIdx.x; j < h_vec; j += blockDim.x) {
    const Row16<T> x = load_vec<T, N>(residual_out + j * N);
    const Row16<T> w = load_vec<T, N>(weight + j * N);
    Row16<T> o;
#pragma unroll
    for (int k = 0; k < N; ++k) o[k] = from_float<T>(to_float(x[k]) * scale * to_float(w[k]));
    store_vec<T, N>(out + j * N, o);
  }
}

template <typename T>
__device__ __forceinline__ void copy_row(const T* src, T* dst, int h_vec, bool from_peer) {
  constexpr int N = kVec16<T>;
  for (int j = threadIdx.x; j < h_vec; j += blockDim.x)
    store_vec<T, N>(dst + j * N, from_peer ? load_peer(src + j * N) : load_vec<T, N>(src + j * N));
}

// Rows [rows, hidden] contiguous; block b takes rows b, b + grid, ...
template <typename T, int kWorld>
__global__ void __launch_bounds__(1024)
    fused_one_shot_kernel(const T* in, T* residual, const T* __restrict__ weight,
                          T* out, Peers peers, int rank, int64_t rows, int h_vec, float eps) {
  constexpr int N = kVec16<T>;
  pdl_wait();
  const uint32_t flag = next_flag(peers, rank);
  const int64_t h = static_cast<int64_t>(h_vec) * N;
  T* mine = peers.stage<T>(rank);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x)
    copy_row(in + row * h, mine + row * h, h_vec, false);
  barrier<kWorld>(peers, rank, flag, &Signal::start);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x)
    add_norm_row<T, kWorld>(peers, row, h_vec, residual + row * h, residual + row * h,
                            out + row * h, weight, eps);
  barrier<kWorld>(peers, rank, flag, &Signal::end);
  pdl_launch_dependents();
}

// Rank p owns rows [p * part, min(rows, (p + 1) * part)); block b takes local rows b,
// b + grid, ... of every part. The result area holds the owner's residual rows, then its
// normalized rows (rows * hidden further on).
template <typename T, int kWorld>
__global__ void __launch_bounds__(1024)
    fused_two_shot_kernel(const T* in, T* residual, const T* __restrict__ weight,
                          T* out, Peers peers, int rank, int64_t rows, int64_t part, int h_vec,
                          float eps) {
  constexpr int N = kVec16<T>;
  pdl_wait();
  const uint32_t flag = next_flag(peers, rank);
  const int64_t h = static_cast<int64_t>(h_vec) * N;
  T* mine = peers.stage<T>(rank);
  for (int p = 0; p < kWorld; ++p)
    for (int64_t row = p * part + blockIdx.x; row < min(rows, (p + 1) * part); row += gridDim.x)
      copy_row(in + row * h, mine + row * h, h_vec, false);
  barrier<kWorld>(peers, rank, flag, &Signal::start);
  T* res_area = peers.result<T>(rank);
  for (int64_t row = rank * part + blockIdx.x; row < min(rows, (rank + 1) * part);
       row += gridDim.x) {
    add_norm_row<T, kWorld>(peers, row, h_vec, residual + row * h, res_area + row * h,
                            res_area + (rows + row) * h, weight, eps);
    copy_row(res_area + row * h, residual + row * h, h_vec, false);
    copy_row(res_area + (rows + row) * h, out + row * h, h_vec, false);
  }
  barrier<kWorld>(peers, rank, flag, &Signal::mid);
  for (int p = 0; p < kWorld; ++p) {
    if (p == rank) continue;
    const T* theirs = peers.result<T>(p);
    for (int64_t row = p * part + blockIdx.x; row < min(rows, (p + 1) * part);
         row += gridDim.x) {
      copy_row(theirs + row * h, residual + row * h, h_vec, true);
      copy_row(theirs + (rows + row) * h, out + row * h, h_vec, true);
    }
  }
  barrier<kWorld>(peers, rank, flag, &Signal::end);
  pdl_launch_dependents();
}

}  // namespace fuseinfer::allreduce
