// The arguments every FP8 blockwise GEMM configuration takes, and the registry that maps a
// configuration's name to its launcher. Each configuration is its own translation unit
// (built in parallel, and only for the arch it targets) that registers itself at load.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace fuseinfer::gemm {

// out [m, n] row-major (row stride ldo) = (a · a_scales) @ (b · b_scales)^T
//   a        [m, k] e4m3, row stride lda            a_scales [m, k/128] fp32, M-major:
//   b        [n, k] e4m3, row stride ldb              element (i, g) at i + g * a_scales_ld
//                                                   b_scales [ceil(n/128), k/128] fp32,
//                                                     N-major: (j, g) at j + g * b_scales_ld
struct Fp8GemmArgs {
  void* out;
  const void* a;
  const float* a_scales;
  const void* b;
  const float* b_scales;
  int m, n, k;
  int64_t ldo, lda, ldb, a_scales_ld, b_scales_ld;
  bool out_bf16;  // else fp16
  bool enable_pdl;
  int sm_count;
  cudaStream_t stream;
};

// Bytes of scratch a configuration needs for these arguments (StreamK partials), and the
// launch itself given that scratch. Both return an error message, empty on success.
struct Fp8GemmConfig {
  std::string name;
  std::function<size_t(const Fp8GemmArgs&)> workspace_bytes;
  std::function<std::string(const Fp8GemmArgs&, void* workspace)> run;
};

void register_fp8_gemm_config(Fp8GemmConfig config);
const Fp8GemmConfig* find_fp8_gemm_config(const std::string& name);
std::vector<std::string> fp8_gemm_config_names();

}  // namespace fuseinfer::gemm
