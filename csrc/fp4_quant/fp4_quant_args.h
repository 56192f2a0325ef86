// The FP4/MXFP8 quantizers' host entry point and launch table (csrc/fp4_quant): one
// kernel template over the three formats, shared by nvfp4_quantize, mxfp4_quantize and
// mxfp8_quantize (schemas in fuseinfer/ops/fp4_quant/).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "launch_rules.h"

namespace fuseinfer::fp4_quant {

// kNvfp4: E2M1 values, one E4M3 scale per 16 (times a float32 global scale);
// kMxfp4: E2M1 values, one E8M0 scale per 32; kMxfp8: E4M3 values, one E8M0 scale per 32.
enum class Format : int { kNvfp4 = 0, kMxfp4 = 1, kMxfp8 = 2 };
enum class InputType : int { kBFloat16 = 0, kHalf = 1 };

struct QuantArgs {
  const void* input;
  int64_t input_stride;  // elements between rows
  uint8_t* q;
  int64_t q_stride;  // bytes between rows
  uint8_t* scales;   // E4M3 or E8M0 bytes
  int64_t scale_stride;          // bytes between scale rows (linear layout)
  const float* global_scale;     // nvfp4: [experts]; else null
  const int32_t* expert_offsets;  // [experts + 1] row offsets, or null (one group of rows)
  int64_t rows;        // M: rows of input and q
  int64_t in_cols;     // K: elements read per row
  int64_t out_cols;    // N >= K: elements written per row (mxfp8 pads K..N with zeros)
  int64_t scale_rows;  // rows of scales the kernel writes: M, or the padded rows (swizzled)
  int64_t scale_cols;  // N / block
  int64_t scale_cols_padded;  // swizzled: scale_cols rounded up to 4, else scale_cols
  int experts;                // 1 without expert_offsets
  bool swizzled;
};

// Launch shape by token count, pushed from the dispatch table (ops/fp4_quant/dispatch.py).
struct LaunchRule {
  int64_t max_tokens;  // -1: unbounded
  int threads_per_block;
  int blocks_per_sm;
};

using LaunchTable = RuleTable<LaunchRule>;

inline DeviceTables<LaunchRule>& tables() {
  static DeviceTables<LaunchRule> instance;
  return instance;
}

// The most experts whose row is found by a linear scan of the offsets (in shared memory);
// more use a binary search, at most kMaxExperts.
constexpr int kFewExperts = 8;

// Vectors (8 elements, one 16-byte load) a thread handles per unit of the kernel's loop,
// all loaded before any is converted; the launcher sizes blocks by it.
constexpr int kUnroll = 4;

// The most elements a row may have (the kernel does column math in 32 bits).
constexpr int64_t kMaxCols = int64_t{1} << 28;
constexpr int kMaxExperts = 4096;

cudaError_t launch_quantize(const QuantArgs& args, Format format, InputType type,
                            int threads_per_block, int blocks_per_sm, int sm_count, bool pdl,
                            cudaStream_t stream);

}  // namespace fuseinfer::fp4_quant
