"""CustomAllreduce: one process group's peer-mapped workspaces and the custom allreduce
kernels over them (fuseinfer.ops.allreduce), with NCCL where they do not apply.

Built once per group, on every rank together (it exchanges CUDA IPC handles through the
group): each rank allocates a workspace (flags + a staging and a result area of
`max_bytes`), exports its handle, and maps every peer's. Use it for GPUs of one node
linked by NVLink (the kernels read peers' memory directly); `custom_allreduce_usable`
says whether a group qualifies. NVLink multicast is never used.

Every call must be made by all ranks in the same order with the same shapes (the kernels
wait for each other). Calls are CUDA-graph safe: the workspace addresses are fixed and the
input is copied into the workspace inside the kernel.
"""

from __future__ import annotations

import socket
import threading

import torch
import torch.distributed as dist

from ..ops.allreduce.allreduce_dispatch import WORLD_SIZES, AllreduceDispatch, effective
from ..ops.allreduce.custom_allreduce import load_module
from ..ops.arg_checks import FLOAT_DTYPES
from ..ops.norm.rmsnorm import fused_add_rmsnorm
from .parallel_state import ParallelState

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def custom_allreduce_usable(parallel: ParallelState, device: torch.device) -> bool:
    """Whether the group can run the custom allreduce: a world size with kernels, every
    rank on this host (exchanged through the group, so every rank must call this), and
    every rank's GPU peer-accessible from this one."""
    if parallel.is_single or parallel.world_size not in WORLD_SIZES:
        return False
    index = _index(device)
    where: list[object] = [None] * parallel.world_size
    dist.all_gather_object(where, (socket.gethostname(), index), group=parallel.group)
    hosts = {host for host, _ in where}  # type: ignore[misc]
    devices = [d for _, d in where]  # type: ignore[misc]
    return len(hosts) == 1 and all(
        d == index or torch.cuda.can_device_access_peer(index, d) for d in devices)


class CustomAllreduce:
    def __init__(self, parallel: ParallelState, device: torch.device,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 entry: AllreduceDispatch | None = None) -> None:
        if parallel.world_size not in WORLD_SIZES:
            raise ValueError(f"CustomAllreduce: world size {parallel.world_size} has no "
                             f"kernels (one of {list(WORLD_SIZES)})")
        if device.type != "cuda":
            raise ValueError(f"CustomAllreduce: needs a CUDA device, got {device}")
        if max_bytes < 256 or max_bytes % 256:
            raise ValueError(f"CustomAllreduce: max_bytes must be a positive multiple of "
                             f"256, got {max_bytes}")
        load_module()
        self.parallel, self.device, self.max_bytes = parallel, device, max_bytes
        self._index = index = _index(device)
        self.entry = entry if entry is not None else effective(index)
        ops = torch.ops.fuseinfer
        self._own = int(ops._allreduce_alloc_workspace(max_bytes, index))
        handles: list[object] = [None] * parallel.world_size
        dist.all_gather_object(handles, ops._allreduce_ipc_handle(self._own, index).tolist(),
                               group=parallel.group)
        self._opened: list[int] = []
        bases = []
        for r, handle in enumerate(handles):
            if r == parallel.rank:
                bases.append(self._own)
                continue
            ptr = int(ops._allreduce_open_ipc_handle(
                torch.tensor(handle, dtype=torch.uint8), index))
            self._opened.append(ptr)
            bases.append(ptr)
        self.peer_bases = bases
        self._lock = threading.Lock()
        self._closed = False

    def algorithm(self, x: torch.Tensor) -> str:
        """The table's algorithm for x, NCCL where the workspace or the kernels do not fit."""
        nbytes = x.numel() * x.element_size()
        if nbytes % 16 or nbytes > self.max_bytes or not x.is_contiguous() \
                or x.dtype not in FLOAT_DTYPES:
            return "nccl"
        return self.entry.algorithm(self.parallel.world_size, nbytes)

    def all_reduce_(self, x: torch.Tensor) -> torch.Tensor:
        """x summed over the ranks, in place."""
        algorithm = self.algorithm(x)
        if algorithm == "nccl":
            dist.all_reduce(x, group=self.parallel.group)
        else:
            torch.ops.fuseinfer.custom_all_reduce(
                x, x, self.peer_bases, self.max_bytes, self.parallel.rank,
                algorithm == "two_shot", self.entry.enable_pdl)
        return x

    def fused_add_rmsnorm_(self, x: torch.Tensor, residual: torch.Tensor,
                           weight: torch.Tensor, eps: float) -> torch.Tensor:
        """In place: residual += allreduce(x); x = rmsnorm(residual) * weight; returns x.
        The fused kernel where the table says so and the workspace holds it, else the
        allreduce and fused_add_rmsnorm."""
        algorithm = self.algorithm(x)
        nbytes = x.numel() * x.element_size()
        fits = nbytes * (2 if algorithm == "two_shot" else 1) <= self.max_bytes
        row_ok = (x.shape[-1] * x.element_size()) % 16 == 0
        if algorithm != "nccl" and fits and row_ok and residual.is_contiguous() \
                and self.entry.fused(self.parallel.world_size, nbytes):
            torch.ops.fuseinfer.custom_fused_allreduce_add_rmsnorm(
                x, residual, weight, x, self.peer_bases, self.max_bytes, self.parallel.rank,
                algorithm == "two_shot", eps, self.entry.enable_pdl)
            return x
        self.all_reduce_(x)
        fused_add_rmsnorm(x, residual, weight, eps, enable_pdl=self.entry.enable_pdl)
        return x

    def close(self) -> None:
        """Unmaps the peers and frees the workspace (every rank, after its last call)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        torch.cuda.synchronize(self._index)
        for ptr in self._opened:
            torch.ops.fuseinfer._allreduce_close_ipc_handle(ptr, self._index)
        torch.ops.fuseinfer._allreduce_free_workspace(self._own, self._index)
