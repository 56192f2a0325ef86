// Launching one CUTLASS FP8 blockwise-scaled GEMM type on Fp8GemmArgs, for any arch: the
// problem, strides and scale layouts in CUTLASS terms (swapped when the configuration
// computes out^T = b · a^T so that a small M becomes the MMA's N), then can_implement,
// initialize and run. Included by each configuration's translation unit.
#pragma once

// Kernels wait on their predecessor (griddepcontrol) and may then be launched with PDL; must
// precede the CUTLASS headers. A translation unit defining FUSEINFER_FP8_GEMM_NO_PDL builds
// kernels without it (CUTLASS 4.2's StreamK scheduler does not compile with it) and never
// launches them with PDL, which would let them read inputs still being written.
#ifdef FUSEINFER_FP8_GEMM_NO_PDL
constexpr bool kFp8GemmPdl = false;
#else
constexpr bool kFp8GemmPdl = true;
#define CUTLASS_ENABLE_GDC_FOR_SM90 1
#define CUTLASS_ENABLE_GDC_FOR_SM100 1
#endif

#include <string>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"
#include "fp8_gemm_args.h"

namespace fuseinfer::gemm {

// Gemm: a cutlass::gemm::device::GemmUniversalAdapter; ScaleConfig: its blockwise scale
// configuration (granularity 1 x 128 on the activation side, 128 x 128 on the weights).
template <typename Gemm, typename ScaleConfig, bool SwapAB>
struct Fp8BlockwiseLauncher {
  using StrideA = typename Gemm::GemmKernel::StrideA;
  using StrideB = typename Gemm::GemmKernel::StrideB;
  using StrideD = typename Gemm::GemmKernel::StrideD;
  using ElementAB = typename Gemm::GemmKernel::ElementA;
  using ElementD = typename Gemm::GemmKernel::ElementD;

  static typename Gemm::Arguments arguments(const Fp8GemmArgs& p) {
    using namespace cute;
    // Swapped, the MMA's A is the weight b [n, k] and its B the activation a [m, k]; out
    // [m, n] row-major is then its D [n, m] stored column-major.
    const int mm = SwapAB ? p.n : p.m;
    const int mn = SwapAB ? p.m : p.n;
    StrideA stride_a = cutlass::make_cute_packed_stride(StrideA{}, make_shape(mm, p.k, 1));
    StrideB stride_b = cutlass::make_cute_packed_stride(StrideB{}, make_shape(mn, p.k, 1));
    StrideD stride_d = cutlass::make_cute_packed_stride(StrideD{}, make_shape(mm, mn, 1));
    get<0>(stride_a) = SwapAB ? p.ldb : p.lda;
    get<0>(stride_b) = SwapAB ? p.lda : p.ldb;
    if constexpr (SwapAB) {
      get<1>(stride_d) = p.ldo;
    } else {
      get<0>(stride_d) = p.ldo;
    }
    // The activation scales' column stride (>= m, padded for TMA) stands in for the
    // activation extent in the scale layouts, so the layouts address the real memory.
    const auto scale_shape = SwapAB
        ? make_shape(p.n, static_cast<int>(p.a_scales_ld), p.k, 1)
        : make_shape(static_cast<int>(p.a_scales_ld), p.n, p.k, 1);
    auto layout_sfa = ScaleConfig::tile_atom_to_shape_SFA(scale_shape);
    auto layout_sfb = ScaleConfig::tile_atom_to_shape_SFB(scale_shape);
    const auto* a = static_cast<const ElementAB*>(SwapAB ? p.b : p.a);
    const auto* b = static_cast<const ElementAB*>(SwapAB ? p.a : p.b);
    const float* sfa = SwapAB ? p.b_scales : p.a_scales;
    const float* sfb = SwapAB ? p.a_scales : p.b_scales;
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {mm, mn, p.k, 1},
        {a, stride_a, b, stride_b, sfa, layout_sfa, sfb, layout_sfb},
        {{}, nullptr, stride_d, static_cast<ElementD*>(p.out), stride_d}};
    args.epilogue.thread.alpha = 1.0f;
    args.epilogue.thread.beta = 0.0f;
    args.hw_info.sm_count = p.sm_count;
    return args;
  }

  static size_t workspace_bytes(const Fp8GemmArgs& p) {
    return Gemm::get_workspace_size(arguments(p));
  }

  static std::string run(const Fp8GemmArgs& p, void* workspace) {
    Gemm gemm;
    auto args = arguments(p);
    cutlass::Status status = gemm.can_implement(args);
    if (status != cutlass::Status::kSuccess) {
      return std::string("cannot run this problem: ") + cutlassGetStatusString(status);
    }
    status = gemm.initialize(args, workspace, p.stream);
    if (status == cutlass::Status::kSuccess) {
      status = gemm.run(p.stream, nullptr, p.enable_pdl && kFp8GemmPdl);
    }
    if (status != cutlass::Status::kSuccess) {
      return std::string("launch failed: ") + cutlassGetStatusString(status);
    }
    return {};
  }
};

// The CUTLASS GEMM type of one configuration, for any arch: e4m3 A (row-major) and B
// (column-major, i.e. K-major [n, k]), fp32 accumulation with the blockwise scales of
// ScaleConfig, out = accumulator (no source C) in ElementD with 16-byte stores.
template <typename ArchTag, typename TileShape, typename ClusterShape, typename ScaleConfig,
          typename LayoutD, typename MainloopSchedule, typename EpilogueSchedule,
          typename TileScheduler, typename ElementD>
struct Fp8BlockwiseGemmType {
  using Element = cutlass::float_e4m3_t;
  using LayoutSFA = decltype(ScaleConfig::deduce_layoutSFA());
  using LayoutSFB = decltype(ScaleConfig::deduce_layoutSFB());
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      ArchTag, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float,
      void, LayoutD, 8, ElementD, LayoutD, 8, EpilogueSchedule,
      cutlass::epilogue::fusion::LinearCombination<ElementD, float, void, float>>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      ArchTag, cutlass::arch::OpClassTensorOp,
      Element, cute::tuple<cutlass::layout::RowMajor, LayoutSFA>, 16,
      Element, cute::tuple<cutlass::layout::ColumnMajor, LayoutSFB>, 16,
      float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<
          static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      MainloopSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>,
                                                      Mainloop, Epilogue, TileScheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

// Registers the bf16- and fp16-output instantiations of one configuration under `name`.
template <template <typename> class Config>
struct Fp8GemmRegistration {
  explicit Fp8GemmRegistration(const char* name) {
    register_fp8_gemm_config(
        {name,
         [](const Fp8GemmArgs& p) {
           return p.out_bf16 ? Config<cutlass::bfloat16_t>::workspace_bytes(p)
                             : Config<cutlass::half_t>::workspace_bytes(p);
         },
         [](const Fp8GemmArgs& p, void* ws) {
           return p.out_bf16 ? Config<cutlass::bfloat16_t>::run(p, ws)
                             : Config<cutlass::half_t>::run(p, ws);
         }});
  }
};

}  // namespace fuseinfer::gemm
