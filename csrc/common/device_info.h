// Cached per-device facts the launchers need, read once through the CUDA runtime (no
// dependency on ATen's CUDA context, which drags in cuBLAS/cuSPARSE headers).
#pragma once

#include <cuda_runtime.h>

#include <atomic>

namespace fuseinfer {

// Compute capability as major * 10 + minor (90 for Hopper), cached per device.
inline int compute_capability(int device) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  if (device < 0 || device >= kMaxDevices) return 0;
  int cc = cache[device].load(std::memory_order_relaxed);
  if (cc == 0) {
    int major = 0, minor = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    cc = major * 10 + minor;
    cache[device].store(cc, std::memory_order_relaxed);
  }
  return cc;
}

}  // namespace fuseinfer
