// Instantiations of the quantize kernel (format x input type x expert mode) and the launch
// shape: a block covers a row's vectors at kUnroll per thread (at most the table's threads
// per block), halved while the real rows' units would leave SMs idle (a small batch spreads
// its rows over more blocks); the grid is one block per unit up to the table's blocks per
// SM times the SM count (a grid-stride loop does the rest).
#include "fp4_quant_kernel.cuh"

namespace fuseinfer::fp4_quant {
namespace {

constexpr int kSharedBlocksPerSm = 4;

template <Format F, typename T, ExpertMode M>
cudaError_t launch_mode(const QuantArgs& a, dim3 grid, dim3 block, bool pdl,
                        cudaStream_t stream) {
  // the offsets (kFew's unrolled scan may address up to kFewExperts + 1 of them)
  const int64_t offsets = a.experts > kFewExperts ? a.experts + 1 : kFewExperts + 1;
  const size_t smem = M == ExpertMode::kSingle ? 0 : offsets * sizeof(int32_t);
  return launch_kernel(quantize_kernel<F, T, M>, grid, block, smem, stream, pdl, a);
}

template <Format F, typename T>
cudaError_t launch_typed(const QuantArgs& a, dim3 grid, dim3 block, bool pdl,
                         cudaStream_t stream) {
  if (a.expert_offsets == nullptr) {
    return launch_mode<F, T, ExpertMode::kSingle>(a, grid, block, pdl, stream);
  }
  if (a.experts <= kFewExperts) {
    return launch_mode<F, T, ExpertMode::kFew>(a, grid, block, pdl, stream);
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
  if (a.out_cols > kMaxCols) return cudaErrorInvalidValue;  // the kernel's 32-bit columns
  auto units_of = [&](int64_t rows, int64_t t) {
    return rows * ((vecs + t * kUnroll - 1) / (t * kUnroll));
  };
  // enough threads for a row at kUnroll vectors each (a multiple of a warp), within the rule
  int64_t threads = (vecs + kUnroll - 1) / kUnroll;
  threads = (threads + 31) / 32 * 32;
  if (threads > threads_per_block) threads = threads_per_block;
  while (threads > 32 && units_of(a.rows, threads) < sm_count) {
    threads = (threads / 2 + 31) / 32 * 32;
  }
  const int64_t units = units_of(a.scale_rows, threads);
  // many experts: each block first copies the offsets to shared memory, so fewer blocks
  const int per_sm = a.experts > kFewExperts && blocks_per_sm > kSharedBlocksPerSm
                         ? kSharedBlocksPerSm
                         : blocks_per_sm;
  const int64_t max_grid = static_cast<int64_t>(sm_count) * per_sm;
  const int64_t grid = units < max_grid ? units : max_grid;
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
