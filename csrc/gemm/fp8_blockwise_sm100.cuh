// The Blackwell (sm_100a) FP8 blockwise-scaled GEMM: the same contract as the Hopper one
// (1 x 128 activation scales, 128 x 128 weight scales, both M/N-major), on tcgen05 MMAs with
// 1-SM or 2-SM tiles. Compiled and compile-checked; no Blackwell GPU has run it here.
#pragma once

#include "fp8_blockwise_runner.cuh"

#include "cutlass/detail/blockwise_scale_layout.hpp"
#include "cutlass/gemm/dispatch_policy.hpp"

namespace fuseinfer::gemm::sm100 {

template <int TileM, int TileN, int ClusterM, int ClusterN, bool TwoSm, bool SwapAB,
          typename ElementD>
struct Fp8Blockwise {
  using TileShape = cute::Shape<cute::Int<TileM>, cute::Int<TileN>, cute::_128>;
  using ClusterShape = cute::Shape<cute::Int<ClusterM>, cute::Int<ClusterN>, cute::_1>;
  using ScaleConfig = std::conditional_t<SwapAB,
      cutlass::detail::Sm100BlockwiseScaleConfig<128, 1, 128>,
      cutlass::detail::Sm100BlockwiseScaleConfig<1, 128, 128>>;
  using LayoutD = std::conditional_t<SwapAB, cutlass::layout::ColumnMajor,
                                     cutlass::layout::RowMajor>;
  using MainloopSchedule = std::conditional_t<TwoSm,
      cutlass::gemm::KernelTmaWarpSpecializedBlockwise2SmSm100,
      cutlass::gemm::KernelTmaWarpSpecializedBlockwise1SmSm100>;
  using EpilogueSchedule = std::conditional_t<TwoSm,
      cutlass::epilogue::TmaWarpSpecialized2Sm, cutlass::epilogue::TmaWarpSpecialized1Sm>;
  // void: the default Blackwell tile scheduler (cluster launch control)
  using Gemm = typename Fp8BlockwiseGemmType<cutlass::arch::Sm100, TileShape, ClusterShape,
      ScaleConfig, LayoutD, MainloopSchedule, EpilogueSchedule, void, ElementD>::Gemm;
  using Launcher = Fp8BlockwiseLauncher<Gemm, ScaleConfig, SwapAB>;

  static size_t workspace_bytes(const Fp8GemmArgs& p) { return Launcher::workspace_bytes(p); }
  static std::string run(const Fp8GemmArgs& p, void* ws) { return Launcher::run(p, ws); }
};

}  // namespace fuseinfer::gemm::sm100

#define FUSEINFER_SM100_FP8_GEMM(NAME, TM, TN, CM, CN, TWO_SM, SWAP)                         \
  namespace fuseinfer::gemm::sm100 {                                                       \
  template <typename D>                                                                    \
  using NAME##_config = Fp8Blockwise<TM, TN, CM, CN, TWO_SM, SWAP, D>;                     \
  static const Fp8GemmRegistration<NAME##_config> NAME##_registration{#NAME};             \
  }
