// The CUDA decode kernel's arguments (decode_mma.cuh; filled by attention_ops.cu).
#pragma once

#include <cstdint>

namespace fuseinfer::attention {

struct DecodeMmaArgs {
  const void* q;
  const void* k_cache;
  const void* v_cache;
  void* out;
  float* lse;        // nullptr: not written
  float* part_out;   // [batch, q_heads, max_splits, head_dim]
  float* part_lse;   // [batch, q_heads, max_splits], base 2
  const void* sinks; // nullptr: none; float32 or bfloat16 per q head
  bool sinks_bf16;
  const int32_t* page_table;
  const int32_t* kv_lens;
  const float* k_scale;  // nullptr: unscaled cache
  const float* v_scale;
  int64_t k_scale_stride, v_scale_stride;  // 0: one scale for every KV head
  float sm_scale, logit_cap;  // logit_cap 0: none
  int window_left;            // < 0: no window
  int64_t q_stride_req, q_stride_head;
  int64_t k_stride_slot, k_stride_head, v_stride_slot, v_stride_head;
  int64_t o_stride_req, o_stride_head, lse_stride_req;
  int64_t page_stride_row;
  int64_t part_stride_req, part_stride_head, part_stride_split;
  int group, page_size, max_splits, block_n, min_chunk;
  int page_shift;  // log2(page_size) when a power of two, else -1
  // [>= batch, q_heads] int32, zero, left at zero: given, the last piece of a (request, KV
  // head) to finish merges the pieces (no merge kernel); nullptr: the merge kernel follows
  int32_t* merge_counters;
  int64_t counter_stride_req;
};

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

}  // namespace fuseinfer::attention
