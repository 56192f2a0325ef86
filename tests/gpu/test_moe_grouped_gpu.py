"""fp8_blockwise_grouped_mm (CUTLASS ptr-array, sm_90a) and fused_moe's grouped path on the
GPU against their float32 references: every configuration of the menu, ragged and empty
experts, N not a multiple of 128, bf16 and fp16 out, rows no expert covers left poisoned,
new expert offsets picked up by a replayed CUDA graph (sizes built on the device), and
fused_moe with the cutlass backend forced, masked slots included, eager and in a graph."""

from __future__ import annotations

import pytest
import torch

from fuseinfer.ops import fp8_blockwise_grouped_mm, fused_moe
from fuseinfer.ops.moe.fp8_blockwise_grouped_mm import (
    built_grouped_configs,
    reference_fp8_blockwise_grouped_mm,
)
from fuseinfer.ops.moe.fused_moe import reference_fused_moe
from fuseinfer.ops.moe.moe_dispatch import GROUPED_CONFIGS, forced_fp8_backend

FP8 = torch.float8_e4m3fn
SM90_CONFIGS = [c for c in GROUPED_CONFIGS if c.startswith("sm90_")]  # built for this GPU

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
    reason="the CUTLASS grouped kernels are built for sm_90a")


def _case(counts: list[int], n: int, k: int, spare: int = 5):
    e = len(counts)
    rows = sum(counts) + spare
    a_q = (4 * torch.randn(rows, k, device="cuda")).to(FP8)
    a_scales = (0.5 + torch.rand(rows, k // 128, device="cuda")) * 2.0 ** -4
    b_q = (4 * torch.randn(e, n, k, device="cuda")).to(FP8)
    b_scales = (0.5 + torch.rand(e, -(-n // 128), k // 128, device="cuda")) * 2.0 ** -4
    offsets = torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), dtype=torch.int32,
                           device="cuda")
    return a_q, a_scales, b_q, b_scales, offsets


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).norm() / want.norm()).item()


def test_every_menu_configuration_is_built():
    assert sorted(built_grouped_configs()) == sorted(SM90_CONFIGS)


@pytest.mark.parametrize("config", SM90_CONFIGS)
@pytest.mark.parametrize("counts, n, k", [
    ([1, 0, 37, 5, 0, 130, 2, 64], 1536, 2048),   # ragged, empty experts (Qwen3-MoE w13)
    ([300, 1, 77], 2048, 768),                    # many rows for one expert (w2)
    ([3] * 16, 136, 256),                         # N not a multiple of 128
])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_grouped_mm_matches_the_reference(config, counts, n, k, out_dtype):
    a_q, a_scales, b_q, b_scales, offsets = _case(counts, n, k)
    out = torch.full((a_q.shape[0], n), float("nan"), dtype=out_dtype, device="cuda")
    fp8_blockwise_grouped_mm(a_q, a_scales, b_q, b_scales, offsets, out=out, config=config)
    covered = int(offsets[-1])
    want = reference_fp8_blockwise_grouped_mm(a_q, a_scales, b_q, b_scales, offsets)
    assert _rel(out[:covered], want[:covered]) < 1e-2
    bounds = offsets.tolist()
    for e in range(len(counts)):  # each expert on its own: a wrong pointer shows here
        lo, hi = bounds[e], bounds[e + 1]
        if hi > lo:
            assert _rel(out[lo:hi], want[lo:hi]) < 1e-2, (e, lo, hi)
    assert torch.isnan(out[covered:].float()).all()  # rows no expert covers: untouched


@pytest.mark.parametrize("config", SM90_CONFIGS)
def test_a_replayed_graph_follows_new_offsets(config):
    a_q, a_scales, b_q, b_scales, offsets = _case([10, 20, 30, 40], 512, 512)
    out = torch.zeros(a_q.shape[0], 512, dtype=torch.bfloat16, device="cuda")
    call = lambda: fp8_blockwise_grouped_mm(a_q, a_scales, b_q, b_scales,  # noqa: E731
                                            offsets, out=out, config=config)
    call()  # builds and loads outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    offsets.copy_(torch.tensor([0, 50, 50, 51, 100], dtype=torch.int32))
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    want = reference_fp8_blockwise_grouped_mm(a_q, a_scales, b_q, b_scales, offsets)
    assert _rel(out[:100], want[:100]) < 1e-2
    assert torch.isnan(out[100:].float()).all()


def _fp8_weights(e: int, n: int, k: int):
    q = (torch.randn(e, n, k, device="cuda") * 64).clamp(-448, 448).to(FP8)
    scales = torch.rand(e, -(-n // 128), k // 128, device="cuda") * 2e-4 + 1e-4
    return q, scales


@pytest.mark.parametrize("t", [1, 7, 64, 600])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_moe_cutlass_path_matches_the_reference(t, dtype):
    e, k, h, inner = 16, 4, 512, 384
    hidden = torch.randn(t, h, device="cuda", dtype=dtype)
    q13, s13 = _fp8_weights(e, 2 * inner, h)
    q2, s2 = _fp8_weights(e, h, inner)
    ids = torch.rand(t, e, device="cuda").topk(k, dim=1).indices.to(torch.int32)
    if t > 3:
        ids[::3, -1] = -1  # masked slots
        ids[1, 0] = e      # a slot a shared expert takes
    weights = torch.rand(t, k, device="cuda")
    out = torch.full((t, h), float("nan"), dtype=dtype, device="cuda")
    with forced_fp8_backend("cutlass"):
        fused_moe(hidden, q13, q2, weights, ids, quant="fp8_block", w13_scales=s13,
                  w2_scales=s2, out=out)
    want = reference_fused_moe(hidden, q13, q2, weights, ids, "fp8_block", s13, s2)
    assert _rel(out, want) < 3e-2
    with forced_fp8_backend("triton"):
        triton = fused_moe(hidden, q13, q2, weights, ids, quant="fp8_block", w13_scales=s13,
                           w2_scales=s2)
    assert _rel(out, triton.float()) < 3e-2


def test_fused_moe_cutlass_path_replays_in_a_graph():
    e, k, h, inner, t = 8, 2, 256, 256, 33
    hidden = torch.randn(t, h, device="cuda", dtype=torch.bfloat16)
    q13, s13 = _fp8_weights(e, 2 * inner, h)
    q2, s2 = _fp8_weights(e, h, inner)
    ids = torch.rand(t, e, device="cuda").topk(k, dim=1).indices.to(torch.int32)
    weights = torch.rand(t, k, device="cuda")
    out = torch.empty(t, h, dtype=torch.bfloat16, device="cuda")
    with forced_fp8_backend("cutlass"):
        run = lambda: fused_moe(hidden, q13, q2, weights, ids,  # noqa: E731
                                quant="fp8_block", w13_scales=s13, w2_scales=s2, out=out)
        run()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run()
    ids.copy_(torch.rand(t, e, device="cuda").topk(k, dim=1).indices.to(torch.int32))
    hidden.copy_(torch.randn(t, h, device="cuda", dtype=torch.bfloat16))
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    want = reference_fused_moe(hidden, q13, q2, weights, ids, "fp8_block", s13, s2)
    assert _rel(out, want) < 3e-2
