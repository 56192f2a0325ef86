// Paged split-KV decode on tensor cores with K, V and P held in registers.
//
// One CTA takes one (request, KV head, split); its warps take turns over 16-key chunks of
// the split's range and merge their softmax states through shared memory at the end.
// Each warp keeps STAGES - 1 chunks in flight: cp.async copies each lane's K and V runs
// into a ring of its own in shared memory (no register cost, no barrier: a lane reads
// back only what it copied), the decode being bound by how many bytes are in flight per
// SM. Per chunk a warp computes S = Q K^T and O += P V with mma.m16n8k16 (the q heads of
// the KV group are the 16 rows, padded with zeros), with K, V and P in registers:
//  - S: K is the B operand (head_dim x keys). The dot sums over head_dim, so head_dim is
//    permuted (Q the same way) so that each thread's B elements of every k-tile are one
//    contiguous run of the key's row: lane (g, q) reads head_dim/4 values of key g.
//  - O: V is the B operand (keys x head_dim). head_dim is the output's dimension, so its
//    permutation is undone at the store: lane (g, q) reads head_dim/8 contiguous values of
//    the keys 2q, 2q+1, 2q+8, 2q+9 and pairs them by key with byte permutes.
//  - P: S's accumulator layout is the A operand layout of P V (the usual register reuse).
// FP8 (e4m3) caches convert in registers with Hopper's paired convert and multiply in
// float16; bf16/fp16 caches multiply in their own type. Scales stay out of the loop
// (k_scale joins the softmax scale, v_scale multiplies the finished output).
// Outputs match the Triton decode kernel: a request that fits one piece is finished here
// (sink, v_scale, out and lse); otherwise each piece writes its normalized partial and
// base-2 lse for the merge kernel.
#pragma once

#include <cmath>

#include "async_copy.cuh"
#include "decode_mma_args.h"
#include "decode_mma_epilogue.cuh"
#include "mma_fragments.cuh"
#include "pdl.cuh"

namespace fuseinfer::attention {

// The cache slot of a request's key (its page from the page table).
__device__ __forceinline__ int64_t slot_of(const DecodeMmaArgs& a, const int32_t* page_row,
                                           int key) {
  if (a.page_shift >= 0) {
    const int64_t page = page_row[key >> a.page_shift];
    return (page << a.page_shift) + (key & (a.page_size - 1));
  }
  const int64_t page = page_row[key / a.page_size];
  return page * a.page_size + key % a.page_size;
}

// One warp's chunk in its ring stage: per lane its two K runs (keys g, g + 8) and four V
// runs (keys 2q, 2q + 1, 2q + 8, 2q + 9), cut into copies of at most 16 bytes; copy i of
// every lane side by side (lane-consecutive 16-byte slots: conflict-free reads).
template <typename KvT, int HEAD_DIM>
struct ChunkLayout {
  static constexpr int kKBytes = HEAD_DIM / 4 * sizeof(KvT);  // a lane's run of one key
  static constexpr int kVBytes = HEAD_DIM / 8 * sizeof(KvT);
  static constexpr int kKCopy = kKBytes < 16 ? kKBytes : 16;
  static constexpr int kVCopy = kVBytes < 16 ? kVBytes : 16;
  static constexpr int kKCopies = kKBytes / kKCopy;  // per run
  static constexpr int kVCopies = kVBytes / kVCopy;
  static constexpr int kVOffset = 32 * 2 * kKBytes;
  static constexpr int kBytes = kVOffset + 32 * 4 * kVBytes;  // one warp's chunk
  __device__ static int k_at(int run, int i, int lane) {
    return ((run * kKCopies + i) * 32 + lane) * kKCopy;
  }
  __device__ static int v_at(int run, int i, int lane) {
    return kVOffset + ((run * kVCopies + i) * 32 + lane) * kVCopy;
  }
};

// QT: the query (and output) type; KvT: the cache's (QT, or uint8_t for e4m3);
// HEAD_DIM 64 or 128; WARPS per CTA; STAGES chunks in each warp's ring.
template <typename QT, typename KvT, int HEAD_DIM, int WARPS, int STAGES>
__global__ void __launch_bounds__(WARPS * 32)
    decode_mma_kernel(const DecodeMmaArgs a) {
  constexpr bool kFp8 = sizeof(KvT) == 1;
  using MmaT = std::conditional_t<kFp8, __half, QT>;
  constexpr int kKTiles = HEAD_DIM / 16;  // k-tiles of S = Q K^T
  constexpr int kNTiles = HEAD_DIM / 8;   // n-tiles of O = P V
  constexpr int kKRun = HEAD_DIM / 4;     // K values a lane reads per key
  constexpr int kVRun = HEAD_DIM / 8;     // V values a lane reads per key
  constexpr int kAccRow = acc_row<HEAD_DIM>();
  using KRun = Words<kKRun * sizeof(KvT) / 4>;
  using VRun = Words<kVRun * sizeof(KvT) / 4>;
  using Layout = ChunkLayout<KvT, HEAD_DIM>;
  static_assert(STAGES >= 2 && STAGES <= 4, "2 to 4 ring stages");

  const int req = blockIdx.x;
  const int kv_head = blockIdx.y;
  const int split = blockIdx.z;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;  // mma group: A/C rows g and g + 8, B column g
  const int qd = lane % 4;

  // the warps' rings, then (reused) the warps' states and the merge's weights
  extern __shared__ __align__(16) float smem[];
  pdl_wait();
  const int kv_len = a.kv_lens[req];
  // this split's range, as the Triton kernel and the merge kernel cut it
  int first = 0;
  if (a.window_left >= 0) first = max(kv_len - 1 - a.window_left, 0);
  const int aligned = (first / a.block_n) * a.block_n;
  const int visible = kv_len - aligned;
  int pieces = min((visible + a.min_chunk - 1) / a.min_chunk, a.max_splits);
  pieces = max(pieces, 1);
  const int per_piece = (visible + pieces - 1) / pieces;
  const int chunk = (per_piece + a.block_n - 1) / a.block_n * a.block_n;
  const int start = aligned + split * chunk;
  const int end = min(start + chunk, kv_len);
  if (split >= pieces || start >= end) {
    // An empty piece the merge still reads (rounding the pieces up to block_n can leave the
    // last ones empty): weight zero. A request with no keys (a padded row): zeros and lse
    // -inf. Both as the Triton kernel writes them.
    if (split < pieces && pieces > 1) {
      for (int i = threadIdx.x; i < a.group * HEAD_DIM; i += WARPS * 32) {
        const int head = kv_head * a.group + i / HEAD_DIM;
        const int64_t part = req * a.part_stride_req + head * a.part_stride_head +
                             split * a.part_stride_split;
        a.part_out[part * HEAD_DIM + i % HEAD_DIM] = 0.f;
        if (i % HEAD_DIM == 0) a.part_lse[part] = -INFINITY;
      }
      if (a.merge_counters != nullptr) {
        merge_if_last<QT, HEAD_DIM, WARPS>(a, req, kv_head, pieces, smem);
      }
    }
    if (split == 0 && pieces == 1) {
      for (int i = threadIdx.x; i < a.group * HEAD_DIM; i += WARPS * 32) {
        const int head = kv_head * a.group + i / HEAD_DIM;
        store_float(static_cast<QT*>(a.out) + req * a.o_stride_req + head * a.o_stride_head +
                        i % HEAD_DIM, 0.f);
        if (a.lse != nullptr && i % HEAD_DIM == 0) {
          a.lse[req * a.lse_stride_req + head] = -INFINITY;
        }
      }
    }
    pdl_launch_dependents();
    return;
  }

  const int32_t* page_row = a.page_table + req * a.page_stride_row;
  const KvT* kc = static_cast<const KvT*>(a.k_cache) + kv_head * a.k_stride_head;
  const KvT* vc = static_cast<const KvT*>(a.v_cache) + kv_head * a.v_stride_head;

  // K: keys base + g and base + 8 + g; V: keys base + 2q, 2q + 1, 2q + 8, 2q + 9
  // A chunk starts at a multiple of 16, so with pages of a multiple of 16 slots its keys
  // share a page. Those pages are read from the page table 32 at a time, one per lane (the
  // first 32 before the first chunk), and a chunk takes its page with a shuffle: no
  // page-table read waits between a chunk and its K/V loads but one per 32 pages.
  const bool page_per_chunk = a.page_size % 16 == 0;
  auto page_of = [&](int key) { return a.page_shift >= 0 ? key >> a.page_shift : key / a.page_size; };
  auto read_window = [&](int p0) {  // pages past the range's last are not read
    const int p = p0 + lane;
    return p <= page_of(end - 1) ? page_row[p] : 0;
  };
  int win_base = page_of(max(start, first));  // the page of the first key read
  int32_t win_cur = page_per_chunk ? read_window(win_base) : 0;
  // Q rows g and g + 8 (the group's heads; zeros past it): read here, unpacked below
  // once the first chunk's loads are out (the page-table read above and these overlap)
  Words<kKRun / 2> q_run[2];  // kKRun values of QT, two per word
  {
    const QT* qbase = static_cast<const QT*>(a.q) + req * a.q_stride_req;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = g + 8 * half;
      if (row < a.group) {
        const QT* src = qbase + (static_cast<int64_t>(kv_head) * a.group + row) * a.q_stride_head +
                        qd * kKRun;
        q_run[half] = load_run<kKRun * 2>(src);
      } else {
        zero(q_run[half]);
      }
    }
  }

  // cp.async of a chunk's runs into a ring stage (zeros for keys outside the range)
  auto issue_chunk = [&](int base, char* stage) {
    const int key0 = max(base, first);  // a key the page table maps
    int64_t chunk_slot = 0;
    if (page_per_chunk) {  // warp-uniform: every lane takes the same chunk
      const int page = page_of(key0);
      if (page - win_base >= 32) {  // pages only grow along a warp's chunks
        win_base = page;
        win_cur = read_window(win_base);
      }
      const int32_t slot_page = __shfl_sync(0xffffffffu, win_cur, page - win_base);
      chunk_slot = (static_cast<int64_t>(slot_page) - page) * a.page_size;
    }
    auto slot = [&](int key) {
      return page_per_chunk ? chunk_slot + key : slot_of(a, page_row, key);
    };
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int key = base + 8 * j + g;
      // below a window's first key: never read
      const bool ok = key < end && key >= first;
      const char* src = reinterpret_cast<const char*>(
          ok ? kc + slot(key) * a.k_stride_slot + qd * kKRun : kc);
#pragma unroll
      for (int i = 0; i < Layout::kKCopies; ++i) {
        cp_async<Layout::kKCopy>(stage + Layout::k_at(j, i, lane), src + i * Layout::kKCopy, ok);
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int key = base + 2 * qd + (j & 1) + 8 * (j >> 1);
      // slots past the length may hold anything, NaN too: zeros instead
      const bool ok = key < end && key >= first;
      const char* src = reinterpret_cast<const char*>(
          ok ? vc + slot(key) * a.v_stride_slot + g * kVRun : vc);
#pragma unroll
      for (int i = 0; i < Layout::kVCopies; ++i) {
        cp_async<Layout::kVCopy>(stage + Layout::v_at(j, i, lane), src + i * Layout::kVCopy, ok);
      }
    }
  };
  // a chunk's runs back from the ring into registers (the lane's own copies)
  auto read_chunk = [&](const char* stage, KRun (&kr)[2], VRun (&vr)[4]) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int i = 0; i < Layout::kKCopies; ++i) {
        copy_words<Layout::kKCopy>(kr[j].w + i * Layout::kKCopy / 4,
                                   stage + Layout::k_at(j, i, lane));
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int i = 0; i < Layout::kVCopies; ++i) {
        copy_words<Layout::kVCopy>(vr[j].w + i * Layout::kVCopy / 4,
                                   stage + Layout::v_at(j, i, lane));
      }
    }
  };
  // The first STAGES - 1 chunks go out before Q is unpacked (one group each, empty past
  // the range, so the waits below count the same for every warp).
  char* ring = reinterpret_cast<char*>(smem) + warp * STAGES * Layout::kBytes;
  const int step = WARPS * 16;
  const int first_base = start + warp * 16;
#pragma unroll
  for (int st = 0; st < STAGES - 1; ++st) {
    if (first_base + st * step < end) issue_chunk(first_base + st * step, ring + st * Layout::kBytes);
    cp_async_commit();
  }

  // Q rows g and g + 8 (the group's heads; zeros past it), head_dim permuted like K: read
  // above, unpacked here, once the first chunk's loads are out
  uint32_t qa[kKTiles][4];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
#pragma unroll
    for (int kt = 0; kt < kKTiles; ++kt) {
      uint32_t lo = q_run[half].w[2 * kt], hi = q_run[half].w[2 * kt + 1];
      if constexpr (!std::is_same_v<MmaT, QT>) {  // bf16 q against an FP8 cache
        const float2 l = unpack2<QT>(lo), h = unpack2<QT>(hi);
        lo = pack2<MmaT>(l.x, l.y);
        hi = pack2<MmaT>(h.x, h.y);
      }
      qa[kt][half] = lo;       // columns 2q, 2q + 1
      qa[kt][2 + half] = hi;   // columns 2q + 8, 2q + 9
    }
  }

  float qk_scale = a.sm_scale;
  if (a.k_scale != nullptr) qk_scale *= a.k_scale[kv_head * a.k_scale_stride];
  const float qk_scale_log2 = qk_scale * kLog2e;
  const bool capped = a.logit_cap > 0.f;
  const float inv_cap = capped ? 1.f / a.logit_cap : 0.f;

  float acc[kNTiles][4];
#pragma unroll
  for (int t = 0; t < kNTiles; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY};  // rows g, g + 8 (base 2, shared by the row's lanes)
  float l_run[2] = {0.f, 0.f};              // this lane's part of the row's sum

  // one chunk: S = Q K^T, the online softmax, O += P V
  auto chunk_math = [&](const KRun (&kr)[2], const VRun (&vr)[4], int base) {
    float s[2][4];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
      for (int kt = 0; kt < kKTiles; ++kt) {
        uint32_t b0, b1;
        if constexpr (kFp8) {
          const uint32_t w = kr[j].w[kt];
          b0 = e4m3x2_to_f16x2(w);
          b1 = e4m3x2_to_f16x2(w >> 16);
        } else {
          b0 = kr[j].w[2 * kt];
          b1 = kr[j].w[2 * kt + 1];
        }
        mma16816<MmaT>(s[j], qa[kt], b0, b1);
      }
    }

    // softmax over the chunk: s[j][e] is row g (e < 2) or g + 8, key base + 8j + 2q + e % 2
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = base + 8 * j + 2 * qd + (e & 1);
        float x;
        if (capped) {
          x = s[j][e] * qk_scale;
          x = a.logit_cap * tanhf(x * inv_cap) * kLog2e;
        } else {
          x = s[j][e] * qk_scale_log2;
        }
        const bool ok = key < end && key >= first;
        s[j][e] = ok ? x : -INFINITY;
        mx[e >> 1] = fmaxf(mx[e >> 1], s[j][e]);
      }
    }
    float alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float m_new = fmaxf(m_run[r], mx[r]);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;  // no key seen yet
      alpha[r] = fast_exp2(m_run[r] - m_use);
      m_run[r] = m_new;
      mx[r] = m_use;
    }
    uint32_t pa[4];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      float p[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) p[e] = fast_exp2(s[j][e] - mx[e >> 1]);
      l_run[0] = (j == 0 ? l_run[0] * alpha[0] : l_run[0]) + p[0] + p[1];
      l_run[1] = (j == 0 ? l_run[1] * alpha[1] : l_run[1]) + p[2] + p[3];
      pa[2 * j] = pack2<MmaT>(p[0], p[1]);      // row g, keys 8j + 2q, + 1
      pa[2 * j + 1] = pack2<MmaT>(p[2], p[3]);  // row g + 8
    }
#pragma unroll
    for (int t = 0; t < kNTiles; ++t) {
      acc[t][0] *= alpha[0];
      acc[t][1] *= alpha[0];
      acc[t][2] *= alpha[1];
      acc[t][3] *= alpha[1];
    }
    // O += P V over the n-tiles t: B rows 2q, 2q + 1 (keys vr[0], vr[1]) and 2q + 8, 2q + 9
    // (vr[2], vr[3]), column g: value t of each lane's run
#pragma unroll
    for (int t = 0; t < kNTiles; t += 2) {
      uint32_t b[2][2];  // [t, t + 1][key pair]
#pragma unroll
      for (int pr = 0; pr < 2; ++pr) {
        const Words<sizeof(VRun) / 4>& v0 = vr[2 * pr];
        const Words<sizeof(VRun) / 4>& v1 = vr[2 * pr + 1];
        if constexpr (kFp8) {
          // bytes t, t + 1 of both keys -> (k0[t], k1[t], k0[t + 1], k1[t + 1])
          const uint32_t sel = (t % 4 == 0) ? 0x5140u : 0x7362u;
          const uint32_t mixed = __byte_perm(v0.w[t / 4], v1.w[t / 4], sel);
          b[0][pr] = e4m3x2_to_f16x2(mixed);
          b[1][pr] = e4m3x2_to_f16x2(mixed >> 16);
        } else {
          b[0][pr] = __byte_perm(v0.w[t / 2], v1.w[t / 2], 0x5410u);
          b[1][pr] = __byte_perm(v0.w[t / 2], v1.w[t / 2], 0x7632u);
        }
      }
      mma16816<MmaT>(acc[t], pa, b[0][0], b[0][1]);
      mma16816<MmaT>(acc[t + 1], pa, b[1][0], b[1][1]);
    }
  };
  // Chunk i sits in stage i % STAGES. Before its math, chunk i + STAGES - 1 goes into the
  // stage chunk i - 1 left (read into registers and used by the last math: no hazard).
  int stage = 0;
#pragma unroll 1
  for (int base = first_base; base < end; base += step) {
    const int ahead = base + (STAGES - 1) * step;
    const int ahead_stage = stage == 0 ? STAGES - 1 : stage - 1;
    if (ahead < end) issue_chunk(ahead, ring + ahead_stage * Layout::kBytes);
    cp_async_commit();
    cp_async_wait<STAGES - 1>();  // chunk i has landed
    KRun kr[2];
    VRun vr[4];
    read_chunk(ring + stage * Layout::kBytes, kr, vr);
    chunk_math(kr, vr, base);
    stage = stage + 1 == STAGES ? 0 : stage + 1;
  }
  pdl_launch_dependents();
  cp_async_wait<0>();  // only empty groups remain; the rings become the warps' states
  __syncthreads();

  // the row sums of the lanes of a row
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 1);
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 2);
  }
  // warps -> shared memory: m, l per row and acc per (row, head_dim), head_dim unpermuted
  float* sm_m = smem;                     // [WARPS][16]
  float* sm_l = sm_m + WARPS * 16;        // [WARPS][16]
  float* sm_acc = sm_l + WARPS * 16;      // [WARPS][16][kAccRow]
  if (qd == 0) {
    sm_m[warp * 16 + g] = m_run[0];
    sm_m[warp * 16 + g + 8] = m_run[1];
    sm_l[warp * 16 + g] = l_run[0];
    sm_l[warp * 16 + g + 8] = l_run[1];
  }
  float* wacc = sm_acc + warp * 16 * kAccRow;
#pragma unroll
  for (int t = 0; t < kNTiles; ++t) {
    const int d0 = (2 * qd) * kVRun + t;  // column 2q of n-tile t
    const int d1 = d0 + kVRun;            // column 2q + 1
    wacc[g * kAccRow + acc_col<HEAD_DIM>(d0)] = acc[t][0];
    wacc[g * kAccRow + acc_col<HEAD_DIM>(d1)] = acc[t][1];
    wacc[(g + 8) * kAccRow + acc_col<HEAD_DIM>(d0)] = acc[t][2];
    wacc[(g + 8) * kAccRow + acc_col<HEAD_DIM>(d1)] = acc[t][3];
  }
  __syncthreads();

  store_merged<QT, HEAD_DIM, WARPS>(a, sm_m, sm_l, sm_acc, req, kv_head, split, pieces == 1);
  if (pieces > 1 && a.merge_counters != nullptr) {
    merge_if_last<QT, HEAD_DIM, WARPS>(a, req, kv_head, pieces, smem);
  }
}

// The warps' rings, and after the loop in the same bytes the warps' states (then the
// merge's weights).
template <typename KvT, int HEAD_DIM, int WARPS, int STAGES>
constexpr size_t decode_mma_smem_bytes() {
  const size_t rings = size_t{WARPS} * STAGES * ChunkLayout<KvT, HEAD_DIM>::kBytes;
  const size_t states = sizeof(float) * WARPS * 16 * (2 + acc_row<HEAD_DIM>());
  return rings > states ? rings : states;
}

// The most pieces the merge in the last piece holds weights for (16 rows x 256 pieces and
// 32 row values fit the smallest configuration's shared memory: 4 warps at head_dim 64).
constexpr int kMaxMergedPieces = 256;
static_assert(16 * kMaxMergedPieces + 32 <= 4 * 16 * (2 + 64 + 4),
              "the merge's weights must fit the kernel's shared memory");

}  // namespace fuseinfer::attention
