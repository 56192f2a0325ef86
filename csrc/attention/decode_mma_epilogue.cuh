// The CUDA decode kernel's epilogue: the warps' softmax states, left in shared memory,
// merged per (q head, dimension) and stored: a one-piece request finished (sink, v_scale,
// out, lse in natural log), otherwise the piece's normalized partial and base-2 lse.
#pragma once

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "decode_mma_args.h"
#include "mma_fragments.cuh"

namespace fuseinfer::attention {

// A warp's accumulator rows in shared memory are HEAD_DIM + 4 floats, and dimension d sits
// at d + (the q of the lane that holds it): the 32 lanes of one store then hit 32
// different banks (unpadded, at head_dim 128 all 32 hit the same one).
template <int HEAD_DIM>
constexpr int acc_row() {
  return HEAD_DIM + 4;
}

template <int HEAD_DIM>
__device__ __forceinline__ int acc_col(int d) {
  return d + d / (2 * (HEAD_DIM / 8));
}

// A finished row's output: the sink joins the denominator (rows with keys only), v_scale
// scales the output; lse in natural log.
template <typename QT>
__device__ __forceinline__ void store_finished(const DecodeMmaArgs& a, int req, int kv_head,
                                               int head, int d, float m, float l, float o) {
  if (a.sinks != nullptr && l > 0.f) {  // a row with no keys stays at zeros
    const float sink =
        (a.sinks_bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(a.sinks)[head])
                      : static_cast<const float*>(a.sinks)[head]) *
        kLog2e;
    const float m_fin = fmaxf(m, sink);
    const float scale = exp2f(m - m_fin);
    o *= scale;
    l = l * scale + exp2f(sink - m_fin);
    m = m_fin;
  }
  float inv_l = l > 0.f ? 1.f / l : 0.f;
  if (a.v_scale != nullptr) inv_l *= a.v_scale[kv_head * a.v_scale_stride];
  store_float(static_cast<QT*>(a.out) + req * a.o_stride_req + head * a.o_stride_head + d,
              o * inv_l);
  if (a.lse != nullptr && d == 0) {
    a.lse[req * a.lse_stride_req + head] = l > 0.f ? (m + log2f(l)) * kLn2 : -INFINITY;
  }
}

// sm_m, sm_l: [WARPS][16] row maxima (base 2) and sums; sm_acc: [WARPS][16][acc_row] the
// unnormalized outputs. After a barrier; every thread takes (row, d) items in turn.
template <typename QT, int HEAD_DIM, int WARPS>
__device__ __forceinline__ void store_merged(const DecodeMmaArgs& a, const float* sm_m,
                                             const float* sm_l, const float* sm_acc, int req,
                                             int kv_head, int split, bool finish) {
  constexpr int kAccRow = acc_row<HEAD_DIM>();
  for (int i = threadIdx.x; i < a.group * HEAD_DIM; i += WARPS * 32) {
    const int row = i / HEAD_DIM;
    const int d = i % HEAD_DIM;
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) m = fmaxf(m, sm_m[w * 16 + row]);
    float l = 0.f, o = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
      const float wt = sm_m[w * 16 + row] == -INFINITY ? 0.f : exp2f(sm_m[w * 16 + row] - m);
      l += sm_l[w * 16 + row] * wt;
      o += sm_acc[(w * 16 + row) * kAccRow + acc_col<HEAD_DIM>(d)] * wt;
    }
    const int head = kv_head * a.group + row;
    if (finish) {
      store_finished<QT>(a, req, kv_head, head, d, m, l, o);
    } else {
      const int64_t part = req * a.part_stride_req + head * a.part_stride_head +
                           split * a.part_stride_split;
      a.part_out[part * HEAD_DIM + d] = l > 0.f ? o / l : 0.f;
      if (d == 0) a.part_lse[part] = l > 0.f ? m + log2f(l) : -INFINITY;
    }
  }
}

// With merge counters: each piece counts itself once its partials are stored, and the last
// of a (request, KV head) to arrive merges every piece, in piece order (so the result does
// not depend on which finishes last), and sets the counter back to zero. `scratch`: the
// kernel's shared memory, free again (it holds group x pieces weights and 2 x group row
// values; the launcher keeps pieces within it).
template <typename QT, int HEAD_DIM, int WARPS>
__device__ __forceinline__ void merge_if_last(const DecodeMmaArgs& a, int req, int kv_head,
                                              int pieces, float* scratch) {
  __shared__ int last;
  __syncthreads();  // every thread of this piece has stored its partials
  if (threadIdx.x == 0) {
    // one fence for the CTA's stores, then the count (the grid.sync pattern); the last
    // piece fences again before its threads read the others' partials from L2
    __threadfence();
    int32_t* counter = a.merge_counters + req * a.counter_stride_req + kv_head;
    last = atomicAdd(counter, 1) == pieces - 1;
    if (last) {
      atomicExch(counter, 0);
      __threadfence();
    }
  }
  __syncthreads();
  if (!last) return;
  // the pieces' weights per row, once: w[row][p] = 2^(lse_p - m_row), then m and l per row
  float* w = scratch;
  float* row_m = w + a.group * pieces;
  float* row_l = row_m + a.group;
  const int64_t req_part = req * a.part_stride_req;
  for (int i = threadIdx.x; i < a.group * pieces; i += WARPS * 32) {
    const int head = kv_head * a.group + i / pieces;
    w[i] = __ldcg(a.part_lse + req_part + head * a.part_stride_head +
                  (i % pieces) * a.part_stride_split);
  }
  __syncthreads();
  if (threadIdx.x < a.group) {
    float* wr = w + threadIdx.x * pieces;
    float m = -INFINITY, l = 0.f;
    for (int p = 0; p < pieces; ++p) m = fmaxf(m, wr[p]);
    for (int p = 0; p < pieces; ++p) {
      wr[p] = wr[p] == -INFINITY ? 0.f : exp2f(wr[p] - m);
      l += wr[p];
    }
    row_m[threadIdx.x] = m;
    row_l[threadIdx.x] = l;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < a.group * HEAD_DIM; i += WARPS * 32) {
    const int row = i / HEAD_DIM;
    const int d = i % HEAD_DIM;
    const int head = kv_head * a.group + row;
    const int64_t part0 = req_part + head * a.part_stride_head;
    float o = 0.f;
    for (int p = 0; p < pieces; ++p) {
      o += __ldcg(a.part_out + (part0 + p * a.part_stride_split) * HEAD_DIM + d) *
           w[row * pieces + p];
    }
    store_finished<QT>(a, req, kv_head, head, d, row_m[row], row_l[row], o);
  }
}

}  // namespace fuseinfer::attention
