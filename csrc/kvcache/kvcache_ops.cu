// store_kv_cache: k and v rows into their caches at slots `loc`, one kernel for both.
// Each thread moves one 16-byte vector of a token's k or v row (schema in
// fuseinfer/ops/kvcache.py; layouts and checks in cache_args.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cache_args.h"
#include "cache_store.cuh"
#include "launch_policy.h"
#include "launch_rules.h"
#include "pdl.cuh"

namespace fuseinfer::kvcache {
namespace {

struct StoreRule {
  int64_t max_tokens;
  int threads_per_block;
};

DeviceTables<StoreRule>& tables() {
  static DeviceTables<StoreRule> instance;
  return instance;
}

struct StoreArgs {
  const void* k;
  const void* v;
  int64_t k_stride, v_stride;    // elements between token rows
  void* k_cache;
  void* v_cache;
  int64_t kc_stride, vc_stride;  // elements between slots
  const void* loc;
  bool loc64;
  const float* k_scale;
  const float* v_scale;
  int k_group, v_group;          // row elements per scale element
  int64_t tokens;
  int k_units, v_units;          // N-element units per token row
};

template <typename T, typename CacheT, int N>
__global__ void store_kv_kernel(StoreArgs a) {
  const int64_t per_token = a.k_units + a.v_units;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  pdl_wait();
  if (item >= a.tokens * per_token) {
    pdl_launch_dependents();
    return;
  }
  const int64_t token = item / per_token;
  int unit = static_cast<int>(item - token * per_token);
  const bool is_k = unit < a.k_units;
  if (!is_k) unit -= a.k_units;
  const int64_t slot = load_index(a.loc, a.loc64, token);
  const T* src = static_cast<const T*>(is_k ? a.k : a.v) +
                 token * (is_k ? a.k_stride : a.v_stride) + static_cast<int64_t>(unit) * N;
  const Vec<T, N> values = load_vec<T, N>(src);
  const float inv_scale = inverse_scale(is_k ? a.k_scale : a.v_scale,
                                        static_cast<int64_t>(unit) * N,
                                        is_k ? a.k_group : a.v_group);
  pdl_launch_dependents();
  CacheT* dst = static_cast<CacheT*>(is_k ? a.k_cache : a.v_cache) +
                slot * (is_k ? a.kc_stride : a.vc_stride) + static_cast<int64_t>(unit) * N;
  store_cache<T, CacheT, N>(dst, values, inv_scale);
}

template <typename T, typename CacheT>
void launch(StoreArgs a, int64_t k_width, int64_t v_width, bool vector, int threads, bool pdl,
            cudaStream_t stream) {
  constexpr int VEC = kVec16<T>;
  const int n = vector ? VEC : 1;
  a.k_units = static_cast<int>(k_width / n);
  a.v_units = static_cast<int>(v_width / n);
  const int64_t items = a.tokens * (a.k_units + a.v_units);
  const dim3 grid(static_cast<unsigned>((items + threads - 1) / threads));
  const cudaError_t status =
      vector ? launch_kernel(store_kv_kernel<T, CacheT, VEC>, grid, dim3(threads), 0, stream,
                             pdl, a)
             : launch_kernel(store_kv_kernel<T, CacheT, 1>, grid, dim3(threads), 0, stream,
                             pdl, a);
  FUSEINFER_CUDA_CHECK(status);
}

void store_kv_cache(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& loc,
                    const at::Tensor& k, const at::Tensor& v,
                    const std::optional<at::Tensor>& k_scale,
                    const std::optional<at::Tensor>& v_scale, std::optional<bool> enable_pdl) {
  const char* op = "store_kv_cache";
  FUSEINFER_CHECK_ARG(k.is_cuda(), op, "k", "must be a CUDA tensor, got ", k.device());
  const auto dtype = k.scalar_type();
  FUSEINFER_CHECK_ARG(dtype == at::kBFloat16 || dtype == at::kHalf || dtype == at::kFloat, op,
                      "k", "must be bfloat16, float16 or float32, got ", dtype);
  FUSEINFER_CHECK_ARG(v.device() == k.device() && v.scalar_type() == dtype, op, "v",
                      "must have the device and dtype of k");
  const Rows k_rows = token_rows(k, op, "k");
  const Rows v_rows = token_rows(v, op, "v");
  FUSEINFER_CHECK_ARG(v_rows.count == k_rows.count, op, "v", "must have ", k_rows.count,
                      " tokens like k, got ", v_rows.count);
  const Rows kc = check_cache(k_cache, k_rows, k, k_scale, op, "k_cache", "k", "k_scale");
  const Rows vc = check_cache(v_cache, v_rows, v, v_scale, op, "v_cache", "v", "v_scale");
  FUSEINFER_CHECK_ARG(k_cache.scalar_type() == v_cache.scalar_type(), op, "v_cache",
                      "must have the dtype of k_cache");
  FUSEINFER_CHECK_ARG(!k_cache.is_same(v_cache), op, "v_cache",
                      "must not be the same tensor as k_cache");
  check_loc(loc, k_rows.count, k, op, "loc");
  if (k_rows.count == 0 || k_rows.width + v_rows.width == 0) return;

  const c10::cuda::CUDAGuard guard(k.device());
  const int device = k.get_device();
  const auto table = tables().get(device);
  const StoreRule* rule = table ? table->pick(k_rows.count) : nullptr;
  const int threads = rule ? rule->threads_per_block : 256;
  const bool pdl = resolve_pdl(enable_pdl, !table || table->enable_pdl, device, op);

  StoreArgs a{};
  a.k = k.data_ptr();
  a.v = v.data_ptr();
  a.k_stride = k_rows.stride;
  a.v_stride = v_rows.stride;
  a.k_cache = k_cache.data_ptr();
  a.v_cache = v_cache.data_ptr();
  a.kc_stride = kc.stride;
  a.vc_stride = vc.stride;
  a.loc = loc.data_ptr();
  a.loc64 = loc.scalar_type() == at::kLong;
  a.k_scale = k_scale ? k_scale->data_ptr<float>() : nullptr;
  a.v_scale = v_scale ? v_scale->data_ptr<float>() : nullptr;
  a.k_group = scale_group(k_scale, k_rows.width);
  a.v_group = scale_group(v_scale, v_rows.width);
  a.tokens = k_rows.count;

  const int vec = 16 / static_cast<int>(k.element_size());
  // a vector never straddles two scale groups
  const bool vector = k_rows.width % vec == 0 && v_rows.width % vec == 0 &&
                      a.k_group % vec == 0 && a.v_group % vec == 0 &&
                      k_rows.stride % vec == 0 && v_rows.stride % vec == 0 &&
                      kc.stride % vec == 0 && vc.stride % vec == 0 && aligned16(a.k) &&
                      aligned16(a.v) && aligned16(a.k_cache) && aligned16(a.v_cache);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  const bool fp8 = k_cache.scalar_type() == at::kFloat8_e4m3fn;
#define FUSEINFER_STORE(CTYPE)                                                              \
  fp8 ? launch<CTYPE, Fp8>(a, k_rows.width, v_rows.width, vector, threads, pdl, stream)     \
      : launch<CTYPE, CTYPE>(a, k_rows.width, v_rows.width, vector, threads, pdl, stream)
  if (dtype == at::kBFloat16) {
    FUSEINFER_STORE(__nv_bfloat16);
  } else if (dtype == at::kHalf) {
    FUSEINFER_STORE(__half);
  } else {
    FUSEINFER_STORE(float);
  }
#undef FUSEINFER_STORE
}

void configure(int64_t device, std::vector<int64_t> max_tokens, std::vector<int64_t> threads,
               bool enable_pdl) {
  TORCH_CHECK(device >= 0 && device < DeviceTables<StoreRule>::kMaxDevices,
              "fuseinfer: device index out of range");
  TORCH_CHECK(max_tokens.size() == threads.size(), "fuseinfer: kvcache rules length mismatch");
  auto table = std::make_shared<RuleTable<StoreRule>>();
  table->enable_pdl = enable_pdl;
  for (size_t i = 0; i < threads.size(); ++i) {
    TORCH_CHECK(threads[i] >= 32 && threads[i] <= 1024 && threads[i] % 32 == 0,
                "fuseinfer: kvcache threads_per_block must be a multiple of 32 up to 1024");
    table->rules.push_back({max_tokens[i], static_cast<int>(threads[i])});
  }
  tables().set(static_cast<int>(device), std::move(table));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fuseinfer, m) {
  m.def("_kvcache_configure(int device, int[] max_tokens, int[] threads_per_block, "
        "bool enable_pdl) -> ()");
  m.impl("_kvcache_configure", &configure);
}

TORCH_LIBRARY_IMPL(fuseinfer, CUDA, m) { m.impl("store_kv_cache", &store_kv_cache); }

}  // namespace fuseinfer::kvcache
