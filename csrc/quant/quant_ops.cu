// CUDA implementation of the internal op _per_token_group_quant_fp8_cuda (schema in
// fuseinfer/ops/quant/group_quant_cuda.py): the checks, then the precise or the fast-math
// build of the one group-quant kernel (group_quant_kernel.cuh). The public
// per_token_group_quant_fp8 chooses this kernel or the Triton one from the dispatch table.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "group_quant_launch.h"
#include "launch_policy.h"
#include "torch_checks.h"

namespace fuseinfer::quant {
namespace {

constexpr const char* kOp = "_per_token_group_quant_fp8_cuda";

InputType input_type(const at::Tensor& input) {
  switch (input.scalar_type()) {
    case at::kBFloat16: return InputType::kBFloat16;
    case at::kHalf: return InputType::kHalf;
    case at::kFloat: return InputType::kFloat;
    default:
      FUSEINFER_CHECK_ARG(false, kOp, "input", "must be bfloat16, float16 or float32, got ",
                          input.scalar_type());
  }
  return InputType::kFloat;
}

bool aligned(const void* p, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
}

void per_token_group_quant_fp8_cuda(const at::Tensor& q, const at::Tensor& scales,
                                    const at::Tensor& input, int64_t group_size,
                                    bool scale_ue8m0, std::optional<bool> enable_pdl,
                                    bool fast_math) {
  FUSEINFER_CHECK_ARG(input.is_cuda() && input.dim() == 2, kOp, "input",
                      "must be a 2-D CUDA tensor, got ", input.sizes(), " on ", input.device());
  const InputType type = input_type(input);
  FUSEINFER_CHECK_ARG(group_size >= 16 && group_size <= 1024 &&
                          (group_size & (group_size - 1)) == 0,
                      kOp, "group_size", "must be a power of two in [16, 1024], got ",
                      group_size);
  const int64_t rows = input.size(0);
  const int64_t k = input.size(1);
  FUSEINFER_CHECK_ARG(k % group_size == 0, kOp, "input", "its channels (", k,
                      ") must be a multiple of group_size (", group_size, ")");
  FUSEINFER_CHECK_ARG(q.device() == input.device() && q.scalar_type() == at::kFloat8_e4m3fn &&
                          q.dim() == 2 && q.size(0) == rows && q.size(1) == k,
                      kOp, "q", "must be float8_e4m3fn [", rows, ", ", k, "] on ",
                      input.device(), ", got ", q.scalar_type(), " ", q.sizes());
  FUSEINFER_CHECK_ARG(scales.device() == input.device() && scales.scalar_type() == at::kFloat &&
                          scales.dim() == 2 && scales.size(0) == rows &&
                          scales.size(1) == k / group_size,
                      kOp, "scales", "must be float32 [", rows, ", ", k / group_size, "] on ",
                      input.device(), ", got ", scales.scalar_type(), " ", scales.sizes());
  if (rows == 0 || k == 0) return;
  // 16-byte loads of input, one store of a load's worth of e4m3 bytes per vector
  const int64_t vec = 16 / input.element_size();
  FUSEINFER_CHECK_ARG(input.stride(1) == 1 && (rows == 1 || input.stride(0) % vec == 0) &&
                          aligned(input.data_ptr(), 16),
                      kOp, "input", "must have a contiguous last dim, 16-byte aligned rows, got "
                      "strides ", input.strides());
  FUSEINFER_CHECK_ARG(q.stride(1) == 1 && (rows == 1 || q.stride(0) % vec == 0) &&
                          aligned(q.data_ptr(), vec),
                      kOp, "q", "must have a contiguous last dim and ", vec,
                      "-byte aligned rows, got strides ", q.strides());

  const c10::cuda::CUDAGuard guard(input.device());
  const int device = input.get_device();
  const bool pdl = resolve_pdl(enable_pdl, true, device, kOp);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  GroupQuantArgs args{input.data_ptr(),
                      static_cast<uint8_t*>(q.data_ptr()),
                      scales.data_ptr<float>(),
                      rows,
                      k / group_size,
                      input.stride(0),
                      q.stride(0),
                      scales.stride(0),
                      scales.stride(1),
                      scale_ue8m0};
  const int group = static_cast<int>(group_size);
  FUSEINFER_CUDA_CHECK(fast_math
                           ? fast_math::launch_group_quant_fp8(args, type, group, pdl, stream)
                           : precise::launch_group_quant_fp8(args, type, group, pdl, stream));
}

}  // namespace

TORCH_LIBRARY_IMPL(fuseinfer, CUDA, m) {
  m.impl("_per_token_group_quant_fp8_cuda", &per_token_group_quant_fp8_cuda);
}

}  // namespace fuseinfer::quant
