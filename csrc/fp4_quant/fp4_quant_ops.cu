// CUDA implementations of nvfp4_quantize, mxfp4_quantize and mxfp8_quantize (schemas in
// fuseinfer/ops/fp4_quant/): the checks, then the one kernel of fp4_quant_kernel.cuh with
// the launch shape of the dispatch table pushed by _fp4_quant_configure.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "fp4_quant_args.h"
#include "launch_policy.h"
#include "torch_checks.h"

namespace fuseinfer::fp4_quant {
namespace {

struct Op {
  const char* name;
  Format format;
  int block;            // elements per scale
  at::ScalarType scale_type;
};

constexpr int64_t kAlign = 128;  // swizzled scale rows come in tiles of 128

int64_t swizzled_rows(int64_t rows, int64_t experts) {
  return (rows + (kAlign - 1) * experts) / kAlign * kAlign;
}

void check_input(const Op& op, const at::Tensor& input) {
  FUSEINFER_CHECK_ARG(input.is_cuda() && input.dim() == 2, op.name, "input",
                      "must be a 2-D CUDA tensor [tokens, hidden], got ", input.sizes(), " on ",
                      input.device());
  FUSEINFER_CHECK_ARG(input.scalar_type() == at::kBFloat16 || input.scalar_type() == at::kHalf,
                      op.name, "input", "must be bfloat16 or float16, got ",
                      input.scalar_type());
  FUSEINFER_CHECK_ARG(input.size(1) % op.block == 0, op.name, "input", "its hidden size (",
                      input.size(1), ") must be a multiple of ", op.block,
                      " (one scale per block of ", op.block, " elements)");
  FUSEINFER_CHECK_ARG(input.size(1) == 0 || input.stride(1) == 1, op.name, "input",
                      "must have a contiguous last dim, got strides ", input.strides());
  FUSEINFER_CHECK_ARG(aligned16(input.data_ptr()) &&
                          (input.size(0) <= 1 || input.stride(0) % 8 == 0),
                      op.name, "input", "must have 16-byte aligned rows, got strides ",
                      input.strides());
}

// q [M, out_cols * bits / 8] uint8 (fp4) or float8_e4m3fn (mxfp8), rows aligned for the
// kernel's 4- or 8-byte stores.
void check_q(const Op& op, const at::Tensor& q, const at::Tensor& input, int64_t out_cols) {
  const bool fp4 = op.format != Format::kMxfp8;
  const int64_t width = fp4 ? out_cols / 2 : out_cols;
  const at::ScalarType type = fp4 ? at::kByte : at::kFloat8_e4m3fn;
  FUSEINFER_CHECK_ARG(q.device() == input.device() && q.scalar_type() == type && q.dim() == 2 &&
                          q.size(0) == input.size(0) && q.size(1) == width,
                      op.name, "q", "must be ", type, " [", input.size(0), ", ", width, "] on ",
                      input.device(), ", got ", q.scalar_type(), " ", q.sizes(), " on ",
                      q.device());
  const int64_t store = fp4 ? 4 : 8;
  FUSEINFER_CHECK_ARG((width == 0 || q.stride(1) == 1) &&
                          reinterpret_cast<uintptr_t>(q.data_ptr()) % store == 0 &&
                          (q.size(0) <= 1 || q.stride(0) % store == 0),
                      op.name, "q", "must have a contiguous last dim and ", store,
                      "-byte aligned rows, got strides ", q.strides());
}

void check_scales(const Op& op, const at::Tensor& scales, const at::Tensor& input,
                  int64_t out_cols, bool swizzled, int64_t experts) {
  const int64_t cols = out_cols / op.block;
  const int64_t rows = swizzled ? swizzled_rows(input.size(0), experts) : input.size(0);
  const int64_t width = swizzled ? (cols + 3) / 4 * 4 : cols;
  FUSEINFER_CHECK_ARG(scales.device() == input.device() && scales.scalar_type() == op.scale_type &&
                          scales.dim() == 2 && scales.size(0) == rows && scales.size(1) == width,
                      op.name, "scales", "must be ", op.scale_type, " [", rows, ", ", width,
                      "] on ", input.device(), ", got ", scales.scalar_type(), " ",
                      scales.sizes(), " on ", scales.device());
  FUSEINFER_CHECK_ARG(width == 0 || scales.stride(1) == 1, op.name, "scales",
                      "must have a contiguous last dim");
  FUSEINFER_CHECK_ARG(!swizzled || scales.is_contiguous(), op.name, "scales",
                      "must be contiguous when swizzled");
}

void run(const Op& op, const at::Tensor& q, const at::Tensor& scales, const at::Tensor& input,
         int64_t out_cols, const float* global_scale,
         const std::optional<at::Tensor>& expert_offsets, bool swizzled,
         std::optional<bool> enable_pdl) {
  int64_t experts = 1;
  const int32_t* offsets = nullptr;
  if (expert_offsets.has_value()) {
    const at::Tensor& o = *expert_offsets;
    FUSEINFER_CHECK_ARG(o.device() == input.device() && o.scalar_type() == at::kInt &&
                            o.dim() == 1 && o.size(0) >= 2 && o.size(0) <= kMaxExperts + 1 &&
                            o.is_contiguous(),
                        op.name, "expert_offsets", "must be a contiguous int32 [experts + 1] "
                        "on ", input.device(), " with 1 to ", kMaxExperts, " experts, got ",
                        o.scalar_type(), " ", o.sizes());
    experts = o.size(0) - 1;
    offsets = o.data_ptr<int32_t>();
  }
  FUSEINFER_CHECK_ARG(out_cols <= kMaxCols, op.name, "input", "its hidden size (", out_cols,
                      ") must be at most ", kMaxCols);
  check_q(op, q, input, out_cols);
  check_scales(op, scales, input, out_cols, swizzled, experts);
  const c10::cuda::CUDAGuard guard(input.device());
  const int device = input.get_device();
  const auto table = tables().get(device);
  const bool pdl = resolve_pdl(enable_pdl, table == nullptr || table->enable_pdl, device,
                               op.name);
  const LaunchRule* rule = table == nullptr ? nullptr : table->pick(input.size(0));
  const int threads = rule == nullptr ? 512 : rule->threads_per_block;
  const int per_sm = rule == nullptr ? 16 : rule->blocks_per_sm;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  const int64_t cols = out_cols / op.block;
  QuantArgs args{input.data_ptr(),
                 input.size(0) <= 1 ? input.size(1) : input.stride(0),
                 static_cast<uint8_t*>(q.data_ptr()),
                 q.size(0) <= 1 ? q.size(1) : q.stride(0),
                 static_cast<uint8_t*>(scales.data_ptr()),
                 scales.size(0) <= 1 ? scales.size(1) : scales.stride(0),
                 global_scale,
                 offsets,
                 input.size(0),
                 input.size(1),
                 out_cols,
                 scales.size(0),
                 cols,
                 scales.size(1),
                 static_cast<int>(experts),
                 swizzled};
  const InputType type =
      input.scalar_type() == at::kBFloat16 ? InputType::kBFloat16 : InputType::kHalf;
  FUSEINFER_CUDA_CHECK(launch_quantize(args, op.format, type, threads, per_sm,
                                       device_sm_count(device), pdl, stream));
}

void nvfp4_quantize(const at::Tensor& q, const at::Tensor& scales, const at::Tensor& input,
                    const at::Tensor& global_scale, bool swizzled_scales,
                    const std::optional<at::Tensor>& expert_offsets,
                    std::optional<bool> enable_pdl) {
  const Op op{"nvfp4_quantize", Format::kNvfp4, 16, at::kFloat8_e4m3fn};
  check_input(op, input);
  const int64_t experts = expert_offsets.has_value() ? expert_offsets->numel() - 1 : 1;
  FUSEINFER_CHECK_ARG(global_scale.device() == input.device() &&
                          global_scale.scalar_type() == at::kFloat &&
                          global_scale.numel() == experts && global_scale.is_contiguous(),
                      op.name, "global_scale", "must be a contiguous float32 tensor of ",
                      experts, " element(s) (one per expert) on ", input.device(), ", got ",
                      global_scale.scalar_type(), " ", global_scale.sizes());
  run(op, q, scales, input, input.size(1), global_scale.data_ptr<float>(), expert_offsets,
      swizzled_scales, enable_pdl);
}

void mxfp4_quantize(const at::Tensor& q, const at::Tensor& scales, const at::Tensor& input,
                    bool swizzled_scales, std::optional<bool> enable_pdl) {
  const Op op{"mxfp4_quantize", Format::kMxfp4, 32, at::kByte};
  check_input(op, input);
  run(op, q, scales, input, input.size(1), nullptr, std::nullopt, swizzled_scales, enable_pdl);
}

void mxfp8_quantize(const at::Tensor& q, const at::Tensor& scales, const at::Tensor& input,
                    bool swizzled_scales, std::optional<bool> enable_pdl) {
  const Op op{"mxfp8_quantize", Format::kMxfp8, 32, at::kByte};
  check_input(op, input);
  const int64_t out_cols = q.dim() == 2 ? q.size(1) : -1;
  FUSEINFER_CHECK_ARG(out_cols >= input.size(1) && out_cols % 32 == 0, op.name, "q",
                      "must be [tokens, output_hidden_size] with output_hidden_size >= ",
                      input.size(1), " and a multiple of 32, got ", q.sizes());
  run(op, q, scales, input, out_cols, nullptr, std::nullopt, swizzled_scales, enable_pdl);
}

// Replaces the launch rules of one device; called by fuseinfer.ops.fp4_quant after loading.
void configure(int64_t device, std::vector<int64_t> max_tokens,
               std::vector<int64_t> threads_per_block, std::vector<int64_t> blocks_per_sm,
               bool enable_pdl) {
  TORCH_CHECK(device >= 0 && device < DeviceTables<LaunchRule>::kMaxDevices,
              "fuseinfer: device index out of range");
  const size_t n = max_tokens.size();
  TORCH_CHECK(threads_per_block.size() == n && blocks_per_sm.size() == n,
              "fuseinfer: fp4_quant launch rules must have equal lengths");
  auto table = std::make_shared<LaunchTable>();
  table->enable_pdl = enable_pdl;
  for (size_t i = 0; i < n; ++i) {
    const int threads = static_cast<int>(threads_per_block[i]);
    const int per_sm = static_cast<int>(blocks_per_sm[i]);
    TORCH_CHECK(threads >= 32 && threads <= 1024 && (threads & (threads - 1)) == 0,
                "fuseinfer: fp4_quant threads_per_block must be a power of two in [32, 1024], "
                "got ", threads);
    TORCH_CHECK(per_sm >= 1 && per_sm <= 32, "fuseinfer: fp4_quant blocks_per_sm must be in "
                "[1, 32], got ", per_sm);
    table->rules.push_back({max_tokens[i], threads, per_sm});
  }
  tables().set(static_cast<int>(device), std::move(table));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fuseinfer, m) {
  m.def(
      "_fp4_quant_configure(int device, int[] max_tokens, int[] threads_per_block, "
      "int[] blocks_per_sm, bool enable_pdl) -> ()");
  m.impl("_fp4_quant_configure", &configure);
}

TORCH_LIBRARY_IMPL(fuseinfer, CUDA, m) {
  m.impl("nvfp4_quantize", &nvfp4_quantize);
  m.impl("mxfp4_quantize", &mxfp4_quantize);
  m.impl("mxfp8_quantize", &mxfp8_quantize);
}

}  // namespace fuseinfer::fp4_quant
