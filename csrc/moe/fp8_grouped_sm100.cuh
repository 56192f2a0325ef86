// The Blackwell (sm_100a) menu of the grouped GEMM: tcgen05 ptr-array kernels with FP8
// blockwise scaling, 1-SM tiles (fp8_grouped_kernel.cuh). Compiled and compile-checked; no
// Blackwell GPU has run them here.
#pragma once

#include "fp8_grouped_kernel.cuh"

namespace fuseinfer::moe::sm100 {

template <int TileM, int TileN, bool SwapAB, typename ElementD>
using Fp8GroupedBlockwise = Fp8GroupedGemm<
    cutlass::arch::Sm100, cute::Shape<cute::Int<TileM>, cute::Int<TileN>, cute::_128>,
    cute::Shape<cute::_1, cute::_1, cute::_1>,
    std::conditional_t<SwapAB,
        cutlass::detail::Sm100BlockwiseScaleConfig<128, 1, 128, cute::UMMA::Major::K,
                                                   cute::UMMA::Major::K>,
        cutlass::detail::Sm100BlockwiseScaleConfig<1, 128, 128, cute::UMMA::Major::K,
                                                   cute::UMMA::Major::K>>,
    SwapAB, cutlass::gemm::KernelPtrArrayTmaWarpSpecializedBlockwise1SmSm100,
    cutlass::epilogue::PtrArrayTmaWarpSpecialized1Sm, ElementD>;

}  // namespace fuseinfer::moe::sm100

#define FUSEINFER_SM100_FP8_GROUPED(NAME, TM, TN, SWAP)                                       \
  namespace fuseinfer::moe::sm100 {                                                        \
  template <typename D>                                                                    \
  using NAME##_config = Fp8GroupedBlockwise<TM, TN, SWAP, D>;                              \
  static const Fp8GroupedRegistration<NAME##_config> NAME##_registration{#NAME};           \
  }
