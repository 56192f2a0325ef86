// CUDA implementations of the fuseinfer norm ops (schemas live in fuseinfer/ops/norm.py).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <utility>

#include "launch_policy.h"
#include "launch_table.h"
#include "rmsnorm_kernels.cuh"
#include "torch_checks.h"

namespace fuseinfer::norm {
namespace {

struct RowView {
  int64_t rows;
  int64_t stride;  // elements between consecutive rows
};

// Rows of a tensor whose last dim is contiguous and whose leading dims flatten to one
// stride (a 2-D view of it exists without a copy).
RowView row_view(const at::Tensor& t, const char* op, const char* name) {
  FUSEINFER_CHECK_ARG(t.dim() >= 1, op, name, "must have at least one dimension");
  const int64_t hidden = t.size(-1);
  FUSEINFER_CHECK_ARG(t.stride(-1) == 1 || hidden == 1, op, name,
                      "must be contiguous in its last dimension, got strides ", t.strides());
  int64_t rows = 1;
  int64_t stride = -1;    // stride of the innermost leading dim that has more than one row
  int64_t expected = -1;  // stride the next outer dim needs to flatten with it
  for (int64_t d = t.dim() - 2; d >= 0; --d) {
    rows *= t.size(d);
    if (t.size(d) == 1) continue;
    if (stride < 0) {
      stride = t.stride(d);
    } else {
      FUSEINFER_CHECK_ARG(t.stride(d) == expected, op, name,
                          "must have leading dimensions that flatten to rows, got strides ",
                          t.strides());
    }
    expected = t.stride(d) * t.size(d);
  }
  if (stride < 0) stride = hidden;
  FUSEINFER_CHECK_ARG(rows <= 1 || stride >= hidden, op, name,
                      "rows must not overlap (row stride ", stride, " < hidden ", hidden, ")");
  return {rows, stride};
}

// Byte range [first, last) that a row view touches.
std::pair<uintptr_t, uintptr_t> byte_range(const at::Tensor& t, const RowView& rows) {
  const auto first = reinterpret_cast<uintptr_t>(t.data_ptr());
  const int64_t elements = (rows.rows - 1) * rows.stride + t.size(-1);
  return {first, first + static_cast<uintptr_t>(elements) * t.element_size()};
}

// Rows written by one block must not be read or written by another through a second
// tensor: only the exact alias `out is input` (same start and stride) is allowed.
void check_no_overlap(const at::Tensor& a, const RowView& a_rows, const at::Tensor& b,
                      const RowView& b_rows, bool exact_alias_ok, const char* op,
                      const char* a_name, const char* b_name) {
  if (a_rows.rows == 0 || b_rows.rows == 0) return;
  const auto [a0, a1] = byte_range(a, a_rows);
  const auto [b0, b1] = byte_range(b, b_rows);
  const bool exact = a0 == b0 && a_rows.stride == b_rows.stride && a.sizes() == b.sizes();
  FUSEINFER_CHECK_ARG(a1 <= b0 || b1 <= a0 || (exact_alias_ok && exact), op, a_name,
                      "must not overlap ", b_name,
                      exact_alias_ok ? " (passing the same tensor for both is allowed)" : "");
}

void check_same(const at::Tensor& t, const at::Tensor& input, const char* op, const char* name) {
  FUSEINFER_CHECK_ARG(t.device() == input.device(), op, name, "must be on ", input.device(),
                      " like input, got ", t.device());
  FUSEINFER_CHECK_ARG(t.scalar_type() == input.scalar_type(), op, name, "must have dtype ",
                      input.scalar_type(), " like input, got ", t.scalar_type());
}

void check_weight(const at::Tensor& weight, const at::Tensor& input, const char* op) {
  check_same(weight, input, op, "weight");
  FUSEINFER_CHECK_ARG(weight.dim() == 1 && weight.size(0) == input.size(-1), op, "weight",
                      "must have shape [", input.size(-1), "] (the hidden size), got ",
                      weight.sizes());
  FUSEINFER_CHECK_ARG(weight.is_contiguous(), op, "weight", "must be contiguous");
}

struct LaunchShape {
  int threads_per_row;
  int rows_per_block;
};

LaunchShape pick_shape(const LaunchTable* table, NormKind kind, int64_t hidden, int64_t rows) {
  if (table != nullptr) {
    for (const LaunchRule& rule : table->rules) {
      if (rule.kind == kind && (rule.max_hidden < 0 || hidden <= rule.max_hidden) &&
          (rule.max_tokens < 0 || rows <= rule.max_tokens)) {
        return {rule.threads_per_row, rule.rows_per_block};
      }
    }
  }
  return {256, 1};  // no table pushed for this device: a shape that is never wrong
}

using NormKernel = void (*)(RowPointers, int64_t, int, float, float);

// Most threads a block of `kernel` can have on this GPU (its registers decide), cached.
template <NormKernel kernel>
int max_threads_per_block() {
  static const int value = [] {
    cudaFuncAttributes attributes{};
    FUSEINFER_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
    return attributes.maxThreadsPerBlock;
  }();
  return value;
}

struct KernelChoice {
  NormKernel kernel;
  int max_threads;
};

template <typename T, bool FUSED>
KernelChoice vec_kernel(int vpt) {
  if (vpt == 1) return {rmsnorm_vec_kernel<T, 1, FUSED>,
                        max_threads_per_block<rmsnorm_vec_kernel<T, 1, FUSED>>()};
  if (vpt == 2) return {rmsnorm_vec_kernel<T, 2, FUSED>,
                        max_threads_per_block<rmsnorm_vec_kernel<T, 2, FUSED>>()};
  if (vpt <= 4) return {rmsnorm_vec_kernel<T, 4, FUSED>,
                        max_threads_per_block<rmsnorm_vec_kernel<T, 4, FUSED>>()};
  return {rmsnorm_vec_kernel<T, 8, FUSED>,
          max_threads_per_block<rmsnorm_vec_kernel<T, 8, FUSED>>()};
}

template <typename T, bool FUSED>
void launch_typed(const RowPointers& p, int64_t rows, int hidden, float eps, float offset,
                  LaunchShape shape, bool pdl, cudaStream_t stream) {
  constexpr int VEC = kVec16<T>;
  const bool vec_ok = hidden % VEC == 0 && p.input_stride % VEC == 0 &&
                      p.out_stride % VEC == 0 && aligned16(p.input) && aligned16(p.out) &&
                      aligned16(p.weight) &&
                      (!FUSED || (p.residual_stride % VEC == 0 && aligned16(p.residual)));
  int tpr = shape.threads_per_row;
  int rpb = shape.rows_per_block;
  KernelChoice choice{rmsnorm_generic_kernel<T, FUSED>,
                      max_threads_per_block<rmsnorm_generic_kernel<T, FUSED>>()};
  if (vec_ok) {
    const int num_vec = hidden / VEC;
    // Never more threads than the row has vectors; widen when one thread would need
    // more than 8 vectors.
    if (tpr >= 32) tpr = std::min(tpr, (num_vec + 31) / 32 * 32);
    if ((num_vec + tpr - 1) / tpr > 8) {
      tpr = (num_vec + 8 * 32 - 1) / (8 * 32) * 32;
      rpb = 1;
    }
    const KernelChoice vec = vec_kernel<T, FUSED>((num_vec + tpr - 1) / tpr);
    if (tpr <= vec.max_threads) choice = vec;  // else: too many registers, take the general path
  }
  tpr = std::min(tpr, choice.max_threads / 32 * 32);
  // Whole warps only (sub-warp rows come in groups of 32 / tpr), within the block limit.
  const int group = tpr < 32 ? 32 / tpr : 1;
  const int most_rows = choice.max_threads / tpr / group * group;
  rpb = std::min((std::max(rpb, 1) + group - 1) / group * group, std::max(most_rows, group));
  const dim3 block(tpr, rpb);
  const dim3 grid(static_cast<unsigned>((rows + rpb - 1) / rpb));
  FUSEINFER_CUDA_CHECK(launch_kernel(choice.kernel, grid, block, 0, stream, pdl, p, rows,
                                     hidden, eps, offset));
}

void run(const char* op, const at::Tensor& out, const at::Tensor& input,
         const std::optional<at::Tensor>& residual, const at::Tensor& weight, double eps,
         std::optional<bool> enable_pdl, float weight_offset) {
  const bool fused = residual.has_value();
  FUSEINFER_CHECK_ARG(input.is_cuda(), op, "input", "must be a CUDA tensor, got ",
                      input.device());
  const auto dtype = input.scalar_type();
  FUSEINFER_CHECK_ARG(dtype == at::kBFloat16 || dtype == at::kHalf || dtype == at::kFloat, op,
                      "input", "must be bfloat16, float16 or float32, got ", dtype);
  check_weight(weight, input, op);
  if (!fused) {
    check_same(out, input, op, "out");
    FUSEINFER_CHECK_ARG(out.sizes() == input.sizes(), op, "out", "must have shape ",
                        input.sizes(), " like input, got ", out.sizes());
  } else {
    check_same(*residual, input, op, "residual");
    FUSEINFER_CHECK_ARG(residual->sizes() == input.sizes(), op, "residual", "must have shape ",
                        input.sizes(), " like input, got ", residual->sizes());
  }
  FUSEINFER_CHECK_ARG(eps >= 0, op, "eps", "must be >= 0, got ", eps);

  const RowView in_rows = row_view(input, op, "input");
  const RowView out_rows = fused ? in_rows : row_view(out, op, "out");
  const RowView res_rows = fused ? row_view(*residual, op, "residual") : RowView{0, 0};
  const int64_t hidden = input.size(-1);
  FUSEINFER_CHECK_ARG(hidden <= (int64_t{1} << 30), op, "input", "hidden size too large");
  const RowView weight_rows{1, hidden};
  if (fused) {
    check_no_overlap(*residual, res_rows, input, in_rows, false, op, "residual", "input");
    check_no_overlap(weight, weight_rows, input, in_rows, false, op, "weight", "input");
    check_no_overlap(weight, weight_rows, *residual, res_rows, false, op, "weight", "residual");
  } else {
    check_no_overlap(out, out_rows, input, in_rows, true, op, "out", "input");
    check_no_overlap(weight, weight_rows, out, out_rows, false, op, "weight", "out");
  }
  if (in_rows.rows == 0 || hidden == 0) return;

  const c10::cuda::CUDAGuard guard(input.device());
  const int device = input.get_device();
  const auto table = tables().get(device);
  const bool pdl = resolve_pdl(enable_pdl, !table || table->enable_pdl, device, op);
  const LaunchShape shape = pick_shape(table.get(), fused ? NormKind::kFusedAdd : NormKind::kRmsnorm,
                                       hidden, in_rows.rows);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();

  RowPointers p;
  p.out = fused ? input.data_ptr() : out.data_ptr();
  p.out_stride = out_rows.stride;
  p.input = input.data_ptr();
  p.input_stride = in_rows.stride;
  p.residual = fused ? residual->data_ptr() : nullptr;
  p.residual_stride = res_rows.stride;
  p.weight = weight.data_ptr();
  const int h = static_cast<int>(hidden);
  const float e = static_cast<float>(eps);

#define FUSEINFER_NORM_LAUNCH(CTYPE)                                                      \
  if (fused) {                                                                            \
    launch_typed<CTYPE, true>(p, in_rows.rows, h, e, weight_offset, shape, pdl, stream);  \
  } else {                                                                                \
    launch_typed<CTYPE, false>(p, in_rows.rows, h, e, weight_offset, shape, pdl, stream); \
  }
  if (dtype == at::kBFloat16) {
    FUSEINFER_NORM_LAUNCH(__nv_bfloat16)
  } else if (dtype == at::kHalf) {
    FUSEINFER_NORM_LAUNCH(__half)
  } else {
    FUSEINFER_NORM_LAUNCH(float)
  }
#undef FUSEINFER_NORM_LAUNCH
}

void rmsnorm(const at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
             double eps, std::optional<bool> enable_pdl) {
  run("rmsnorm", out, input, std::nullopt, weight, eps, enable_pdl, 0.f);
}

void gemma_rmsnorm(const at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
                   double eps, std::optional<bool> enable_pdl) {
  run("gemma_rmsnorm", out, input, std::nullopt, weight, eps, enable_pdl, 1.f);
}

void fused_add_rmsnorm(const at::Tensor& input, const at::Tensor& residual,
                       const at::Tensor& weight, double eps, std::optional<bool> enable_pdl) {
  run("fused_add_rmsnorm", input, input, residual, weight, eps, enable_pdl, 0.f);
}

void gemma_fused_add_rmsnorm(const at::Tensor& input, const at::Tensor& residual,
                             const at::Tensor& weight, double eps,
                             std::optional<bool> enable_pdl) {
  run("gemma_fused_add_rmsnorm", input, input, residual, weight, eps, enable_pdl, 1.f);
}

// Replaces the launch rules of one device; called by fuseinfer.ops.norm after loading.
void configure(int64_t device, std::vector<int64_t> kinds, std::vector<int64_t> max_hidden,
               std::vector<int64_t> max_tokens, std::vector<int64_t> threads_per_row,
               std::vector<int64_t> rows_per_block, bool enable_pdl) {
  TORCH_CHECK(device >= 0 && device < DeviceTables<LaunchRule>::kMaxDevices,
              "fuseinfer: device index out of range");
  const size_t n = max_hidden.size();
  TORCH_CHECK(kinds.size() == n && max_tokens.size() == n && threads_per_row.size() == n &&
                  rows_per_block.size() == n,
              "fuseinfer: norm launch rules must have equal lengths");
  auto table = std::make_shared<LaunchTable>();
  table->enable_pdl = enable_pdl;
  for (size_t i = 0; i < n; ++i) {
    const int tpr = static_cast<int>(threads_per_row[i]);
    const int rpb = static_cast<int>(rows_per_block[i]);
    const bool pow2_small = tpr >= 1 && tpr < 32 && (tpr & (tpr - 1)) == 0;
    TORCH_CHECK(pow2_small || (tpr >= 32 && tpr <= 1024 && tpr % 32 == 0),
                "fuseinfer: threads_per_row must be a power of two below 32 or a multiple "
                "of 32 up to 1024, got ", tpr);
    TORCH_CHECK(rpb >= 1 && tpr * rpb <= 1024, "fuseinfer: rows_per_block ", rpb,
                " with threads_per_row ", tpr, " exceeds 1024 threads");
    TORCH_CHECK(kinds[i] == 0 || kinds[i] == 1, "fuseinfer: norm rule kind must be 0 or 1");
    table->rules.push_back({static_cast<NormKind>(kinds[i]), max_hidden[i], max_tokens[i], tpr,
                            rpb});
  }
  tables().set(static_cast<int>(device), std::move(table));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fuseinfer, m) {
  m.def(
      "_norm_configure(int device, int[] kinds, int[] max_hidden, int[] max_tokens, "
      "int[] threads_per_row, int[] rows_per_block, bool enable_pdl) -> ()");
  m.impl("_norm_configure", &configure);
}

TORCH_LIBRARY_IMPL(fuseinfer, CUDA, m) {
  m.impl("rmsnorm", &rmsnorm);
  m.impl("gemma_rmsnorm", &gemma_rmsnorm);
  m.impl("fused_add_rmsnorm", &fused_add_rmsnorm);
  m.impl("gemma_fused_add_rmsnorm", &gemma_fused_add_rmsnorm);
}

}  // namespace fuseinfer::norm
