// Cached per-device facts the launchers need, read once through the CUDA runtime (no
// dependency on ATen's CUDA context, which drags in cuBLAS/cuSPARSE headers).
#pragma once

#include <cuda_runtime.h>

#include <atomic>

namespace fuseinfer {

// One device attribute, read once per device and cached (never 0 once read on a real GPU).
template <cudaDeviceAttr Attr>
inline int cached_device_attribute(int device) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  if (device < 0 || device >= kMaxDevices) return 0;
  int value = cache[device].load(std::memory_order_relaxed);
  if (value == 0) {
    cudaDeviceGetAttribute(&value, Attr, device);
    cache[device].store(value, std::memory_order_relaxed);
  }
  return value;
}

// Compute capability as major * 10 + minor (90 for Hopper), cached per device.
inline int compute_capability(int device) {
  return cached_device_attribute<cudaDevAttrComputeCapabilityMajor>(device) * 10 +
         cached_device_attribute<cudaDevAttrComputeCapabilityMinor>(device);
}

// Streaming multiprocessors, cached per device (persistent kernels size their grid by it).
inline int device_sm_count(int device) {
  return cached_device_attribute<cudaDevAttrMultiProcessorCount>(device);
}

}  // namespace fuseinfer
