// rope_with_cos_sin_cache (optionally fused with the KV-cache write): checks, launch shape
// from the dispatch table, kernel choice. Schema in fuseinfer/ops/rope.py.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cache_args.h"
#include "launch_policy.h"
#include "launch_rules.h"
#include "rope_kernel.cuh"

namespace fuseinfer::rope {
namespace {

using kvcache::Rows;

struct RopeRule {
  int64_t max_tokens;
  int tokens_per_block;
  int heads_per_block;
  int threads_per_block;
};

DeviceTables<RopeRule>& tables() {
  static DeviceTables<RopeRule> instance;
  return instance;
}

constexpr const char* kOp = "rope_with_cos_sin_cache";

Rows head_rows(const at::Tensor& t, int64_t head_size, int64_t tokens, const char* name) {
  const Rows rows = kvcache::token_rows(t, kOp, name);
  FUSEINFER_CHECK_ARG(rows.count == tokens, kOp, name, "must have ", tokens,
                      " tokens like query, got ", rows.count);
  FUSEINFER_CHECK_ARG(rows.width % head_size == 0 && (t.dim() == 2 || t.size(2) == head_size),
                      kOp, name, "rows of ", rows.width,
                      " elements are not whole heads of head_size ", head_size);
  return rows;
}

template <typename T, typename CacheT>
void launch(const RopeArgs& a, bool neox, bool vector, dim3 grid, int threads, bool pdl,
            cudaStream_t stream) {
  cudaError_t status;
  if (neox) {
    status = vector ? launch_kernel(rope_kernel<T, CacheT, true, true>, grid, dim3(threads), 0,
                                    stream, pdl, a)
                    : launch_kernel(rope_kernel<T, CacheT, true, false>, grid, dim3(threads),
                                    0, stream, pdl, a);
  } else {
    status = vector ? launch_kernel(rope_kernel<T, CacheT, false, true>, grid, dim3(threads),
                                    0, stream, pdl, a)
                    : launch_kernel(rope_kernel<T, CacheT, false, false>, grid, dim3(threads),
                                    0, stream, pdl, a);
  }
  FUSEINFER_CUDA_CHECK(status);
}

void rope_with_cos_sin_cache(const at::Tensor& positions, const at::Tensor& query,
                             const at::Tensor& key, int64_t head_size,
                             const at::Tensor& cos_sin_cache, bool is_neox,
                             const std::optional<at::Tensor>& value,
                             const std::optional<at::Tensor>& k_cache,
                             const std::optional<at::Tensor>& v_cache,
                             const std::optional<at::Tensor>& cache_loc,
                             const std::optional<at::Tensor>& k_scale,
                             const std::optional<at::Tensor>& v_scale,
                             std::optional<bool> enable_pdl) {
  FUSEINFER_CHECK_ARG(query.is_cuda(), kOp, "query", "must be a CUDA tensor");
  const auto dtype = query.scalar_type();
  FUSEINFER_CHECK_ARG(dtype == at::kBFloat16 || dtype == at::kHalf || dtype == at::kFloat, kOp,
                      "query", "must be bfloat16, float16 or float32, got ", dtype);
  FUSEINFER_CHECK_ARG(key.scalar_type() == dtype && key.device() == query.device(), kOp, "key",
                      "must have the dtype and device of query");
  FUSEINFER_CHECK_ARG(head_size > 0, kOp, "head_size", "must be positive, got ", head_size);
  const int64_t tokens = query.dim() >= 1 ? query.size(0) : 0;
  const Rows q = head_rows(query, head_size, tokens, "query");
  const Rows k = head_rows(key, head_size, tokens, "key");
  FUSEINFER_CHECK_ARG(positions.device() == query.device() &&
                          (positions.scalar_type() == at::kInt ||
                           positions.scalar_type() == at::kLong) &&
                          positions.dim() == 1 && positions.size(0) == tokens &&
                          positions.is_contiguous(),
                      kOp, "positions", "must be a contiguous int32 or int64 CUDA tensor of "
                      "shape [", tokens, "]");
  FUSEINFER_CHECK_ARG(cos_sin_cache.device() == query.device() &&
                          cos_sin_cache.scalar_type() == at::kFloat &&
                          cos_sin_cache.dim() == 2 && cos_sin_cache.is_contiguous(),
                      kOp, "cos_sin_cache",
                      "must be a contiguous float32 [max_position, rotary_dim] tensor on ",
                      query.device());
  const int64_t rotary_dim = cos_sin_cache.size(1);
  FUSEINFER_CHECK_ARG(rotary_dim > 0 && rotary_dim % 2 == 0 && rotary_dim <= head_size, kOp,
                      "cos_sin_cache", "rotary_dim ", rotary_dim,
                      " must be even, positive and at most head_size ", head_size);
  const int n_fused = value.has_value() + k_cache.has_value() + v_cache.has_value() +
                      cache_loc.has_value();
  FUSEINFER_CHECK_ARG(n_fused == 0 || n_fused == 4, kOp, "value/k_cache/v_cache/cache_loc",
                      "go together: pass all four or none");
  const bool fused = n_fused == 4;
  FUSEINFER_CHECK_ARG(fused || (!k_scale && !v_scale), kOp, k_scale ? "k_scale" : "v_scale",
                      "is only used with k_cache and v_cache");

  RopeArgs a{};
  Rows v{0, 0, 0}, kc{0, 0, 0}, vc{0, 0, 0};
  if (fused) {
    FUSEINFER_CHECK_ARG(value->scalar_type() == dtype && value->device() == query.device(),
                        kOp, "value", "must have the dtype and device of query");
    v = kvcache::token_rows(*value, kOp, "value");
    FUSEINFER_CHECK_ARG(v.count == tokens && v.width % (k.width / head_size) == 0, kOp,
                        "value", "must have ", tokens, " tokens and one row per key head");
    kc = kvcache::check_cache(*k_cache, k, key, k_scale, kOp, "k_cache", "key", "k_scale");
    vc = kvcache::check_cache(*v_cache, v, *value, v_scale, kOp, "v_cache", "value",
                              "v_scale");
    FUSEINFER_CHECK_ARG(k_cache->scalar_type() == v_cache->scalar_type(), kOp, "v_cache",
                        "must have the dtype of k_cache");
    FUSEINFER_CHECK_ARG(!k_cache->is_same(*v_cache), kOp, "v_cache",
                        "must not be the same tensor as k_cache");
    kvcache::check_loc(*cache_loc, tokens, query, kOp, "cache_loc");
    a.value = value->data_ptr();
    a.v_stride = v.stride;
    a.v_head_size = static_cast<int>(v.width / (k.width / head_size));
    a.k_cache = k_cache->data_ptr();
    a.v_cache = v_cache->data_ptr();
    a.kc_stride = kc.stride;
    a.vc_stride = vc.stride;
    a.loc = cache_loc->data_ptr();
    a.loc64 = cache_loc->scalar_type() == at::kLong;
    a.k_scale = k_scale ? k_scale->data_ptr<float>() : nullptr;
    a.v_scale = v_scale ? v_scale->data_ptr<float>() : nullptr;
    a.k_group = kvcache::scale_group(k_scale, k.width);
    a.v_group = kvcache::scale_group(v_scale, v.width);
    // the kernel takes one scale per head row: a scale group is whole heads
    FUSEINFER_CHECK_ARG(!k_scale || a.k_group % head_size == 0, kOp, "k_scale",
                        "must have one element or one per key head");
    FUSEINFER_CHECK_ARG(!v_scale || a.v_head_size == 0 || a.v_group % a.v_head_size == 0,
                        kOp, "v_scale", "must have one element or one per key head");
  }
  if (tokens == 0 || q.width + k.width == 0) return;

  a.positions = positions.data_ptr();
  a.pos64 = positions.scalar_type() == at::kLong;
  a.query = query.data_ptr();
  a.q_stride = q.stride;
  a.q_heads = static_cast<int>(q.width / head_size);
  a.key = key.data_ptr();
  a.k_stride = k.stride;
  a.k_heads = static_cast<int>(k.width / head_size);
  a.cos_sin = cos_sin_cache.data_ptr<float>();
  a.rotary_dim = static_cast<int>(rotary_dim);
  a.head_size = static_cast<int>(head_size);
  a.tokens = tokens;

  const c10::cuda::CUDAGuard guard(query.device());
  const int device = query.get_device();
  const auto table = tables().get(device);
  const RopeRule* rule = table ? table->pick(tokens) : nullptr;
  a.tokens_per_block = rule ? rule->tokens_per_block : 1;
  a.heads_per_block = rule ? rule->heads_per_block : 0;
  const int threads = rule ? rule->threads_per_block : 256;
  const int all_heads = a.q_heads + a.k_heads + (fused ? a.k_heads : 0);
  const int per_block = a.heads_per_block > 0 ? a.heads_per_block : all_heads;
  const dim3 grid(static_cast<unsigned>((tokens + a.tokens_per_block - 1) / a.tokens_per_block),
                  static_cast<unsigned>((all_heads + per_block - 1) / per_block));

  const bool pdl = resolve_pdl(enable_pdl, !table || table->enable_pdl, device, kOp);

  const int vec = 16 / static_cast<int>(query.element_size());
  const bool vector =
      head_size % vec == 0 && rotary_dim % (is_neox ? 2 * vec : vec) == 0 &&
      q.stride % vec == 0 && k.stride % vec == 0 && aligned16(a.query) && aligned16(a.key) &&
      aligned16(a.cos_sin) &&
      (!fused || (a.v_head_size % vec == 0 && v.stride % vec == 0 && kc.stride % vec == 0 &&
                  vc.stride % vec == 0 && aligned16(a.value) && aligned16(a.k_cache) &&
                  aligned16(a.v_cache)));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  const bool fp8 = fused && k_cache->scalar_type() == at::kFloat8_e4m3fn;
#define FUSEINFER_ROPE(CTYPE)                                                   \
  fp8 ? launch<CTYPE, kvcache::Fp8>(a, is_neox, vector, grid, threads, pdl, stream) \
      : launch<CTYPE, CTYPE>(a, is_neox, vector, grid, threads, pdl, stream)
  if (dtype == at::kBFloat16) {
    FUSEINFER_ROPE(__nv_bfloat16);
  } else if (dtype == at::kHalf) {
    FUSEINFER_ROPE(__half);
  } else {
    FUSEINFER_ROPE(float);
  }
#undef FUSEINFER_ROPE
}

void configure(int64_t device, std::vector<int64_t> max_tokens,
               std::vector<int64_t> tokens_per_block, std::vector<int64_t> heads_per_block,
               std::vector<int64_t> threads, bool enable_pdl) {
  TORCH_CHECK(device >= 0 && device < DeviceTables<RopeRule>::kMaxDevices,
              "fuseinfer: device index out of range");
  const size_t n = max_tokens.size();
  TORCH_CHECK(tokens_per_block.size() == n && heads_per_block.size() == n &&
                  threads.size() == n,
              "fuseinfer: rope rules length mismatch");
  auto table = std::make_shared<RuleTable<RopeRule>>();
  table->enable_pdl = enable_pdl;
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(threads[i] >= 32 && threads[i] <= 1024 && threads[i] % 32 == 0 &&
                    tokens_per_block[i] >= 1 && heads_per_block[i] >= 0,
                "fuseinfer: bad rope launch rule");
    table->rules.push_back({max_tokens[i], static_cast<int>(tokens_per_block[i]),
                            static_cast<int>(heads_per_block[i]),
                            static_cast<int>(threads[i])});
  }
  tables().set(static_cast<int>(device), std::move(table));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fuseinfer, m) {
  m.def("_rope_configure(int device, int[] max_tokens, int[] tokens_per_block, "
        "int[] heads_per_block, int[] threads_per_block, bool enable_pdl) -> ()");
  m.impl("_rope_configure", &configure);
}

TORCH_LIBRARY_IMPL(fuseinfer, CUDA, m) {
  m.impl("rope_with_cos_sin_cache", &rope_with_cos_sin_cache);
}

}  // namespace fuseinfer::rope
