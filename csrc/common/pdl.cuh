// Programmatic dependent launch (PDL) helpers shared by every kernel family.
//
// Device side: a kernel launched with PDL may start while its predecessor is still
// running. It must call pdl_wait() before its first read of anything the predecessor
// writes, and may call pdl_launch_dependents() once it no longer needs the SMs to itself.
// Both are no-ops before sm_90 and when the launch did not use PDL.
#pragma once

#include <cuda_runtime.h>

namespace fuseinfer {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // The memory clobber keeps the compiler from hoisting global loads above the wait.
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Host side: launch `kernel` on `stream`, allowing the next kernel in the stream to
// overlap its prologue with this one's tail when `enable_pdl` is set.
template <typename... KernelArgs, typename... Args>
cudaError_t launch_kernel(void (*kernel)(KernelArgs...), dim3 grid, dim3 block,
                          size_t smem_bytes, cudaStream_t stream, bool enable_pdl,
                          Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = enable_pdl ? 1 : 0;
  config.attrs = attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace fuseinfer
