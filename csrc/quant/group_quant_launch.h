// The per-token-group FP8 quantizer's host entry points. group_quant_kernel.cuh is
// compiled twice, by group_quant_precise.cu and by group_quant_fast_math.cu (the latter
// with --use_fast_math, a per-file flag in module.json); each copy lives in its own
// namespace so the two sets of kernel instantiations never share a symbol.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fuseinfer::quant {

enum class InputType : int { kBFloat16 = 0, kHalf = 1, kFloat = 2 };

// One quantization: input [rows, groups * group_size] (contiguous last dim, any row
// stride), q [rows, groups * group_size] e4m3, scales written through their two strides
// (row-major or M-major, whatever the caller allocated).
struct GroupQuantArgs {
  const void* input;
  uint8_t* q;  // e4m3 bytes
  float* scales;
  int64_t rows;
  int64_t groups;  // per row
  int64_t input_stride;
  int64_t q_stride;
  int64_t scale_row_stride;
  int64_t scale_group_stride;
  bool ue8m0;
};

// Both return the launch's status; group_size must be a power of two in [16, 1024].
namespace precise {
cudaError_t launch_group_quant_fp8(const GroupQuantArgs& args, InputType type, int group_size,
                                   bool pdl, cudaStream_t stream);
}  // namespace precise
namespace fast_math {
cudaError_t launch_group_quant_fp8(const GroupQuantArgs& args, InputType type, int group_size,
                                   bool pdl, cudaStream_t stream);
}  // namespace fast_math

}  // namespace fuseinfer::quant
