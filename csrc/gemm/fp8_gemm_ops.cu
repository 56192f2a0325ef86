// Torch entry points of the FP8 blockwise GEMM configurations. The public op
// (fuseinfer.ops.fp8_blockwise_mm) checks its arguments, picks a configuration from the
// dispatch table and calls _fp8_blockwise_mm_cutlass with it; the checks here keep a direct
// call from crashing.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "device_info.h"
#include "fp8_gemm_args.h"
#include "torch_checks.h"

namespace fuseinfer::gemm {
namespace {

constexpr const char* kOp = "_fp8_blockwise_mm_cutlass";

void check_args(const at::Tensor& out, const at::Tensor& a, const at::Tensor& a_scales,
                const at::Tensor& b, const at::Tensor& b_scales) {
  FUSEINFER_CHECK_ARG(a.dim() == 2 && a.scalar_type() == at::kFloat8_e4m3fn, kOp, "a",
                      "must be float8_e4m3fn [m, k]");
  FUSEINFER_CHECK_ARG(b.dim() == 2 && b.scalar_type() == at::kFloat8_e4m3fn, kOp, "b",
                      "must be float8_e4m3fn [n, k]");
  const int64_t m = a.size(0), k = a.size(1), n = b.size(0);
  FUSEINFER_CHECK_ARG(b.size(1) == k && k % 128 == 0, kOp, "b",
                      "must have k (a multiple of 128) columns like a");
  FUSEINFER_CHECK_ARG(a.stride(1) == 1 && a.stride(0) % 16 == 0, kOp, "a",
                      "rows must be contiguous, with a row stride that is a multiple of 16");
  FUSEINFER_CHECK_ARG(b.stride(1) == 1 && b.stride(0) % 16 == 0, kOp, "b",
                      "rows must be contiguous, with a row stride that is a multiple of 16");
  FUSEINFER_CHECK_ARG(out.dim() == 2 && out.size(0) == m && out.size(1) == n &&
                          (out.scalar_type() == at::kBFloat16 || out.scalar_type() == at::kHalf),
                      kOp, "out", "must be bfloat16 or float16 [m, n]");
  FUSEINFER_CHECK_ARG(out.stride(1) == 1 && out.stride(0) % 8 == 0, kOp, "out",
                      "rows must be contiguous, with a row stride that is a multiple of 8");
  FUSEINFER_CHECK_ARG(a_scales.scalar_type() == at::kFloat && a_scales.dim() == 2 &&
                          a_scales.size(0) == m && a_scales.size(1) == k / 128 &&
                          a_scales.stride(0) == 1 && a_scales.stride(1) >= m,
                      kOp, "a_scales", "must be float32 [m, k / 128], M-major");
  FUSEINFER_CHECK_ARG(b_scales.scalar_type() == at::kFloat && b_scales.dim() == 2 &&
                          b_scales.size(0) == (n + 127) / 128 && b_scales.size(1) == k / 128 &&
                          (b_scales.stride(0) == 1 || b_scales.size(0) == 1) &&
                          b_scales.stride(1) == b_scales.size(0),
                      kOp, "b_scales", "must be float32 [ceil(n / 128), k / 128], N-major");
  for (const at::Tensor* t : {&a, &a_scales, &b, &b_scales}) {
    FUSEINFER_CHECK_ARG(t->device() == out.device(), kOp, "inputs", "must be on out's device");
  }
}

void fp8_blockwise_mm_cutlass(at::Tensor& out, const at::Tensor& a, const at::Tensor& a_scales,
                              const at::Tensor& b, const at::Tensor& b_scales,
                              c10::string_view config, bool enable_pdl) {
  check_args(out, a, a_scales, b, b_scales);
  const Fp8GemmConfig* chosen = find_fp8_gemm_config(std::string(config));
  if (chosen == nullptr) {
    std::string known;
    for (const auto& name : fp8_gemm_config_names()) known += " " + name;
    TORCH_CHECK_VALUE(false, "fuseinfer.", kOp, ": no FP8 GEMM configuration '", config,
                      "' in this build (built:", known, ")");
  }
  if (a.size(0) == 0 || b.size(0) == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  Fp8GemmArgs args{};
  args.out = out.data_ptr();
  args.a = a.data_ptr();
  args.a_scales = a_scales.data_ptr<float>();
  args.b = b.data_ptr();
  args.b_scales = b_scales.data_ptr<float>();
  args.m = static_cast<int>(a.size(0));
  args.n = static_cast<int>(b.size(0));
  args.k = static_cast<int>(a.size(1));
  args.ldo = out.stride(0);
  args.lda = a.stride(0);
  args.ldb = b.stride(0);
  args.a_scales_ld = a_scales.stride(1);
  args.b_scales_ld = b_scales.size(0);
  args.out_bf16 = out.scalar_type() == at::kBFloat16;
  args.enable_pdl = enable_pdl;
  args.sm_count = device_sm_count(out.device().index());
  args.stream = c10::cuda::getCurrentCUDAStream(out.device().index()).stream();
  // StreamK partial sums: scratch from the caching allocator (capture-safe).
  const size_t bytes = chosen->workspace_bytes(args);
  at::Tensor workspace;
  if (bytes > 0) workspace = at::empty({static_cast<int64_t>(bytes)}, a.options().dtype(at::kByte));
  const std::string error = chosen->run(args, bytes > 0 ? workspace.data_ptr() : nullptr);
  TORCH_CHECK(error.empty(), "fuseinfer.", kOp, " (", config, ", m=", args.m, " n=", args.n,
              " k=", args.k, "): ", error);
}

std::vector<std::string> configs() { return fp8_gemm_config_names(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(fuseinfer, m) {
  m.def("_fp8_gemm_configs() -> str[]");
  m.impl("_fp8_gemm_configs", &configs);
}

TORCH_LIBRARY_IMPL(fuseinfer, CUDA, m) {
  m.impl("_fp8_blockwise_mm_cutlass", &fp8_blockwise_mm_cutlass);
}

}  // namespace fuseinfer::gemm
