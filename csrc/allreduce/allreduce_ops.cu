// Launchers of the custom allreduce (schemas in fuseinfer/ops/allreduce) and the workspace
// management the Python side calls once per process group: allocate, export an IPC handle,
// open the peers' handles, free.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstring>
#include <optional>
#include <vector>

#include "allreduce_kernels.cuh"
#include "launch_policy.h"
#include "torch_checks.h"

namespace fuseinfer::allreduce {
namespace {

constexpr int kThreads = 512;

int64_t alloc_workspace(int64_t max_bytes, int64_t device) {
  TORCH_CHECK_VALUE(max_bytes > 0 && max_bytes % 256 == 0,
                    "fuseinfer.allreduce workspace: max_bytes must be a positive multiple of "
                    "256, got ", max_bytes);
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  void* ptr = nullptr;
  const size_t bytes = kSignalBytes + 2 * static_cast<size_t>(max_bytes);
  FUSEINFER_CUDA_CHECK(cudaMalloc(&ptr, bytes));
  // Zeroed flags and counters: every rank starts from call 0.
  FUSEINFER_CUDA_CHECK(cudaMemset(ptr, 0, kSignalBytes));
  FUSEINFER_CUDA_CHECK(cudaDeviceSynchronize());
  return reinterpret_cast<int64_t>(ptr);
}

void free_workspace(int64_t ptr, int64_t device) {
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  FUSEINFER_CUDA_CHECK(cudaFree(reinterpret_cast<void*>(ptr)));
}

at::Tensor ipc_handle(int64_t ptr, int64_t device) {
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  cudaIpcMemHandle_t handle;
  FUSEINFER_CUDA_CHECK(cudaIpcGetMemHandle(&handle, reinterpret_cast<void*>(ptr)));
  at::Tensor out = at::empty({static_cast<int64_t>(sizeof(handle))}, at::kByte);
  std::memcpy(out.data_ptr(), &handle, sizeof(handle));
  return out;
}

int64_t open_ipc_handle(const at::Tensor& handle, int64_t device) {
  TORCH_CHECK_VALUE(handle.device().is_cpu() && handle.scalar_type() == at::kByte &&
                        handle.numel() == static_cast<int64_t>(sizeof(cudaIpcMemHandle_t)),
                    "fuseinfer.allreduce: an IPC handle is a CPU uint8 tensor of ",
                    sizeof(cudaIpcMemHandle_t), " bytes");
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  cudaIpcMemHandle_t h;
  std::memcpy(&h, handle.contiguous().data_ptr(), sizeof(h));
  void* ptr = nullptr;
  FUSEINFER_CUDA_CHECK(cudaIpcOpenMemHandle(&ptr, h, cudaIpcMemLazyEnablePeerAccess));
  return reinterpret_cast<int64_t>(ptr);
}

void close_ipc_handle(int64_t ptr, int64_t device) {
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  FUSEINFER_CUDA_CHECK(cudaIpcCloseMemHandle(reinterpret_cast<void*>(ptr)));
}

Peers make_peers(c10::IntArrayRef bases, int64_t max_bytes, int64_t rank, const char* op) {
  const int64_t world = static_cast<int64_t>(bases.size());
  FUSEINFER_CHECK_ARG(world >= 2 && world <= kMaxRanks, op, "peer_bases",
                      "must list 2 to ", kMaxRanks, " workspaces, got ", world);
  FUSEINFER_CHECK_ARG(rank >= 0 && rank < world, op, "rank", "must be in [0, ", world,
                      "), got ", rank);
  FUSEINFER_CHECK_ARG(max_bytes > 0 && max_bytes % 256 == 0, op, "max_bytes",
                      "must be a positive multiple of 256, got ", max_bytes);
  Peers peers{};
  for (int64_t r = 0; r < world; ++r) peers.base[r] = reinterpret_cast<char*>(bases[r]);
  peers.max_bytes = max_bytes;
  return peers;
}

void check_io(const at::Tensor& t, const at::Tensor& input, const char* op, const char* name) {
  FUSEINFER_CHECK_ARG(t.is_cuda() && t.device() == input.device(), op, name,
                      "must be on ", input.device(), ", got ", t.device());
  FUSEINFER_CHECK_ARG(t.scalar_type() == input.scalar_type(), op, name, "must have dtype ",
                      input.scalar_type(), ", got ", t.scalar_type());
  FUSEINFER_CHECK_ARG(t.is_contiguous(), op, name, "must be contiguous");
  FUSEINFER_CHECK_ARG(aligned16(t.data_ptr()), op, name, "must be 16-byte aligned");
}

template <typename F>
void by_dtype(at::ScalarType dtype, const char* op, F&& f) {
  switch (dtype) {
    case at::kBFloat16: return f(__nv_bfloat16{});
    case at::kHalf: return f(__half{});
    case at::kFloat: return f(float{});
    default:
      FUSEINFER_CHECK_ARG(false, op, "input", "must be bfloat16, float16 or float32, got ",
                          dtype);
  }
}

template <typename F>
void by_world(int64_t world, F&& f) {
  switch (world) {
    case 2: return f(std::integral_constant<int, 2>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 8: return f(std::integral_constant<int, 8>{});
    default:
      TORCH_CHECK_VALUE(false, "fuseinfer.allreduce: world size ", world,
                        " has no kernel (2, 4 or 8 ranks)");
  }
}

int blocks_for(int64_t work, int per_block) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kMaxBlocks,
                                                                 (work + per_block - 1) / per_block)));
}

void custom_all_reduce(const at::Tensor& input, at::Tensor& out, c10::IntArrayRef peer_bases,
                       int64_t max_bytes, int64_t rank, bool two_shot,
                       std::optional<bool> enable_pdl) {
  constexpr const char* kOp = "custom_all_reduce";
  check_io(input, input, kOp, "input");
  check_io(out, input, kOp, "out");
  FUSEINFER_CHECK_ARG(out.numel() == input.numel(), kOp, "out", "must have ", input.numel(),
                      " elements like input, got ", out.numel());
  const int64_t bytes = input.numel() * input.element_size();
  FUSEINFER_CHECK_ARG(bytes % 16 == 0, kOp, "input", "must span a multiple of 16 bytes, got ",
                      bytes);
  FUSEINFER_CHECK_ARG(bytes <= max_bytes, kOp, "input", "spans ", bytes,
                      " bytes, more than the workspace's ", max_bytes);
  const Peers peers = make_peers(peer_bases, max_bytes, rank, kOp);
  if (bytes == 0) return;
  const int device = input.get_device();
  c10::cuda::CUDAGuard guard(input.device());
  const bool pdl = resolve_pdl(enable_pdl, true, device, kOp);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  const int64_t n_vec = bytes / 16;
  by_dtype(input.scalar_type(), kOp, [&](auto zero) {
    using T = decltype(zero);
    by_world(static_cast<int64_t>(peer_bases.size()), [&](auto w) {
      constexpr int kWorld = decltype(w)::value;
      const T* in = static_cast<const T*>(input.data_ptr());
      T* o = static_cast<T*>(out.data_ptr());
      if (two_shot) {
        const int64_t part = (n_vec + kWorld - 1) / kWorld;
        FUSEINFER_CUDA_CHECK(launch_kernel(two_shot_kernel<T, kWorld>,
                                           dim3(blocks_for(part, kThreads)), dim3(kThreads), 0,
                                           stream, pdl, in, o, peers, static_cast<int>(rank),
                                           n_vec, part));
      } else {
        FUSEINFER_CUDA_CHECK(launch_kernel(one_shot_kernel<T, kWorld>,
                                           dim3(blocks_for(n_vec, kThreads)), dim3(kThreads), 0,
                                           stream, pdl, in, o, peers, static_cast<int>(rank),
                                           n_vec));
      }
    });
  });
}

void custom_fused_allreduce_add_rmsnorm(const at::Tensor& input, at::Tensor& residual,
                                        const at::Tensor& weight, at::Tensor& out,
                                        c10::IntArrayRef peer_bases, int64_t max_bytes,
                                        int64_t rank, bool two_shot, double eps,
                                        std::optional<bool> enable_pdl) {
  constexpr const char* kOp = "custom_fused_allreduce_add_rmsnorm";
  check_io(input, input, kOp, "input");
  check_io(residual, input, kOp, "residual");
  check_io(weight, input, kOp, "weight");
  check_io(out, input, kOp, "out");
  FUSEINFER_CHECK_ARG(input.dim() >= 1, kOp, "input", "must have a hidden dimension");
  const int64_t hidden = input.size(-1);
  const int64_t rows = hidden == 0 ? 0 : input.numel() / hidden;
  FUSEINFER_CHECK_ARG(residual.sizes() == input.sizes(), kOp, "residual", "must have shape ",
                      input.sizes(), ", got ", residual.sizes());
  FUSEINFER_CHECK_ARG(out.sizes() == input.sizes(), kOp, "out", "must have shape ",
                      input.sizes(), ", got ", out.sizes());
  FUSEINFER_CHECK_ARG(weight.dim() == 1 && weight.size(0) == hidden, kOp, "weight",
                      "must have shape [", hidden, "], got ", weight.sizes());
  const int64_t row_bytes = hidden * input.element_size();
  FUSEINFER_CHECK_ARG(row_bytes % 16 == 0, kOp, "input",
                      "rows must span a multiple of 16 bytes, got ", row_bytes);
  FUSEINFER_CHECK_ARG(eps > 0, kOp, "eps", "must be positive, got ", eps);
  const int64_t bytes = rows * row_bytes;
  FUSEINFER_CHECK_ARG((two_shot ? 2 * bytes : bytes) <= max_bytes, kOp, "input", "needs ",
                      two_shot ? 2 * bytes : bytes, " bytes of workspace, more than its ",
                      max_bytes);
  const Peers peers = make_peers(peer_bases, max_bytes, rank, kOp);
  if (rows == 0) return;
  const int device = input.get_device();
  c10::cuda::CUDAGuard guard(input.device());
  const bool pdl = resolve_pdl(enable_pdl, true, device, kOp);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  const int h_vec = static_cast<int>(row_bytes / 16);
  const int threads = static_cast<int>(std::min<int64_t>(1024, std::max(32, (h_vec + 31) / 32 * 32)));
  by_dtype(input.scalar_type(), kOp, [&](auto zero) {
    using T = decltype(zero);
    by_world(static_cast<int64_t>(peer_bases.size()), [&](auto w) {
      constexpr int kWorld = decltype(w)::value;
      const T* in = static_cast<const T*>(input.data_ptr());
      T* res = static_cast<T*>(residual.data_ptr());
      const T* wt = static_cast<const T*>(weight.data_ptr());
      T* o = static_cast<T*>(out.data_ptr());
      if (two_shot) {
        const int64_t part = (rows + kWorld - 1) / kWorld;
        FUSEINFER_CUDA_CHECK(launch_kernel(fused_two_shot_kernel<T, kWorld>,
                                           dim3(blocks_for(part, 1)), dim3(threads), 0, stream,
                                           pdl, in, res, wt, o, peers, static_cast<int>(rank),
                                           rows, part, h_vec, static_cast<float>(eps)));
      } else {
        FUSEINFER_CUDA_CHECK(launch_kernel(fused_one_shot_kernel<T, kWorld>,
                                           dim3(blocks_for(rows, 1)), dim3(threads), 0, stream,
                                           pdl, in, res, wt, o, peers, static_cast<int>(rank),
                                           rows, h_vec, static_cast<float>(eps)));
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fuseinfer, m) {
  m.def("_allreduce_alloc_workspace(int max_bytes, int device) -> int", &alloc_workspace);
  m.def("_allreduce_free_workspace(int ptr, int device) -> ()", &free_workspace);
  m.def("_allreduce_ipc_handle(int ptr, int device) -> Tensor", &ipc_handle);
  m.def("_allreduce_open_ipc_handle(Tensor handle, int device) -> int", &open_ipc_handle);
  m.def("_allreduce_close_ipc_handle(int ptr, int device) -> ()", &close_ipc_handle);
}

TORCH_LIBRARY_IMPL(fuseinfer, CUDA, m) {
  m.impl("custom_all_reduce", &custom_all_reduce);
  m.impl("custom_fused_allreduce_add_rmsnorm", &custom_fused_allreduce_add_rmsnorm);
}

}  // namespace fuseinfer::allreduce
