// The peer-mapped workspace every rank registers once: a signal area (per-block flags
// for the barriers between ranks) followed by a staging area and a result area of
// `max_bytes` each. Rank r's workspace is mapped into every other rank's address space
// (CUDA IPC), so a kernel reads and writes its peers' areas directly.
#pragma once

#include <cstdint>

namespace fuseinfer::allreduce {

inline constexpr int kMaxRanks = 8;
inline constexpr int kMaxBlocks = 64;

struct Signal {
  uint32_t start[kMaxBlocks][kMaxRanks];
  uint32_t mid[kMaxBlocks][kMaxRanks];
  uint32_t end[kMaxBlocks][kMaxRanks];
  uint32_t calls[kMaxBlocks];  // this rank's per-block call counter: the flag value
};

// Signal area rounded up so the staging area stays 256-byte aligned.
inline constexpr int64_t kSignalBytes = (sizeof(Signal) + 255) / 256 * 256;

struct Peers {
  char* base[kMaxRanks];  // every rank's workspace, mapped here (base[rank] is our own)
  int64_t max_bytes;      // size of each of the staging and result areas

  __device__ __forceinline__ Signal* signal(int r) const {
    return reinterpret_cast<Signal*>(base[r]);
  }
  template <typename T>
  __device__ __forceinline__ T* stage(int r) const {
    return reinterpret_cast<T*>(base[r] + kSignalBytes);
  }
  template <typename T>
  __device__ __forceinline__ T* result(int r) const {
    return reinterpret_cast<T*>(base[r] + kSignalBytes + max_bytes);
  }
};

__device__ __forceinline__ void store_flag(uint32_t* p, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ uint32_t load_flag(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Block b of every rank meets block b of every other rank: each thread fences its own
// writes to system scope, thread r < world raises our flag in rank r's slot array and
// waits for rank r's flag in ours. Only block b's data is ordered, so a kernel lets
// block b read only what block b of each peer wrote before the barrier.
template <int kWorld>
__device__ __forceinline__ void barrier(const Peers& peers, int rank, uint32_t flag,
                                        uint32_t (Signal::*slots)[kMaxBlocks][kMaxRanks]) {
  __threadfence_system();
  __syncthreads();
  if (threadIdx.x < kWorld) {
    const int peer = threadIdx.x;
    store_flag(&(peers.signal(peer)->*slots)[blockIdx.x][rank], flag);
    const uint32_t* mine = &(peers.signal(rank)->*slots)[blockIdx.x][peer];
    while (load_flag(mine) != flag) {
    }
  }
  __syncthreads();
}

// This call's flag for this block: one more than the last (the counters of all ranks
// advance together, since every rank launches the same grids in the same order).
__device__ __forceinline__ uint32_t next_flag(const Peers& peers, int rank) {
  __shared__ uint32_t flag;
  if (threadIdx.x == 0) {
    flag = peers.signal(rank)->calls[blockIdx.x] + 1;
    peers.signal(rank)->calls[blockIdx.x] = flag;
  }
  __syncthreads();
  return flag;
}

}  // namespace fuseinfer::allreduce
