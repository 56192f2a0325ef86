"""The custom allreduce kernels on the GPU, two ranks (two processes; on a one-GPU machine
both share it, which checks the results and the barriers, not the speed): one-shot and
two-shot allreduce exactly equal to the rank-ordered fp32 reference, the fused allreduce +
add + RMSNorm against its reference, over dtypes, odd sizes, hidden 2880/4096/7168, PDL on
and off, in place, CUDA-graph replays with fresh data, and the collectives path a model
takes (ParallelState with the CustomAllreduce)."""

from __future__ import annotations

import multiprocessing
import traceback
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

WORLD = 2
SHAPES = ((1, 4096), (3, 2880), (128, 4096), (37, 7168), (1000, 4096))
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _draw(seed: int, rows: int, hidden: int, dtype: torch.dtype, device: torch.device):
    """Every rank's input, the residual and the weight: the same draws on every rank."""
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(rows, hidden, generator=g).to(device, dtype) for _ in range(WORLD)]
    residual = torch.randn(rows, hidden, generator=g).to(device, dtype)
    weight = (1 + 0.1 * torch.randn(hidden, generator=g)).to(device, dtype)
    return inputs, residual, weight


def _check_cases(rank: int, comm, device: torch.device) -> int:
    from fuseinfer.ops.allreduce.custom_allreduce import (
        reference_all_reduce,
        reference_fused_allreduce_add_rmsnorm,
    )

    ops, seed, checked = torch.ops.fuseinfer, 0, 0
    args = (comm.peer_bases, comm.max_bytes, rank)
    for dtype in DTYPES:
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        for rows, hidden in SHAPES:
            for two_shot in (False, True):
                for pdl in (True, False):
                    seed += 1
                    inputs, residual, weight = _draw(seed, rows, hidden, dtype, device)
                    x = inputs[rank].clone()
                    out = torch.full_like(x, float("nan"))
                    ops.custom_all_reduce(x, out, *args, two_shot, pdl)
                    want = reference_all_reduce(inputs)
                    assert torch.equal(out, want), (dtype, rows, hidden, two_shot, pdl)
                    ops.custom_all_reduce(x, x, *args, two_shot, pdl)  # in place
                    assert torch.equal(x, want)
                    x, res = inputs[rank].clone(), residual.clone()
                    out = torch.full_like(x, float("nan"))
                    ops.custom_fused_allreduce_add_rmsnorm(x, res, weight, out, *args,
                                                           two_shot, 1e-6, pdl)
                    want_out, want_res = reference_fused_allreduce_add_rmsnorm(
                        inputs, residual, weight, 1e-6)
                    assert torch.equal(res, want_res), (dtype, rows, hidden, two_shot, pdl)
                    torch.testing.assert_close(out, want_out, rtol=tol, atol=tol)
                    assert torch.equal(x, inputs[rank])  # input only read
                    checked += 1
    return checked


def _check_graph(rank: int, comm, device: torch.device) -> None:
    from fuseinfer.ops.allreduce.custom_allreduce import reference_fused_allreduce_add_rmsnorm

    rows, hidden = 16, 4096
    inputs, residual, weight = _draw(1000, rows, hidden, torch.bfloat16, device)
    x, res = inputs[rank].clone(), residual.clone()
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):  # warm-up outside the graph (every rank the same calls)
        comm.fused_add_rmsnorm_(x, res, weight, 1e-6)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        comm.fused_add_rmsnorm_(x, res, weight, 1e-6)
        comm.all_reduce_(res)
    for seed in (1001, 1002, 1003):
        inputs, residual, _ = _draw(seed, rows, hidden, torch.bfloat16, device)
        x.copy_(inputs[rank])
        res.copy_(residual)
        graph.replay()
        want_out, want_res = reference_fused_allreduce_add_rmsnorm(inputs, residual, weight,
                                                                   1e-6)
        torch.testing.assert_close(x, want_out, rtol=2e-2, atol=2e-2)
        assert torch.equal(res, (want_res.float() * WORLD).to(torch.bfloat16))


def _check_model_path(rank: int, comm, parallel, device: torch.device) -> None:
    from fuseinfer.distributed.collectives import all_reduce_, fused_allreduce_add_rmsnorm
    from fuseinfer.ops.allreduce.custom_allreduce import (
        reference_all_reduce,
        reference_fused_allreduce_add_rmsnorm,
    )

    state = replace(parallel, allreduce=comm)
    inputs, residual, weight = _draw(2000, 5, 2880, torch.bfloat16, device)
    x, res = inputs[rank].clone(), residual.clone()
    fused_allreduce_add_rmsnorm(x, res, weight, 1e-6, state)
    want_out, want_res = reference_fused_allreduce_add_rmsnorm(inputs, residual, weight, 1e-6)
    assert torch.equal(res, want_res)
    torch.testing.assert_close(x, want_out, rtol=2e-2, atol=2e-2)
    x = inputs[rank].clone()
    assert torch.equal(all_reduce_(x, state), reference_all_reduce(inputs))


def _rank(rank: int, folder: str, errors) -> None:  # type: ignore[no-untyped-def]
    try:
        from fuseinfer.distributed.custom_allreduce import (
            CustomAllreduce,
            custom_allreduce_usable,
        )
        from fuseinfer.distributed.parallel_state import ParallelState

        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous",
                                rank=rank, world_size=WORLD)
        parallel = ParallelState(rank, WORLD, dist.group.WORLD)
        assert custom_allreduce_usable(parallel, device)
        comm = CustomAllreduce(parallel, device, max_bytes=32 << 20)
        checked = _check_cases(rank, comm, device)
        _check_graph(rank, comm, device)
        _check_model_path(rank, comm, parallel, device)
        torch.cuda.synchronize(device)
        dist.barrier()
        comm.close()
        dist.destroy_process_group()
        Path(folder, f"ok{rank}").write_text(str(checked))
    except BaseException:
        errors.put(f"rank {rank}:\n{traceback.format_exc()}")


def test_custom_allreduce_two_ranks(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, str(tmp_path), errors)) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=400)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert not found, "\n".join(found)
    assert not hung, "a rank hung (a barrier never met)"
    counts = {Path(tmp_path, f"ok{r}").read_text() for r in range(WORLD)}
    assert counts == {str(len(DTYPES) * len(SHAPES) * 4)}
