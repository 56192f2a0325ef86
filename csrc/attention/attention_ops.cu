// _attention_decode_mma: the CUDA decode kernel (decode_mma.cuh) behind
// paged_decode_attention when the dispatch table picks it. The public op has checked its
// arguments (ops/attention/checks.py); this checks what the kernel itself assumes.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <vector>

#include "decode_mma.cuh"
#include "launch_policy.h"
#include "pdl.cuh"
#include "torch_checks.h"

namespace fuseinfer::attention {
namespace {

constexpr const char* kOp = "_attention_decode_mma";

constexpr size_t kMaxSmem = 227 * 1024;  // sm_90's opt-in limit per block

template <typename QT, typename KvT, int HEAD_DIM, int WARPS, int STAGES>
void launch(const DecodeMmaArgs& a, dim3 grid, bool pdl, cudaStream_t stream) {
  constexpr size_t smem = decode_mma_smem_bytes<KvT, HEAD_DIM, WARPS, STAGES>();
  if constexpr (smem > kMaxSmem) {  // not built; cuda_decode_fits sends these to Triton
    TORCH_CHECK(false, kOp, ": ", WARPS, " warps x ", STAGES, " stages at head_dim ",
                HEAD_DIM, " need ", smem, " bytes of shared memory, more than ", kMaxSmem);
    return;
  } else {
    auto* kernel = decode_mma_kernel<QT, KvT, HEAD_DIM, WARPS, STAGES>;
    // once per device (a benign race: the same value); for every size, since the kernel's
    // few static bytes count against the 48 KB a launch gets without it
    static bool raised[64] = {};
    int device = 0;
    FUSEINFER_CUDA_CHECK(cudaGetDevice(&device));
    if (device >= 64 || !raised[device]) {
      FUSEINFER_CUDA_CHECK(cudaFuncSetAttribute(
          kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
      if (device < 64) raised[device] = true;
    }
    FUSEINFER_CUDA_CHECK(launch_kernel(kernel, grid, dim3(WARPS * 32), smem, stream, pdl, a));
  }
}

template <typename QT, typename KvT, int HEAD_DIM, int WARPS>
void launch_stages(const DecodeMmaArgs& a, dim3 grid, int stages, bool pdl,
                   cudaStream_t stream) {
  if (stages == 2) {
    launch<QT, KvT, HEAD_DIM, WARPS, 2>(a, grid, pdl, stream);
  } else if (stages == 3) {
    launch<QT, KvT, HEAD_DIM, WARPS, 3>(a, grid, pdl, stream);
  } else {
    launch<QT, KvT, HEAD_DIM, WARPS, 4>(a, grid, pdl, stream);
  }
}

template <typename QT, typename KvT, int HEAD_DIM>
void launch_warps(const DecodeMmaArgs& a, dim3 grid, int warps, int stages, bool pdl,
                  cudaStream_t stream) {
  if (warps == 8) {
    launch_stages<QT, KvT, HEAD_DIM, 8>(a, grid, stages, pdl, stream);
  } else {
    launch_stages<QT, KvT, HEAD_DIM, 4>(a, grid, stages, pdl, stream);
  }
}

template <typename QT, typename KvT>
void launch_dims(const DecodeMmaArgs& a, dim3 grid, int head_dim, int warps, int stages,
                 bool pdl, cudaStream_t stream) {
  if (head_dim == 64) {
    launch_warps<QT, KvT, 64>(a, grid, warps, stages, pdl, stream);
  } else {
    launch_warps<QT, KvT, 128>(a, grid, warps, stages, pdl, stream);
  }
}

const void* optional_ptr(const std::optional<at::Tensor>& t) {
  return t ? t->data_ptr() : nullptr;
}

bool aligned16(int64_t elements, int64_t item) { return (elements * item) % 16 == 0; }

void decode_mma(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                const at::Tensor& page_table, const at::Tensor& kv_lens, const at::Tensor& out,
                const std::optional<at::Tensor>& lse, const at::Tensor& partial_out,
                const at::Tensor& partial_lse, const std::optional<at::Tensor>& sinks,
                const std::optional<at::Tensor>& k_scale,
                const std::optional<at::Tensor>& v_scale, double sm_scale, double logit_cap,
                int64_t window_left, int64_t page_size, std::vector<int64_t> cache_strides,
                int64_t block_n, int64_t min_chunk, int64_t num_warps, int64_t num_stages,
                bool enable_pdl,
                const std::optional<at::Tensor>& merge_counters) {
  FUSEINFER_CHECK_ARG(q.is_cuda() && q.dim() == 3 && q.stride(2) == 1, kOp, "q",
                      "must be a CUDA [batch, q_heads, head_dim] tensor with unit last stride");
  const auto qtype = q.scalar_type();
  FUSEINFER_CHECK_ARG(qtype == at::kBFloat16 || qtype == at::kHalf, kOp, "q",
                      "must be bfloat16 or float16, got ", qtype);
  const auto ctype = k_cache.scalar_type();
  const bool fp8 = ctype == at::kFloat8_e4m3fn;
  FUSEINFER_CHECK_ARG(fp8 || ctype == qtype, kOp, "k_cache",
                      "must be float8_e4m3fn or q's dtype, got ", ctype);
  FUSEINFER_CHECK_ARG(v_cache.scalar_type() == ctype, kOp, "v_cache",
                      "must have k_cache's dtype");
  const int64_t batch = q.size(0), q_heads = q.size(1), head_dim = q.size(2);
  FUSEINFER_CHECK_ARG(head_dim == 64 || head_dim == 128, kOp, "q",
                      "head_dim must be 64 or 128, got ", head_dim);
  FUSEINFER_CHECK_ARG(cache_strides.size() == 4, kOp, "cache_strides",
                      "must be [k_slot, k_head, v_slot, v_head]");
  const int64_t kv_heads = k_cache.size(-2);
  FUSEINFER_CHECK_ARG(kv_heads > 0 && q_heads % kv_heads == 0 && q_heads / kv_heads <= 16,
                      kOp, "q", "needs a KV group of at most 16 q heads, got ", q_heads,
                      " q heads over ", kv_heads, " KV heads");
  FUSEINFER_CHECK_ARG(num_warps == 4 || num_warps == 8, kOp, "num_warps",
                      "must be 4 or 8, got ", num_warps);
  FUSEINFER_CHECK_ARG(num_stages >= 2 && num_stages <= 4, kOp, "num_stages",
                      "must be 2, 3 or 4, got ", num_stages);
  FUSEINFER_CHECK_ARG(block_n >= 16 && block_n % 16 == 0, kOp, "block_n",
                      "must be a multiple of 16, got ", block_n);
  // 16-byte vector reads of q rows and key rows (8 bytes for an FP8 value run of 8)
  const int64_t citem = k_cache.element_size();
  bool ok = aligned16(q.stride(0), 2) && aligned16(q.stride(1), 2);
  for (const int64_t s : cache_strides) ok = ok && aligned16(s, citem);
  ok = ok && reinterpret_cast<uintptr_t>(q.data_ptr()) % 16 == 0 &&
       reinterpret_cast<uintptr_t>(k_cache.data_ptr()) % 16 == 0 &&
       reinterpret_cast<uintptr_t>(v_cache.data_ptr()) % 16 == 0;
  FUSEINFER_CHECK_ARG(ok, kOp, "q", "and the caches need 16-byte aligned rows");
  if (batch == 0) return;

  DecodeMmaArgs a{};
  a.q = q.data_ptr();
  a.k_cache = k_cache.data_ptr();
  a.v_cache = v_cache.data_ptr();
  a.out = out.data_ptr();
  a.lse = lse ? lse->data_ptr<float>() : nullptr;
  a.part_out = partial_out.data_ptr<float>();
  a.part_lse = partial_lse.data_ptr<float>();
  a.sinks = optional_ptr(sinks);
  a.sinks_bf16 = sinks && sinks->scalar_type() == at::kBFloat16;
  a.page_table = page_table.data_ptr<int32_t>();
  a.kv_lens = kv_lens.data_ptr<int32_t>();
  a.k_scale = k_scale ? k_scale->data_ptr<float>() : nullptr;
  a.v_scale = v_scale ? v_scale->data_ptr<float>() : nullptr;
  a.k_scale_stride = k_scale && k_scale->numel() > 1 ? 1 : 0;
  a.v_scale_stride = v_scale && v_scale->numel() > 1 ? 1 : 0;
  a.sm_scale = static_cast<float>(sm_scale);
  a.logit_cap = static_cast<float>(logit_cap);
  a.window_left = static_cast<int>(std::min<int64_t>(window_left, INT_MAX));
  a.q_stride_req = q.stride(0);
  a.q_stride_head = q.stride(1);
  a.k_stride_slot = cache_strides[0];
  a.k_stride_head = cache_strides[1];
  a.v_stride_slot = cache_strides[2];
  a.v_stride_head = cache_strides[3];
  a.o_stride_req = out.stride(0);
  a.o_stride_head = out.stride(1);
  a.lse_stride_req = lse ? lse->stride(0) : 0;
  a.page_stride_row = page_table.stride(0);
  a.part_stride_req = partial_lse.stride(0);
  a.part_stride_head = partial_lse.stride(1);
  a.part_stride_split = partial_lse.stride(2);
  a.group = static_cast<int>(q_heads / kv_heads);
  a.page_size = static_cast<int>(page_size);
  a.page_shift = (page_size & (page_size - 1)) == 0 ? __builtin_ctzll(page_size) : -1;
  a.max_splits = static_cast<int>(partial_lse.size(2));
  a.block_n = static_cast<int>(block_n);
  a.min_chunk = static_cast<int>(min_chunk);
  if (merge_counters) {
    FUSEINFER_CHECK_ARG(merge_counters->scalar_type() == at::kInt && merge_counters->dim() == 2 &&
                            merge_counters->size(0) >= batch &&
                            merge_counters->size(1) >= kv_heads &&
                            merge_counters->stride(1) == 1,
                        kOp, "merge_counters", "must be int32 [>= batch, >= kv_heads] rows");
    FUSEINFER_CHECK_ARG(partial_lse.size(2) <= kMaxMergedPieces, kOp, "partial_lse",
                        "allows at most ", kMaxMergedPieces, " splits with merge_counters, got ",
                        partial_lse.size(2));
    a.merge_counters = merge_counters->data_ptr<int32_t>();
    a.counter_stride_req = merge_counters->stride(0);
  }

  const c10::cuda::CUDAGuard guard(q.device());
  const int device = q.get_device();
  const bool pdl = resolve_pdl(enable_pdl, true, device, kOp);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  const dim3 grid(static_cast<unsigned>(batch), static_cast<unsigned>(kv_heads),
                  static_cast<unsigned>(a.max_splits));
  const int warps = static_cast<int>(num_warps);
  const int stages = static_cast<int>(num_stages);
  if (qtype == at::kBFloat16) {
    fp8 ? launch_dims<__nv_bfloat16, uint8_t>(a, grid, head_dim, warps, stages, pdl, stream)
        : launch_dims<__nv_bfloat16, __nv_bfloat16>(a, grid, head_dim, warps, stages, pdl,
                                                     stream);
  } else {
    fp8 ? launch_dims<__half, uint8_t>(a, grid, head_dim, warps, stages, pdl, stream)
        : launch_dims<__half, __half>(a, grid, head_dim, warps, stages, pdl, stream);
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fuseinfer, m) {
  m.def("_attention_decode_mma(Tensor q, Tensor k_cache, Tensor v_cache, Tensor page_table, "
        "Tensor kv_lens, Tensor(a!) out, Tensor(b!)? lse, Tensor(c!) partial_out, "
        "Tensor(d!) partial_lse, Tensor? sinks, Tensor? k_scale, Tensor? v_scale, "
        "float sm_scale, float logit_cap, int window_left, int page_size, int[] cache_strides, "
        "int block_n, int min_chunk, int num_warps, int num_stages, bool enable_pdl, "
        "Tensor(e!)? merge_counters=None) -> ()");
}

TORCH_LIBRARY_IMPL(fuseinfer, CUDA, m) { m.impl("_attention_decode_mma", &decode_mma); }

}  // namespace fuseinfer::attention
