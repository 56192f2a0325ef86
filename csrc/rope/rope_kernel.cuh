// RoPE with a cos/sin cache, optionally fused with the KV-cache write.
//
// Heads of a token are numbered [q heads | k heads | v heads (fused only)]. A block covers
// tokens_per_block tokens x heads_per_block of those heads (all of them when 0); its
// threads loop over units: a rotary unit rotates P pairs of one q or k head (NeoX: P
// elements of each half; GPT-J: one vector of P interleaved pairs), a copy unit moves one
// vector of k's unrotated tail or of v into the cache. Math in fp32, one rounding.
#pragma once

#include "cache_store.cuh"
#include "pdl.cuh"
#include "vec.cuh"

namespace fuseinfer::rope {

using kvcache::inverse_scale;
using kvcache::load_index;
using kvcache::store_cache;

struct RopeArgs {
  const void* positions;
  bool pos64;
  void* query;
  int64_t q_stride;
  int q_heads;
  void* key;
  int64_t k_stride;
  int k_heads;
  const float* cos_sin;  // [max_position, rotary_dim]: cos | sin
  int rotary_dim;
  int head_size;
  int64_t tokens;
  int tokens_per_block;
  int heads_per_block;   // 0: all heads
  // fused KV write (value == nullptr: rope only)
  const void* value;
  int64_t v_stride;
  int v_head_size;
  void* k_cache;
  void* v_cache;
  int64_t kc_stride, vc_stride;
  const void* loc;
  bool loc64;
  const float* k_scale;
  const float* v_scale;
  int k_group, v_group;  // row elements per scale element (whole heads)
};

template <typename T, int N>
using VecAligned16 = cutlass::AlignedArray<T, N, (N * sizeof(T) < 16 ? N * sizeof(T) : 16)>;

// Rotate unit `unit` (P pairs) of one head row in place; mirror it into the cache row.
template <typename T, typename CacheT, bool NEOX, bool VECTOR, int P>
__device__ __forceinline__ void rotate_unit(T* row, int unit, const float* cs, int half,
                                            CacheT* cache_row, float inv_scale) {
  const int p0 = unit * P;
  const auto cos = *reinterpret_cast<const VecAligned16<float, P>*>(cs + p0);
  const auto sin = *reinterpret_cast<const VecAligned16<float, P>*>(cs + half + p0);
  if constexpr (NEOX) {
    // pairs (p0 + e, half + p0 + e)
    const Vec<T, P> a = load_vec<T, P>(row + p0);
    const Vec<T, P> b = load_vec<T, P>(row + half + p0);
    Vec<T, P> ra, rb;
#pragma unroll
    for (int e = 0; e < P; ++e) {
      const float x1 = to_float(a[e]), x2 = to_float(b[e]);
      ra[e] = from_float<T>(x1 * cos[e] - x2 * sin[e]);
      rb[e] = from_float<T>(x2 * cos[e] + x1 * sin[e]);
    }
    store_vec<T, P>(row + p0, ra);
    store_vec<T, P>(row + half + p0, rb);
    if (cache_row != nullptr) {
      store_cache<T, CacheT, P>(cache_row + p0, ra, inv_scale);
      store_cache<T, CacheT, P>(cache_row + half + p0, rb, inv_scale);
    }
  } else if constexpr (VECTOR) {
    // pairs (2(p0 + e), 2(p0 + e) + 1) in one vector of 2P elements
    const Vec<T, 2 * P> x = load_vec<T, 2 * P>(row + 2 * p0);
    Vec<T, 2 * P> r;
#pragma unroll
    for (int e = 0; e < P; ++e) {
      const float x1 = to_float(x[2 * e]), x2 = to_float(x[2 * e + 1]);
      r[2 * e] = from_float<T>(x1 * cos[e] - x2 * sin[e]);
      r[2 * e + 1] = from_float<T>(x2 * cos[e] + x1 * sin[e]);
    }
    store_vec<T, 2 * P>(row + 2 * p0, r);
    if (cache_row != nullptr) store_cache<T, CacheT, 2 * P>(cache_row + 2 * p0, r, inv_scale);
  } else {
    // one interleaved pair, element by element (no alignment assumed)
    const float x1 = to_float(row[2 * p0]), x2 = to_float(row[2 * p0 + 1]);
    Vec<T, 1> r1, r2;
    r1[0] = from_float<T>(x1 * cos[0] - x2 * sin[0]);
    r2[0] = from_float<T>(x2 * cos[0] + x1 * sin[0]);
    row[2 * p0] = r1[0];
    row[2 * p0 + 1] = r2[0];
    if (cache_row != nullptr) {
      store_cache<T, CacheT, 1>(cache_row + 2 * p0, r1, inv_scale);
      store_cache<T, CacheT, 1>(cache_row + 2 * p0 + 1, r2, inv_scale);
    }
  }
}

template <typename T, typename CacheT, bool NEOX, bool VECTOR>
__global__ void rope_kernel(RopeArgs a) {
  constexpr int VEC = VECTOR ? kVec16<T> : 1;           // elements per copy unit
  constexpr int P = VECTOR ? (NEOX ? VEC : VEC / 2) : 1;  // pairs per rotary unit
  const bool fused = a.value != nullptr;
  const int half = a.rotary_dim / 2;
  const int rotary_units = half / P;
  const int k_units = rotary_units + (fused ? (a.head_size - a.rotary_dim) / VEC : 0);
  const int v_units = fused ? a.v_head_size / VEC : 0;
  const int all_heads = a.q_heads + a.k_heads + (fused ? a.k_heads : 0);
  const int per_block = a.heads_per_block > 0 ? a.heads_per_block : all_heads;
  const int h0 = blockIdx.y * per_block;
  const int h1 = min(h0 + per_block, all_heads);
  const int qk = a.q_heads + a.k_heads;
  const int nq = max(0, min(h1, a.q_heads) - h0);
  const int k0 = max(h0, a.q_heads);
  const int nk = max(0, min(h1, qk) - k0);
  const int v0 = max(h0, qk);
  const int nv = max(0, h1 - v0);
  const int q_items = nq * rotary_units;
  const int k_items = nk * k_units;
  const int per_token = q_items + k_items + nv * v_units;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * a.tokens_per_block;
  const int64_t t1 = min(t0 + a.tokens_per_block, a.tokens);
  const int64_t items = (t1 - t0) * per_token;

  pdl_wait();
  pdl_launch_dependents();  // dependents still wait for this grid to finish before reading

  for (int64_t it = threadIdx.x; it < items; it += blockDim.x) {
    const int64_t token = t0 + it / per_token;
    int i = static_cast<int>(it - (token - t0) * per_token);
    const int64_t slot = fused ? load_index(a.loc, a.loc64, token) : 0;
    if (i < q_items) {
      const int head = h0 + i / rotary_units;
      const float* cs = a.cos_sin + load_index(a.positions, a.pos64, token) * a.rotary_dim;
      T* row = static_cast<T*>(a.query) + token * a.q_stride +
               static_cast<int64_t>(head) * a.head_size;
      rotate_unit<T, CacheT, NEOX, VECTOR, P>(row, i % rotary_units, cs, half,
                                              static_cast<CacheT*>(nullptr), 1.f);
    } else if ((i -= q_items) < k_items) {
      const int head = k0 - a.q_heads + i / k_units;
      const int unit = i % k_units;
      const int64_t offset = static_cast<int64_t>(head) * a.head_size;
      T* row = static_cast<T*>(a.key) + token * a.k_stride + offset;
      CacheT* cache_row =
          fused ? static_cast<CacheT*>(a.k_cache) + slot * a.kc_stride + offset : nullptr;
      const float k_inv = fused ? inverse_scale(a.k_scale, offset, a.k_group) : 1.f;
      if (unit < rotary_units) {
        const float* cs = a.cos_sin + load_index(a.positions, a.pos64, token) * a.rotary_dim;
        rotate_unit<T, CacheT, NEOX, VECTOR, P>(row, unit, cs, half, cache_row, k_inv);
      } else {  // unrotated tail of k, into the cache only
        const int e = a.rotary_dim + (unit - rotary_units) * VEC;
        store_cache<T, CacheT, VEC>(cache_row + e, load_vec<T, VEC>(row + e), k_inv);
      }
    } else {
      i -= k_items;
      const int head = v0 - qk + i / v_units;
      const int64_t e = static_cast<int64_t>(head) * a.v_head_size + (i % v_units) * VEC;
      const T* src = static_cast<const T*>(a.value) + token * a.v_stride + e;
      CacheT* dst = static_cast<CacheT*>(a.v_cache) + slot * a.vc_stride + e;
      store_cache<T, CacheT, VEC>(dst, load_vec<T, VEC>(src),
                                  inverse_scale(a.v_scale, e, a.v_group));
    }
  }
}

}  // namespace fuseinfer::rope
