// Host-side checks shared by store_kv_cache and the fused RoPE + KV write: token rows,
// cache slot rows (flat or paged) and FP8 scales. Errors name the op and the argument.
#pragma once

#include <ATen/ATen.h>

#include "torch_checks.h"

namespace fuseinfer::kvcache {

struct Rows {
  int64_t count;   // tokens or slots
  int64_t width;   // elements per row
  int64_t stride;  // elements between rows
};

// Dims `first`.. laid out contiguously (size-1 dims may have any stride).
inline bool contiguous_tail(const at::Tensor& t, int64_t first) {
  int64_t expected = 1;
  for (int64_t d = t.dim() - 1; d >= first; --d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

// [tokens, heads, dim] or [tokens, width], each token's row contiguous.
inline Rows token_rows(const at::Tensor& t, const char* op, const char* name) {
  FUSEINFER_CHECK_ARG(t.dim() == 2 || t.dim() == 3, op, name,
                      "must be [tokens, heads, dim] or [tokens, width], got ", t.sizes());
  FUSEINFER_CHECK_ARG(contiguous_tail(t, 1), op, name,
                      "must have each token's row contiguous, got strides ", t.strides());
  const int64_t width = t.size(1) * (t.dim() == 3 ? t.size(2) : 1);
  const int64_t stride = t.size(0) > 1 ? t.stride(0) : width;
  FUSEINFER_CHECK_ARG(stride >= width, op, name, "rows must not overlap (row stride ", stride,
                      " < width ", width, ")");
  return {t.size(0), width, stride};
}

// [slots, heads, dim], [slots, width] or paged [pages, page_size, heads, dim].
inline Rows slot_rows(const at::Tensor& c, const char* op, const char* name) {
  FUSEINFER_CHECK_ARG(c.dim() >= 2 && c.dim() <= 4, op, name,
                      "must be [slots, heads, dim] or [pages, page_size, heads, dim], got ",
                      c.sizes());
  const int64_t slot_dim = c.dim() == 4 ? 1 : 0;
  FUSEINFER_CHECK_ARG(contiguous_tail(c, slot_dim + 1), op, name,
                      "must have each slot's row contiguous, got strides ", c.strides());
  int64_t width = 1;
  for (int64_t d = slot_dim + 1; d < c.dim(); ++d) width *= c.size(d);
  int64_t stride = c.size(slot_dim) > 1 ? c.stride(slot_dim) : width;
  if (c.dim() == 4 && c.size(1) == 1) stride = c.stride(0);
  if (c.dim() == 4 && c.size(0) > 1 && c.size(1) > 1) {
    FUSEINFER_CHECK_ARG(c.stride(0) == c.size(1) * stride, op, name,
                        "pages must be evenly spaced slots (stride(0) == page_size * "
                        "stride(1)), got strides ", c.strides());
  }
  const int64_t slots = c.size(0) * (c.dim() == 4 ? c.size(1) : 1);
  FUSEINFER_CHECK_ARG(slots <= 1 || stride >= width, op, name, "slots must not overlap");
  return {slots, width, stride};
}

// An FP8 cache's scale: float32, one element or one per equal group of a row's `width`
// elements (one per KV head): element j of a row is scaled by scale[j / (width / numel)].
inline void check_scale(const std::optional<at::Tensor>& scale, const at::Tensor& cache,
                        int64_t width, const char* op, const char* name) {
  if (!scale.has_value()) return;
  FUSEINFER_CHECK_ARG(cache.scalar_type() == at::kFloat8_e4m3fn, op, name,
                      "is only used with a float8_e4m3fn cache");
  FUSEINFER_CHECK_ARG(scale->scalar_type() == at::kFloat &&
                          (scale->dim() <= 1 || scale->numel() == 1) &&
                          scale->numel() >= 1 && width % scale->numel() == 0 &&
                          scale->is_contiguous(),
                      op, name, "must be a contiguous float32 tensor of one element or one "
                      "per KV head (a divisor of the row's ", width, " elements), got ",
                      scale->sizes());
  FUSEINFER_CHECK_ARG(scale->device() == cache.device(), op, name, "must be on ",
                      cache.device(), " like the cache");
}

// One cache (k or v) against its source rows; returns the cache's slot rows.
inline Rows check_cache(const at::Tensor& cache, const Rows& src, const at::Tensor& src_t,
                        const std::optional<at::Tensor>& scale, const char* op,
                        const char* name, const char* src_name, const char* scale_name) {
  FUSEINFER_CHECK_ARG(cache.device() == src_t.device(), op, name, "must be on ",
                      src_t.device(), " like ", src_name);
  FUSEINFER_CHECK_ARG(cache.scalar_type() == src_t.scalar_type() ||
                          cache.scalar_type() == at::kFloat8_e4m3fn,
                      op, name, "must have dtype ", src_t.scalar_type(),
                      " or float8_e4m3fn, got ", cache.scalar_type());
  const Rows slots = slot_rows(cache, op, name);
  FUSEINFER_CHECK_ARG(slots.width == src.width, op, name, "rows hold ", slots.width,
                      " elements but ", src_name, " has ", src.width, " per token");
  check_scale(scale, cache, slots.width, op, scale_name);
  return slots;
}

// Row elements per scale element (the whole row for one element or none).
inline int scale_group(const std::optional<at::Tensor>& scale, int64_t width) {
  return static_cast<int>(scale ? width / scale->numel() : width);
}

inline void check_loc(const at::Tensor& loc, int64_t tokens, const at::Tensor& like,
                      const char* op, const char* name) {
  FUSEINFER_CHECK_ARG(loc.device() == like.device(), op, name, "must be on ", like.device());
  FUSEINFER_CHECK_ARG((loc.scalar_type() == at::kInt || loc.scalar_type() == at::kLong) &&
                          loc.dim() == 1 && loc.size(0) == tokens && loc.is_contiguous(),
                      op, name, "must be a contiguous int32 or int64 tensor of shape [",
                      tokens, "]");
}

}  // namespace fuseinfer::kvcache
