// Instantiations of the quantize kernel (format x input type x expert mode) and the launch
// shape: the table's threads per block and blocks per SM, then, while the grid would leave
// SMs idle, the grid doubled and the block halved (a small batch spreads its rows over
// more blocks).
#include "fp4_quant_kernel.cuh"

namespace fuseinfer::fp4_quant {
namespace {

template <Format F, typename T, ExpertMode M>
cudaError_t launch_mode(const QuantArgs& a, dim3 grid, dim3 block, bool pdl,
                        cudaStream_t stream) {
  const size_t smem = M == ExpertMode::kShared ? (a.experts + 1) * sizeof(int32_t) : 0;
  return launch_kernel(quantize_kernel<F, T, M>, grid, block, smem, stream, pdl, a);
}

template <Format F, typename T>
cudaError_t launch_typed(const QuantArgs& a, dim3 grid, dim3 block, bool pdl,
                         cudaStream_t stream) {
  if (a.expert_offsets == nullptr) {
    return launch_mode<F, T, ExpertMode::kSingle>(a, grid, block, pdl, stream);
  }
  if (a.experts <= kRegisterExperts) {
    return launch_mode<F, T, ExpertMode::kRegisters>(a, grid, block, pdl, stream);
  }
  return launch_mode<F, T, ExpertMode::kShared>(a, grid, block, pdl, stream);
}

template <Format F>
cudaError_t launch_format(const QuantArgs& a, InputType type, dim3 grid, dim3 block, bool pdl,
                          cudaStream_t stream) {
  if (type == InputType::kBFloat16) {
    return launch_typed<F, __nv_bfloat16>(a, grid, block, pdl, stream);
  }
  return launch_typed<F, __half>(a, grid, block, pdl, stream);
}

}  // namespace

cudaError_t launch_quantize(const QuantArgs& a, Format format, InputType type,
                            int threads_per_block, int blocks_per_sm, int sm_count, bool pdl,
                            cudaStream_t stream) {
  const int64_t vecs = a.out_cols / kElts;
  if (a.scale_rows == 0 || vecs == 0) return cudaSuccess;
  // never more threads than a row has vectors (kept a multiple of a warp)
  int64_t threads = threads_per_block;
  const int64_t row_threads = (vecs + 31) / 32 * 32;
  if (threads > row_threads) threads = row_threads;
  const int64_t max_grid = static_cast<int64_t>(sm_count) * blocks_per_sm;
  auto grid_for = [&](int64_t t) {
    const int64_t units = a.scale_rows * ((vecs + t - 1) / t);
    return units < max_grid ? units : max_grid;
  };
  int64_t grid = grid_for(threads);
  while (grid < sm_count && threads % 64 == 0) {
    threads /= 2;
    grid = grid_for(threads);
  }
  const dim3 g(static_cast<unsigned>(grid));
  const dim3 b(static_cast<unsigned>(threads));
  switch (format) {
    case Format::kNvfp4: return launch_format<Format::kNvfp4>(a, type, g, b, pdl, stream);
    case Format::kMxfp4: return launch_format<Format::kMxfp4>(a, type, g, b, pdl, stream);
    case Format::kMxfp8: return launch_format<Format::kMxfp8>(a, type, g, b, pdl, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fuseinfer::fp4_quant
