// The Hopper (sm_90a) FP8 blockwise-scaled GEMM: TMA warp-specialized CUTLASS kernels with
// 1 x 128 activation and 128 x 128 weight scales applied to the fp32 accumulators once per
// 128-deep k block. One template covers the menu: tile, cluster, Cooperative or Pingpong,
// persistent or StreamK, swap-AB (small M as the MMA's N).
#pragma once

#include "fp8_blockwise_runner.cuh"

#include "cutlass/detail/blockwise_scale_layout.hpp"
#include "cutlass/gemm/dispatch_policy.hpp"

namespace fuseinfer::gemm::sm90 {

enum class Schedule { kCooperative, kPingpong };
enum class Tiles { kPersistent, kStreamK };

template <int TileM, int TileN, int ClusterM, int ClusterN, Schedule S, Tiles T, bool SwapAB,
          typename ElementD>
struct Fp8Blockwise {
  using TileShape = cute::Shape<cute::Int<TileM>, cute::Int<TileN>, cute::_128>;
  using ClusterShape = cute::Shape<cute::Int<ClusterM>, cute::Int<ClusterN>, cute::_1>;
  // Scale granularity (M, N, K) of the MMA's operands: the activation side has one scale
  // per row, the weight side one per 128 rows; both stored M/N-major (what sm_90 reads).
  using ScaleConfig = std::conditional_t<SwapAB,
      cutlass::detail::Sm90BlockwiseScaleConfig<128, 1, 128>,
      cutlass::detail::Sm90BlockwiseScaleConfig<1, 128, 128>>;
  using LayoutD = std::conditional_t<SwapAB, cutlass::layout::ColumnMajor,
                                     cutlass::layout::RowMajor>;
  static constexpr bool kPingpong = S == Schedule::kPingpong;
  using MainloopSchedule = std::conditional_t<kPingpong,
      cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8Blockwise,
      cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8Blockwise>;
  using EpilogueSchedule = std::conditional_t<kPingpong,
      cutlass::epilogue::TmaWarpSpecialized, cutlass::epilogue::TmaWarpSpecializedCooperative>;
  using TileScheduler = std::conditional_t<T == Tiles::kStreamK,
      cutlass::gemm::StreamKScheduler, cutlass::gemm::PersistentScheduler>;
  using Gemm = typename Fp8BlockwiseGemmType<cutlass::arch::Sm90, TileShape, ClusterShape,
      ScaleConfig, LayoutD, MainloopSchedule, EpilogueSchedule, TileScheduler,
      ElementD>::Gemm;
  using Launcher = Fp8BlockwiseLauncher<Gemm, ScaleConfig, SwapAB>;

  static size_t workspace_bytes(const Fp8GemmArgs& p) { return Launcher::workspace_bytes(p); }
  static std::string run(const Fp8GemmArgs& p, void* ws) { return Launcher::run(p, ws); }
};

}  // namespace fuseinfer::gemm::sm90

// One menu entry: FUSEINFER_SM90_FP8_GEMM(name, TileM, TileN, ClusterM, ClusterN, Schedule,
// Tiles, SwapAB) in its own translation unit.
#define FUSEINFER_SM90_FP8_GEMM(NAME, TM, TN, CM, CN, SCHEDULE, TILES, SWAP)                 \
  namespace fuseinfer::gemm::sm90 {                                                        \
  template <typename D>                                                                    \
  using NAME##_config = Fp8Blockwise<TM, TN, CM, CN, Schedule::SCHEDULE, Tiles::TILES, SWAP, \
                                     D>;                                                   \
  static const Fp8GemmRegistration<NAME##_config> NAME##_registration{#NAME};             \
  }
