// Torch entry points of the FP8 blockwise grouped GEMM configurations. The public op
// (fuseinfer.ops.fp8_blockwise_grouped_mm) checks its arguments, picks a configuration from
// the dispatch table and calls _fp8_blockwise_grouped_mm_cutlass with it; the checks here
// keep a direct call from crashing.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "device_info.h"
#include "fp8_grouped_args.h"
#include "torch_checks.h"

namespace fuseinfer::moe {
namespace {

constexpr const char* kOp = "_fp8_blockwise_grouped_mm_cutlass";

void check_args(const at::Tensor& out, const at::Tensor& a, const at::Tensor& a_scales,
                const at::Tensor& b, const at::Tensor& b_scales, const at::Tensor& offsets) {
  FUSEINFER_CHECK_ARG(a.dim() == 2 && a.scalar_type() == at::kFloat8_e4m3fn && a.is_contiguous(),
                      kOp, "a", "must be contiguous float8_e4m3fn [rows, k]");
  FUSEINFER_CHECK_ARG(b.dim() == 3 && b.scalar_type() == at::kFloat8_e4m3fn && b.is_contiguous(),
                      kOp, "b", "must be contiguous float8_e4m3fn [experts, n, k]");
  const int64_t rows = a.size(0), k = a.size(1), experts = b.size(0), n = b.size(1);
  FUSEINFER_CHECK_ARG(b.size(2) == k && k % 128 == 0 && n % 8 == 0, kOp, "b",
                      "must have k (a multiple of 128) columns like a, and n a multiple of 8");
  FUSEINFER_CHECK_ARG(a_scales.scalar_type() == at::kFloat && a_scales.is_contiguous() &&
                          a_scales.dim() == 2 && a_scales.size(0) == rows &&
                          a_scales.size(1) == k / 128,
                      kOp, "a_scales", "must be contiguous float32 [rows, k / 128] (K-major)");
  FUSEINFER_CHECK_ARG(b_scales.scalar_type() == at::kFloat && b_scales.is_contiguous() &&
                          b_scales.dim() == 3 && b_scales.size(0) == experts &&
                          b_scales.size(1) == (n + 127) / 128 && b_scales.size(2) == k / 128,
                      kOp, "b_scales",
                      "must be contiguous float32 [experts, ceil(n / 128), k / 128]");
  FUSEINFER_CHECK_ARG(offsets.scalar_type() == at::kInt && offsets.dim() == 1 &&
                          offsets.size(0) == experts + 1 && offsets.is_contiguous(),
                      kOp, "offsets", "must be contiguous int32 [experts + 1]");
  FUSEINFER_CHECK_ARG(out.dim() == 2 && out.size(0) == rows && out.size(1) == n &&
                          out.is_contiguous() &&
                          (out.scalar_type() == at::kBFloat16 || out.scalar_type() == at::kHalf),
                      kOp, "out", "must be contiguous bfloat16 or float16 [rows, n]");
  for (const at::Tensor* t : {&a, &a_scales, &b, &b_scales, &offsets}) {
    FUSEINFER_CHECK_ARG(t->device() == out.device(), kOp, "inputs", "must be on out's device");
  }
}

void fp8_blockwise_grouped_mm_cutlass(at::Tensor& out, const at::Tensor& a,
                                      const at::Tensor& a_scales, const at::Tensor& b,
                                      const at::Tensor& b_scales, const at::Tensor& offsets,
                                      c10::string_view config, bool enable_pdl) {
  check_args(out, a, a_scales, b, b_scales, offsets);
  const Fp8GroupedConfig* chosen = find_fp8_grouped_config(std::string(config));
  if (chosen == nullptr) {
    std::string known;
    for (const auto& name : fp8_grouped_config_names()) known += " " + name;
    TORCH_CHECK_VALUE(false, "fuseinfer.", kOp, ": no grouped FP8 GEMM configuration '",
                      config, "' in this build (built:", known, ")");
  }
  if (a.size(0) == 0 || b.size(0) == 0 || b.size(1) == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  Fp8GroupedArgs args{};
  args.out = out.data_ptr();
  args.a = a.data_ptr();
  args.a_scales = a_scales.data_ptr<float>();
  args.b = b.data_ptr();
  args.b_scales = b_scales.data_ptr<float>();
  args.offsets = offsets.data_ptr<int32_t>();
  args.num_experts = static_cast<int>(b.size(0));
  args.n = static_cast<int>(b.size(1));
  args.k = static_cast<int>(a.size(1));
  args.out_bf16 = out.scalar_type() == at::kBFloat16;
  args.enable_pdl = enable_pdl;
  args.sm_count = device_sm_count(out.device().index());
  args.stream = c10::cuda::getCurrentCUDAStream(out.device().index()).stream();
  // The expert arrays and CUTLASS's workspace: from the caching allocator (capture-safe).
  const size_t bytes = chosen->scratch_bytes(args);
  at::Tensor scratch = at::empty({static_cast<int64_t>(bytes)}, a.options().dtype(at::kByte));
  const std::string error = chosen->run(args, scratch.data_ptr());
  TORCH_CHECK(error.empty(), "fuseinfer.", kOp, " (", config, ", experts=", args.num_experts,
              " n=", args.n, " k=", args.k, "): ", error);
}

std::vector<std::string> configs() { return fp8_grouped_config_names(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(fuseinfer, m) {
  m.def("_fp8_grouped_configs() -> str[]");
  m.impl("_fp8_grouped_configs", &configs);
}

TORCH_LIBRARY_IMPL(fuseinfer, CUDA, m) {
  m.impl("_fp8_blockwise_grouped_mm_cutlass", &fp8_blockwise_grouped_mm_cutlass);
}

}  // namespace fuseinfer::moe
