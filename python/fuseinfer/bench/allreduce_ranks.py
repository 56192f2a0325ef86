"""One rank of `fuseinfer bench allreduce` / `tune allreduce`: every path of an allreduce
(and of allreduce + residual add + RMSNorm) timed under CUDA-graph replay, the ranks
replaying together.

Every rank makes the same calls in the same order (the custom kernels and the collectives
wait for each other), so each path is first set up on every rank and dropped everywhere if
any rank fails it. Times are rank 0's: the median over repeats of one replay of `calls`
calls, the ranks lined up by a barrier before each replay.

Paths (the names the bench's columns and the tuner use):
  one_shot, two_shot          ours, out of place
  nccl                        torch.distributed.all_reduce (one GPU per rank only)
  symm_one_shot, symm_two_shot torch symmetric memory (input copied into its buffer first;
                              one GPU per rank only)
  fused_one_shot, fused_two_shot  ours, fused with add + RMSNorm
  <allreduce path>+norm       that allreduce, then our fused_add_rmsnorm
"""

from __future__ import annotations

import os
import statistics
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

ALLREDUCE_PATHS = ("one_shot", "two_shot", "nccl", "symm_one_shot", "symm_two_shot")
FUSED_PATHS = ("fused_one_shot", "fused_two_shot")
NORM_PATHS = tuple(f"{p}+norm" for p in ALLREDUCE_PATHS)


@dataclass(frozen=True)
class RankJob:
    world: int
    cases: tuple[tuple[int, int], ...]  # (tokens, hidden)
    dtype: str
    paths: tuple[str, ...]
    calls: int
    repeats: int
    folder: str  # rendezvous file and rank 0's result


def _one_gpu_per_rank(world: int) -> bool:
    return torch.cuda.device_count() >= world


def _time(fn: Callable[[], object], job: RankJob, cpu_group: Any, device: torch.device
          ) -> float:
    fn()
    torch.cuda.synchronize(device)
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream(device)
    with torch.cuda.graph(graph, stream=stream):
        for _ in range(job.calls):
            fn()
    graph.replay()
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(job.repeats):
        dist.barrier(group=cpu_group)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0 / job.calls)
    return statistics.median(times)


def _path_call(name: str, x: torch.Tensor, out: torch.Tensor, residual: torch.Tensor,
               weight: torch.Tensor, comm: Any, symm: dict[str, Any], group: Any
               ) -> Callable[[], object]:
    from ..ops.norm.rmsnorm import fused_add_rmsnorm

    ops, args = torch.ops.fuseinfer, (comm.peer_bases, comm.max_bytes, comm.parallel.rank)
    base, _, norm = name.partition("+")
    if base in FUSED_PATHS:
        two = base == "fused_two_shot"
        return lambda: ops.custom_fused_allreduce_add_rmsnorm(x, residual, weight, out, *args,
                                                              two, 1e-6, None)
    if base in ("one_shot", "two_shot"):
        def reduce() -> object:
            return ops.custom_all_reduce(x, out, *args, base == "two_shot", None)
    elif base == "nccl":
        def reduce() -> object:
            return dist.all_reduce(out, group=group)
    elif base in ("symm_one_shot", "symm_two_shot"):
        buf, name_ = symm["buffer"][: x.numel()].view_as(x), symm["group_name"]

        def reduce() -> object:
            buf.copy_(x)
            if base == "symm_one_shot":
                return torch.ops.symm_mem.one_shot_all_reduce(buf, "sum", name_)
            return torch.ops.symm_mem.two_shot_all_reduce_(buf, "sum", name_)
    else:
        raise ValueError(f"unknown allreduce path {name!r}")
    if not norm:
        return reduce
    return lambda: (reduce(), fused_add_rmsnorm(out, residual, weight, 1e-6))


def _agree(ok: bool, cpu_group: Any) -> bool:
    flags: list[object] = [None] * dist.get_world_size(cpu_group)
    dist.all_gather_object(flags, ok, group=cpu_group)
    return all(flags)


def run_rank(rank: int, job: RankJob) -> None:
    """Spawned per rank: times every case and path; rank 0 writes rows to folder/rows.pt."""
    from ..distributed.custom_allreduce import CustomAllreduce
    from ..distributed.parallel_state import ParallelState

    device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    init = f"file://{job.folder}/rendezvous"
    separate = _one_gpu_per_rank(job.world)
    dist.init_process_group("nccl" if separate else "gloo", init_method=init, rank=rank,
                            world_size=job.world, device_id=device if separate else None)
    cpu_group = dist.new_group(backend="gloo")
    group = dist.group.WORLD
    dtype = getattr(torch, job.dtype)
    biggest = max(t * h for t, h in job.cases) * dtype.itemsize
    comm = CustomAllreduce(ParallelState(rank, job.world, cpu_group), device,
                           max_bytes=-(-2 * biggest // 256) * 256)
    symm: dict[str, Any] = {}
    notes: dict[str, str] = {}
    paths = list(job.paths)
    needs_separate = [p for p in paths if p.split("+")[0] in ("nccl", "symm_one_shot",
                                                              "symm_two_shot")]
    if not separate:
        for p in needs_separate:
            notes[p] = "needs one GPU per rank"
        paths = [p for p in paths if p not in needs_separate]
    if any(p.startswith("symm_") for p in paths):
        try:
            import torch.distributed._symmetric_memory as symm_mem

            symm["buffer"] = symm_mem.empty(biggest // dtype.itemsize, dtype=dtype,
                                            device=device)
            symm_mem.rendezvous(symm["buffer"], group.group_name)
            symm["group_name"] = group.group_name
            ok = True
        except Exception as error:  # not built, or no peer access
            ok, notes["symm"] = False, f"symmetric memory: {error}"[:160]
        if not _agree(ok, cpu_group):
            paths = [p for p in paths if not p.startswith("symm_")]
    rows = []
    for tokens, hidden in job.cases:
        g = torch.Generator().manual_seed(tokens * 7919 + hidden)
        x = torch.randn(tokens, hidden, generator=g).to(device, dtype)
        residual = torch.randn(tokens, hidden, generator=g).to(device, dtype)
        weight = torch.randn(hidden, generator=g).to(device, dtype)
        out = torch.empty_like(x)
        row: dict[str, Any] = {"tokens": tokens, "hidden": hidden,
                               "bytes": x.numel() * x.element_size()}
        for name in paths:
            try:
                call = _path_call(name, x, out, residual, weight, comm, symm, group)
                us = _time(call, job, cpu_group, device)
                ok = True
            except Exception as error:
                ok, row[f"error_{name}"] = False, f"{type(error).__name__}: {error}"[:160]
            if _agree(ok, cpu_group) and ok:
                row[f"us_{name}"] = us
        rows.append(row)
    dist.barrier(group=cpu_group)
    if rank == 0:
        torch.save({"rows": rows, "notes": notes}, Path(job.folder) / "rows.pt")
    torch.cuda.synchronize(device)
    dist.barrier(group=cpu_group)
    comm.close()
    dist.destroy_process_group()


def run_ranks(job: RankJob) -> dict[str, Any]:
    """Spawn the ranks, wait, and return rank 0's {"rows", "notes"}."""
    import torch.multiprocessing as mp

    def fail(message: str) -> None:
        raise RuntimeError(f"bench allreduce: {message}")

    try:
        mp.spawn(_entry, args=(job,), nprocs=job.world, join=True)
    except Exception:
        fail(traceback.format_exc(limit=3))
    return torch.load(Path(job.folder) / "rows.pt")


def measure(world: int, cases: list[tuple[int, int]], dtype: str, paths: list[str],
            calls: int, repeats: int) -> dict[str, Any]:
    """Rank 0's {"rows", "notes"} for `cases` (tokens, hidden) over `paths`."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fuseinfer-allreduce-") as folder:
        return run_ranks(RankJob(world, tuple(cases), dtype, tuple(paths), calls, repeats,
                                 folder))


def world_size(asked: int | None) -> int:
    """--world, default every GPU (at least 2); 2, 4 or 8 (the kernels' world sizes)."""
    world = asked or max(2, torch.cuda.device_count())
    if world not in (2, 4, 8):
        raise SystemExit(f"--world must be 2, 4 or 8, got {world}")
    return world


def _entry(rank: int, job: RankJob) -> None:
    run_rank(rank, job)


def best(row: dict[str, Any], paths: Sequence[str]) -> tuple[str, float] | None:
    """(path, µs) of the fastest of `paths` that ran in `row`."""
    timed = [(row[f"us_{p}"], p) for p in paths if f"us_{p}" in row]
    return (min(timed)[1], min(timed)[0]) if timed else None
