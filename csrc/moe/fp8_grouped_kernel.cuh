// The FP8 blockwise-scaled grouped GEMM of a MoE layer, for any arch: CUTLASS ptr-array
// kernels, one problem per expert, with 1 x 128 activation and 128 x 128 weight scales
// applied to the fp32 accumulators once per 128-deep k block. Problem sizes, pointers,
// strides and scale layouts are built on the device from the expert offsets (no host sync,
// CUDA-graph safe). Scales are K-major on both sides, so an expert's activation scales are
// simply its rows of a_scales and its weight scales one contiguous block. The per-arch
// menus (fp8_grouped_sm90.cuh, fp8_grouped_sm100.cuh) pick tile, cluster, schedule, swap-AB.
#pragma once

// Kernels wait on their predecessor (griddepcontrol); must precede the CUTLASS headers.
#define CUTLASS_ENABLE_GDC_FOR_SM90 1
#define CUTLASS_ENABLE_GDC_FOR_SM100 1

#include <string>
#include <type_traits>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/detail/blockwise_scale_layout.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"
#include "fp8_grouped_args.h"

namespace fuseinfer::moe {

// The per-expert argument arrays CUTLASS reads, carved from one scratch buffer.
template <typename G>
struct GroupArrays {
  typename G::ProblemShape::UnderlyingProblemShape* problems;
  const typename G::Element** a;
  const typename G::Element** b;
  typename G::ElementOut** d;
  const float** sfa;
  const float** sfb;
  typename G::StrideA* stride_a;
  typename G::StrideB* stride_b;
  typename G::StrideD* stride_d;
  typename G::LayoutSFA* layout_sfa;
  typename G::LayoutSFB* layout_sfb;

  static size_t align(size_t bytes) { return (bytes + 127) / 128 * 128; }

  // Lays the arrays out from `base` (nullptr: only counts); returns the bytes used.
  size_t carve(char* base, int groups) {
    size_t used = 0;
    auto take = [&](auto*& ptr) {
      using T = std::remove_pointer_t<std::remove_reference_t<decltype(ptr)>>;
      ptr = base ? reinterpret_cast<T*>(base + used) : nullptr;
      used += align(sizeof(T) * static_cast<size_t>(groups));
    };
    take(problems);
    take(a);
    take(b);
    take(d);
    take(sfa);
    take(sfb);
    take(stride_a);
    take(stride_b);
    take(stride_d);
    take(layout_sfa);
    take(layout_sfb);
    return used;
  }
};

// One thread per expert: its problem (rows x n x k, or n x rows x k swapped), the pointers
// to its rows of a, a_scales and out and to its weights and weight scales, and the packed
// strides and scale layouts of those shapes.
template <typename G>
__global__ void build_group_arrays(Fp8GroupedArgs p, GroupArrays<G> arr) {
  using namespace cute;
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= p.num_experts) return;
  const int start = p.offsets[e];
  const int rows = p.offsets[e + 1] - start;
  const int n = p.n, k = p.k, groups_k = k / 128;
  const auto* tokens = static_cast<const typename G::Element*>(p.a) + int64_t(start) * k;
  const auto* weights = static_cast<const typename G::Element*>(p.b) + int64_t(e) * n * k;
  const float* token_scales = p.a_scales + int64_t(start) * groups_k;
  const float* weight_scales = p.b_scales + int64_t(e) * ((n + 127) / 128) * groups_k;
  arr.d[e] = static_cast<typename G::ElementOut*>(p.out) + int64_t(start) * n;
  // Swapped, the MMA's A is the expert's weights [n, k] and its B the tokens [rows, k];
  // out [rows, n] row-major is then its D [n, rows] stored column-major.
  const int mm = G::kSwapAB ? n : rows;
  const int mn = G::kSwapAB ? rows : n;
  arr.problems[e] = typename G::ProblemShape::UnderlyingProblemShape(mm, mn, k);
  arr.a[e] = G::kSwapAB ? weights : tokens;
  arr.b[e] = G::kSwapAB ? tokens : weights;
  arr.sfa[e] = G::kSwapAB ? weight_scales : token_scales;
  arr.sfb[e] = G::kSwapAB ? token_scales : weight_scales;
  arr.stride_a[e] = cutlass::make_cute_packed_stride(typename G::StrideA{}, make_shape(mm, k, 1));
  arr.stride_b[e] = cutlass::make_cute_packed_stride(typename G::StrideB{}, make_shape(mn, k, 1));
  arr.stride_d[e] = cutlass::make_cute_packed_stride(typename G::StrideD{}, make_shape(mm, mn, 1));
  arr.layout_sfa[e] = G::ScaleConfig::tile_atom_to_shape_SFA(make_shape(mm, mn, k, 1));
  arr.layout_sfb[e] = G::ScaleConfig::tile_atom_to_shape_SFB(make_shape(mm, mn, k, 1));
}

// One grouped GEMM type for any arch: e4m3 A (row-major) and B (column-major, i.e. K-major
// [n, k]) per group, fp32 accumulation with the blockwise scales of ScaleConfig, out =
// accumulator (no source C) in ElementD with 16-byte stores.
template <typename ArchTag, typename TileShape_, typename ClusterShape, typename ScaleConfig_,
          bool SwapAB, typename MainloopSchedule, typename EpilogueSchedule,
          typename ElementD>
struct Fp8GroupedGemm {
  using Self = Fp8GroupedGemm;
  static constexpr bool kSwapAB = SwapAB;
  using Element = cutlass::float_e4m3_t;
  using ElementOut = ElementD;
  using ProblemShape = cutlass::gemm::GroupProblemShape<cute::Shape<int, int, int>>;
  using TileShape = TileShape_;
  using ScaleConfig = ScaleConfig_;
  using LayoutSFA = decltype(ScaleConfig::deduce_layoutSFA());
  using LayoutSFB = decltype(ScaleConfig::deduce_layoutSFB());
  using LayoutD = std::conditional_t<SwapAB, cutlass::layout::ColumnMajor,
                                     cutlass::layout::RowMajor>;
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      ArchTag, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float,
      void, LayoutD*, 8, ElementD, LayoutD*, 8, EpilogueSchedule,
      cutlass::epilogue::fusion::LinearCombination<ElementD, float, void, float>>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      ArchTag, cutlass::arch::OpClassTensorOp,
      Element, cute::tuple<cutlass::layout::RowMajor*, LayoutSFA*>, 16,
      Element, cute::tuple<cutlass::layout::ColumnMajor*, LayoutSFB*>, 16,
      float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<
          static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      MainloopSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using StrideA = typename Kernel::InternalStrideA;
  using StrideB = typename Kernel::InternalStrideB;
  using StrideD = typename Kernel::InternalStrideD;

  static typename Gemm::Arguments arguments(const Fp8GroupedArgs& p, GroupArrays<Self> arr) {
    cutlass::KernelHardwareInfo hw_info;
    cudaGetDevice(&hw_info.device_id);
    hw_info.sm_count = p.sm_count;
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGrouped,
        {p.num_experts, arr.problems, nullptr},  // sizes on the device only
        {arr.a, arr.stride_a, arr.b, arr.stride_b, arr.sfa, arr.layout_sfa, arr.sfb,
         arr.layout_sfb},
        {{}, nullptr, arr.stride_d, arr.d, arr.stride_d},
        hw_info};
    auto& fusion = args.epilogue.thread;
    fusion.alpha = 1.0f;
    fusion.beta = 0.0f;
    fusion.alpha_ptr = nullptr;
    fusion.beta_ptr = nullptr;
    fusion.alpha_ptr_array = nullptr;
    fusion.beta_ptr_array = nullptr;
    fusion.dAlpha = {cute::_0{}, cute::_0{}, 0};
    fusion.dBeta = {cute::_0{}, cute::_0{}, 0};
    return args;
  }

  static size_t arrays_bytes(int groups) { return GroupArrays<Self>{}.carve(nullptr, groups); }

  static size_t scratch_bytes(const Fp8GroupedArgs& p) {
    GroupArrays<Self> none{};
    none.carve(nullptr, p.num_experts);
    return arrays_bytes(p.num_experts) + Gemm::get_workspace_size(arguments(p, none));
  }

  static std::string run(const Fp8GroupedArgs& p, void* scratch) {
    GroupArrays<Self> arr{};
    const size_t used = arr.carve(static_cast<char*>(scratch), p.num_experts);
    // A plain launch: it starts once the producers of offsets, a and a_scales finished.
    build_group_arrays<Self><<<(p.num_experts + 127) / 128, 128, 0, p.stream>>>(p, arr);
    if (cudaError_t error = cudaGetLastError(); error != cudaSuccess) {
      return std::string("building the expert arrays failed: ") + cudaGetErrorString(error);
    }
    Gemm gemm;
    auto args = arguments(p, arr);
    cutlass::Status status = gemm.can_implement(args);
    if (status != cutlass::Status::kSuccess) {
      return std::string("cannot run this problem: ") + cutlassGetStatusString(status);
    }
    status = gemm.initialize(args, static_cast<char*>(scratch) + used, p.stream);
    if (status == cutlass::Status::kSuccess) {
      // Never with PDL: the grouped tile scheduler reads the problem sizes before the
      // kernel's dependency wait, so it must not start while build_group_arrays runs. It
      // still lets its own dependents (launched with PDL) start early.
      status = gemm.run(p.stream, nullptr, false);
    }
    if (status != cutlass::Status::kSuccess) {
      return std::string("launch failed: ") + cutlassGetStatusString(status);
    }
    return {};
  }
};

// Registers the bf16- and fp16-output instantiations of one configuration under `name`.
template <template <typename> class Config>
struct Fp8GroupedRegistration {
  explicit Fp8GroupedRegistration(const char* name) {
    register_fp8_grouped_config(
        {name,
         [](const Fp8GroupedArgs& p) {
           return p.out_bf16 ? Config<cutlass::bfloat16_t>::scratch_bytes(p)
                             : Config<cutlass::half_t>::scratch_bytes(p);
         },
         [](const Fp8GroupedArgs& p, void* scratch) {
           return p.out_bf16 ? Config<cutlass::bfloat16_t>::run(p, scratch)
                             : Config<cutlass::half_t>::run(p, scratch);
         }});
  }
};

}  // namespace fuseinfer::moe
