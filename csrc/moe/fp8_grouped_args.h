// The arguments every FP8 blockwise grouped GEMM configuration takes (the experts of a MoE
// layer: one GEMM per expert over the rows routed to it), and the registry that maps a
// configuration's name to its launcher. Each configuration is its own translation unit.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace fuseinfer::moe {

// For every expert e with rows [offsets[e], offsets[e + 1]) of a (sorted by expert):
//   out[rows] = (a[rows] · a_scales[rows]) @ (b[e] · b_scales[e])^T
//   a        [R, k] e4m3, rows contiguous (row stride k)
//   a_scales [R, k/128] fp32, K-major (row stride k/128): one scale per row and 128 columns
//   b        [E, n, k] e4m3, contiguous                  (the Hugging Face [out, in] weights)
//   b_scales [E, ceil(n/128), k/128] fp32, contiguous    (K-major 128 x 128 block scales)
//   out      [R, n] bf16 or fp16, contiguous; rows no expert covers are not written
//   offsets  [E + 1] int32 on the device, non-decreasing (read by the kernels only)
struct Fp8GroupedArgs {
  void* out;
  const void* a;
  const float* a_scales;
  const void* b;
  const float* b_scales;
  const int32_t* offsets;
  int num_experts, n, k;
  bool out_bf16;  // else fp16
  bool enable_pdl;
  int sm_count;
  cudaStream_t stream;
};

// Bytes of device scratch a configuration needs (the per-expert problem sizes, pointers,
// strides and scale layouts it builds on the device, then CUTLASS's own workspace), and the
// launch given that scratch. run returns an error message, empty on success.
struct Fp8GroupedConfig {
  std::string name;
  std::function<size_t(const Fp8GroupedArgs&)> scratch_bytes;
  std::function<std::string(const Fp8GroupedArgs&, void* scratch)> run;
};

void register_fp8_grouped_config(Fp8GroupedConfig config);
const Fp8GroupedConfig* find_fp8_grouped_config(const std::string& name);
std::vector<std::string> fp8_grouped_config_names();

}  // namespace fuseinfer::moe
