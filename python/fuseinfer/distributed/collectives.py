"""The collectives a tensor-parallel forward pass needs, over the parallel state's group
(torch.distributed: gloo on CPUs, NCCL on GPUs; the custom allreduce where the state holds
one); a single rank skips them."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..ops.norm.rmsnorm import fused_add_rmsnorm
from .parallel_state import ParallelState


def all_reduce_(x: torch.Tensor, parallel: ParallelState) -> torch.Tensor:
    """x summed over the ranks, in place (a single rank: x as is)."""
    if parallel.allreduce is not None:
        return parallel.allreduce.all_reduce_(x)
    if not parallel.is_single:
        dist.all_reduce(x, group=parallel.group)
    return x


def fused_allreduce_add_rmsnorm(x: torch.Tensor, residual: torch.Tensor,
                                weight: torch.Tensor, eps: float, parallel: ParallelState,
                                enable_pdl: bool | None = None) -> torch.Tensor:
    """In place: residual += (x summed over the ranks); x = rmsnorm(residual) * weight;
    returns x. The sum is rounded to x's dtype before the add, as an allreduce followed by
    fused_add_rmsnorm would round it. With a custom allreduce: one kernel where the
    `allreduce` table says the fusion wins (one-shot: reduce, add and normalize in
    registers; two-shot: each rank normalizes its share of the rows, then gathers);
    otherwise, and on the CPU, the allreduce then fused_add_rmsnorm."""
    if parallel.allreduce is not None:
        return parallel.allreduce.fused_add_rmsnorm_(x, residual, weight, eps)
    all_reduce_(x, parallel)
    fused_add_rmsnorm(x, residual, weight, eps, enable_pdl=enable_pdl)
    return x


def all_gather_last(x: torch.Tensor, parallel: ParallelState) -> torch.Tensor:
    """Every rank's x concatenated along the last dim, in rank order."""
    if parallel.is_single:
        return x
    parts = [torch.empty_like(x) for _ in range(parallel.world_size)]
    dist.all_gather(parts, x.contiguous(), group=parallel.group)
    return torch.cat(parts, dim=-1)


def vocab_shard(vocab: int, parallel: ParallelState) -> tuple[int, int]:
    """[start, start + rows) of the vocabulary this rank holds; rows = ceil(V / world)."""
    rows = -(-vocab // parallel.world_size)
    return parallel.rank * rows, rows


def broadcast_object(obj: object, parallel: ParallelState) -> object:
    """Rank 0's `obj` on every rank (pickled; for host-side messages such as a step's
    inputs). A single rank gets its own back."""
    if parallel.is_single:
        return obj
    box = [obj if parallel.is_first else None]
    dist.broadcast_object_list(box, src=dist.get_global_rank(parallel.group, 0),
                               group=parallel.group)
    return box[0]


def min_over_ranks(value: int, parallel: ParallelState, device: torch.device) -> int:
    """The smallest of every rank's `value` (e.g. KV pages each rank's memory allows)."""
    if parallel.is_single:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=parallel.group)
    return int(t.item())
