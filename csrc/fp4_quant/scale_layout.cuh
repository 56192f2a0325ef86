// Where a scale row comes from and where a scale goes: the expert lookup (offsets in shared
// memory: a linear scan for a few experts, a binary search for many) and the
// 128x4 swizzled layout the Blackwell block-scaled GEMMs read.
#pragma once

#include <cstdint>

#include "fp4_quant_args.h"

namespace fuseinfer::fp4_quant {

enum class ExpertMode : int { kSingle = 0, kFew = 1, kShared = 2 };

// offset = mTile * (kTiles * 512) + kTile * 512 + (m % 32) * 16 + ((m % 128) / 32) * 4 + k % 4
// Split into its row terms (once per row) and column terms (32-bit: the launcher bounds K).
__device__ __forceinline__ int64_t swizzled_row_offset(int64_t m, uint32_t k_tiles) {
  return (m >> 7) * (static_cast<int64_t>(k_tiles) * 512) + (m & 31) * 16 +
         ((m & 127) >> 5) * 4;
}

__device__ __forceinline__ uint32_t swizzled_col_offset(uint32_t k) {
  return (k >> 2) * 512 + (k & 3);
}

// First scale row of expert e in the swizzled layout: each expert's block starts on a
// 128-row tile, at (offset + 127 e) rounded down to 128 (no prefix sum over the experts
// needed; the blocks never overlap and the last ends at (M + 127 E) / 128 * 128).
__device__ __forceinline__ int64_t expert_scale_start(int64_t offset, int e) {
  return (offset + 127 * static_cast<int64_t>(e)) / 128 * 128;
}

// The row of input a scale row r holds, -1 for a padding row, and its expert.
struct RowSource {
  int64_t row;
  int expert;
};

__device__ __forceinline__ int64_t group_start(int64_t offset, int e, bool swizzled) {
  return swizzled ? expert_scale_start(offset, e) : offset;
}

__device__ __forceinline__ RowSource source_of(int64_t r, int64_t first, int64_t next, int e,
                                               bool swizzled) {
  if (!swizzled) return {r, e};
  const int64_t local = r - expert_scale_start(first, e);
  return {local < next - first ? first + local : -1, e};
}

// Few experts (the offsets in shared memory, as for many): the last e with start(e) <= r,
// found by an unrolled scan (offsets past `experts` are never read).
__device__ __forceinline__ RowSource row_in_few(const int32_t* offsets, int experts, int64_t r,
                                                bool swizzled) {
  int64_t first = offsets[0], next = offsets[1];
  int found = 0;
#pragma unroll
  for (int e = 1; e < kFewExperts; ++e) {
    if (e < experts && group_start(offsets[e], e, swizzled) <= r) {
      found = e;
      first = offsets[e];
      next = offsets[e + 1];
    }
  }
  return source_of(r, first, next, found, swizzled);
}

// Many experts: the offsets in shared memory, a binary search (start is non-decreasing).
__device__ __forceinline__ RowSource row_in_shared(const int32_t* offsets, int experts,
                                                   int64_t r, bool swizzled) {
  int lo = 0, hi = experts - 1;  // start(lo) <= r throughout
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (group_start(offsets[mid], mid, swizzled) <= r) lo = mid; else hi = mid - 1;
  }
  return source_of(r, offsets[lo], offsets[lo + 1], lo, swizzled);
}

}  // namespace fuseinfer::fp4_quant
