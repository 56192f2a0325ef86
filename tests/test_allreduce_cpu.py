"""The allreduce family on the CPU: the `allreduce` dispatch entry (lookup and validation),
the custom ops' checks and fake shapes, their references against float64 math, and
fused_allreduce_add_rmsnorm over two gloo processes against the reference."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fuseinfer.ops  # noqa: F401  (registers the schemas)
from fuseinfer.bench.e2e.variants import ablation_variants
from fuseinfer.dispatch import TableError
from fuseinfer.distributed.collectives import fused_allreduce_add_rmsnorm
from fuseinfer.distributed.parallel_state import ParallelState
from fuseinfer.ops.allreduce.allreduce_dispatch import (
    ALLREDUCE_BUILTIN,
    AllreduceDispatch,
    AllreduceRule,
    FusedRule,
)
from fuseinfer.ops.allreduce.custom_allreduce import (
    reference_all_reduce,
    reference_fused_allreduce_add_rmsnorm,
)
from fuseinfer.runtime.engine_args import EngineArgs

ENTRY = AllreduceDispatch(
    source="test", enable_pdl=True,
    rules=(AllreduceRule(2, 1024, "one_shot"), AllreduceRule(2, 4096, "two_shot"),
           AllreduceRule(4, None, "two_shot")),
    fused_rules=(FusedRule(2, 2048, True), FusedRule(2, None, False)))


def test_lookup_takes_the_first_bounding_rule_of_the_world_size():
    assert ENTRY.algorithm(2, 16) == "one_shot"
    assert ENTRY.algorithm(2, 1024) == "one_shot"
    assert ENTRY.algorithm(2, 1025) == "two_shot"
    assert ENTRY.algorithm(2, 4097) == "nccl"  # past every rule
    assert ENTRY.algorithm(4, 1 << 30) == "two_shot"
    assert ENTRY.algorithm(8, 16) == "nccl"  # no rules for 8 ranks
    assert ENTRY.fused(2, 2048) and not ENTRY.fused(2, 2049) and not ENTRY.fused(4, 16)


def test_builtin_covers_every_world_size_with_kernels():
    ALLREDUCE_BUILTIN.validate("builtin")
    for world in (2, 4, 8):
        assert ALLREDUCE_BUILTIN.algorithm(world, 16) == "one_shot"
        assert ALLREDUCE_BUILTIN.algorithm(world, 8 << 20) == "two_shot"
        assert ALLREDUCE_BUILTIN.algorithm(world, 1 << 30) == "nccl"


@pytest.mark.parametrize("bad, message", [
    (AllreduceRule(3, None, "one_shot"), "world_size"),
    (AllreduceRule(2, None, "three_shot"), "algorithm"),
    (AllreduceRule(2, 0, "one_shot"), "max_bytes"),
])
def test_bad_rules_are_rejected(bad, message):
    with pytest.raises(TableError, match=message):
        replace(ENTRY, rules=(bad,)).validate("t")


def _args(world: int = 2, n: int = 64, dtype=torch.bfloat16):
    x = torch.randn(n, dtype=dtype)
    return x, torch.empty_like(x), [1 << 20] * world, 1 << 16, 0


def test_the_cpu_op_says_where_to_go():
    with pytest.raises(RuntimeError, match="gloo"):
        torch.ops.fuseinfer.custom_all_reduce(*_args())


@pytest.mark.parametrize("change, message", [
    ({"world": 3}, "peer_bases"),
    ({"n": 4}, "multiple of 16"),
    ({"dtype": torch.float64}, "bfloat16"),
])
def test_allreduce_checks_name_the_argument(change, message):
    x, out, bases, max_bytes, rank = _args(**change)
    with pytest.raises(ValueError, match=message):
        torch.ops.fuseinfer.custom_all_reduce(x.to("meta"), out.to("meta"), bases, max_bytes,
                                              rank)


def test_fused_checks_workspace_and_rows():
    x = torch.randn(4, 64, dtype=torch.bfloat16, device="meta")
    w = torch.randn(64, dtype=torch.bfloat16, device="meta")
    ok = (x, torch.empty_like(x), w, torch.empty_like(x), [1, 2], 512, 1)
    torch.ops.fuseinfer.custom_fused_allreduce_add_rmsnorm(*ok)  # 512 bytes: fits one-shot
    with pytest.raises(ValueError, match="workspace"):  # two-shot keeps twice the bytes
        torch.ops.fuseinfer.custom_fused_allreduce_add_rmsnorm(*ok, True)
    with pytest.raises(ValueError, match="weight"):
        torch.ops.fuseinfer.custom_fused_allreduce_add_rmsnorm(
            x, torch.empty_like(x), w[:32], torch.empty_like(x), [1, 2], 4096, 0)
    with pytest.raises(ValueError, match="rank"):
        torch.ops.fuseinfer.custom_fused_allreduce_add_rmsnorm(
            x, torch.empty_like(x), w, torch.empty_like(x), [1, 2], 4096, 2)


def test_references_follow_float64_math():
    inputs = [torch.randn(5, 96, dtype=torch.bfloat16) for _ in range(4)]
    residual = torch.randn(5, 96, dtype=torch.bfloat16)
    weight = torch.randn(96, dtype=torch.bfloat16)
    total = sum(x.double() for x in inputs)
    torch.testing.assert_close(reference_all_reduce(inputs).double(), total, rtol=1e-2,
                               atol=1e-2)
    out, new_residual = reference_fused_allreduce_add_rmsnorm(inputs, residual, weight, 1e-6)
    summed = total.to(torch.bfloat16).double() + residual.double()
    want = summed * torch.rsqrt(summed.pow(2).mean(-1, keepdim=True) + 1e-6) * weight.double()
    torch.testing.assert_close(new_residual.double(), summed, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(out.double(), want, rtol=2e-2, atol=2e-2)


def _fused_rank(rank: int, world: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                            world_size=world)
    try:
        parallel = ParallelState(rank, world, dist.group.WORLD)
        torch.manual_seed(0)  # the same draws on every rank: rank r's input is the r-th
        inputs = [torch.randn(7, 64) for _ in range(world)]
        residual, weight = torch.randn(7, 64), torch.randn(64)
        want_out, want_res = reference_fused_allreduce_add_rmsnorm(inputs, residual, weight,
                                                                   1e-5)
        x, res = inputs[rank].clone(), residual.clone()
        got = fused_allreduce_add_rmsnorm(x, res, weight, 1e-5, parallel)
        assert got is x
        torch.testing.assert_close(res, want_res, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x, want_out, rtol=1e-5, atol=1e-5)
        torch.save((x, res), Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_fused_allreduce_add_rmsnorm_over_gloo(tmp_path):
    mp.spawn(_fused_rank, args=(2, str(tmp_path)), nprocs=2, join=True)
    (x0, r0), (x1, r1) = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert torch.equal(x0, x1) and torch.equal(r0, r1)  # every rank: the same bits


def test_single_rank_is_the_plain_fused_norm():
    x, residual, weight = torch.randn(3, 32), torch.randn(3, 32), torch.randn(32)
    want_out, want_res = reference_fused_allreduce_add_rmsnorm([x], residual, weight, 1e-6)
    fused_allreduce_add_rmsnorm(x, residual, weight, 1e-6, ParallelState())
    torch.testing.assert_close(x, want_out)
    torch.testing.assert_close(residual, want_res)


def test_tensor_parallel_switches_ablate_only_with_several_ranks():
    one = EngineArgs(model="tiny-qwen3", load_format="dummy")
    names, _ = ablation_variants(one, ["all"])
    assert "custom-allreduce" not in names and "fused-allreduce-rmsnorm" not in names
    names, variants = ablation_variants(replace(one, tp=2), ["all"])
    assert {"custom-allreduce", "fused-allreduce-rmsnorm"} <= set(names)
    turned_off = dict(variants)["without fused-allreduce-rmsnorm"]
    assert turned_off.disable_fused_allreduce_rmsnorm and not turned_off.disable_custom_allreduce
