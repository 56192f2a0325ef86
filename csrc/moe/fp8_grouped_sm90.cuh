// The Hopper (sm_90a) menu of the grouped GEMM: TMA warp-specialized Cooperative or
// Pingpong ptr-array kernels with FP8 blockwise scaling (fp8_grouped_kernel.cuh).
#pragma once

#include "fp8_grouped_kernel.cuh"

namespace fuseinfer::moe::sm90 {

enum class Schedule { kCooperative, kPingpong };

template <int TileM, int TileN, int ClusterM, int ClusterN, Schedule S, bool SwapAB,
          typename ElementD>
using Fp8GroupedBlockwise = Fp8GroupedGemm<
    cutlass::arch::Sm90, cute::Shape<cute::Int<TileM>, cute::Int<TileN>, cute::_128>,
    cute::Shape<cute::Int<ClusterM>, cute::Int<ClusterN>, cute::_1>,
    std::conditional_t<SwapAB,
        cutlass::detail::Sm90BlockwiseScaleConfig<128, 1, 128, cute::GMMA::Major::K,
                                                  cute::GMMA::Major::K>,
        cutlass::detail::Sm90BlockwiseScaleConfig<1, 128, 128, cute::GMMA::Major::K,
                                                  cute::GMMA::Major::K>>,
    SwapAB,
    std::conditional_t<S == Schedule::kPingpong,
        cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpongFP8Blockwise,
        cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8Blockwise>,
    std::conditional_t<S == Schedule::kPingpong,
        cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong,
        cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative>,
    ElementD>;

}  // namespace fuseinfer::moe::sm90

// One menu entry: FUSEINFER_SM90_FP8_GROUPED(name, TileM, TileN, ClusterM, ClusterN,
// Schedule, SwapAB) in its own translation unit.
#define FUSEINFER_SM90_FP8_GROUPED(NAME, TM, TN, CM, CN, SCHEDULE, SWAP)                      \
  namespace fuseinfer::moe::sm90 {                                                         \
  template <typename D>                                                                    \
  using NAME##_config = Fp8GroupedBlockwise<TM, TN, CM, CN, Schedule::SCHEDULE, SWAP, D>;  \
  static const Fp8GroupedRegistration<NAME##_config> NAME##_registration{#NAME};           \
  }
