// Asynchronous global -> shared copies (cp.async, sm_80+): a thread's copies land in
// shared memory without passing through its registers, so a warp can keep several
// loads in flight per lane at no register cost. Completion is per thread: after
// cp_async_wait<N> a thread sees its own copies but, without a barrier, not other
// threads'.
#pragma once

#include <cstdint>

namespace fuseinfer {

// BYTES (8 or 16) from src to dst_smem; with !valid nothing is read and dst is zero-filled
// (src must still be a mapped address). Cached in L1 (.ca) like a plain load: a thread's
// run of 32 bytes or more takes several copies of one sector, and through L1 the later
// ones hit instead of reading the sector from L2 again.
template <int BYTES>
__device__ __forceinline__ void cp_async(void* dst_smem, const void* src, bool valid) {
  static_assert(BYTES == 8 || BYTES == 16, "cp.async copies 8 or 16 bytes here");
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(dst_smem));
  const int n = valid ? BYTES : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(src),
               "n"(BYTES), "r"(n)
               : "memory");
}

// Closes the thread's copies issued since the last commit into one group.
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most N of the thread's groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

}  // namespace fuseinfer
