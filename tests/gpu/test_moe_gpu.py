"""moe_align_block_size and fused_moe on the GPU (Triton) against their references (checked
against float64 in the CPU suite): bf16/fp16 and fp8_block over decode and prefill token
counts, model-like shapes (Qwen3-30B-A3B: E=128, k=8, H=2048, I=768), masked slots,
poisoned outputs, fresh random inputs; PDL on and off give identical bits; every rule of the
built-in `moe` entry runs; the whole op replays inside a CUDA graph."""

from __future__ import annotations

import pytest
import torch

from fuseinfer.ops import fused_moe, moe_align_block_size
from fuseinfer.ops.moe.fused_moe import launch_fused_moe, reference_fused_moe
from fuseinfer.ops.moe.moe_align_block_size import reference_moe_align_block_size
from fuseinfer.ops.moe.moe_dispatch import MOE_BUILTIN

FP8 = torch.float8_e4m3fn


def _routing(t: int, e: int, k: int, masked: bool = True):
    ids = torch.rand(t, e, device="cuda").topk(k, dim=1).indices.to(torch.int32)
    if masked and t > 3:
        ids[::3, -1] = -1  # masked slots
        ids[1, 0] = e      # a slot a shared expert takes
    weights = torch.rand(t, k, device="cuda")
    return weights, ids


def _moe(t, h, inner, e, k, dtype):
    hidden = torch.randn(t, h, device="cuda", dtype=dtype)
    w13 = (torch.randn(e, 2 * inner, h, device="cuda") / h ** 0.5).to(dtype)
    w2 = (torch.randn(e, h, inner, device="cuda") / inner ** 0.5).to(dtype)
    return (hidden, w13, w2, *_routing(t, e, k))


def _fp8(w: torch.Tensor):
    e, n, k = w.shape
    q = (w.float() * 64).clamp(-448, 448).to(FP8)
    scales = torch.rand(e, -(-n // 128), k // 128, device="cuda") * 0.02 + 0.01
    return q, scales


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all()
    return ((out.float() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("t, k, e, block", [(1, 8, 128, 16), (7, 2, 8, 16), (257, 8, 128, 64),
                                            (4096, 8, 64, 32), (3000, 6, 160, 128)])
def test_align(t, k, e, block):
    weights, ids = _routing(t, e, k)
    outs = moe_align_block_size(ids, e, block)
    want = reference_moe_align_block_size(ids.cpu(), e, block)
    for got, ref in zip(outs, want, strict=True):
        assert torch.equal(got.cpu(), ref)
    again = moe_align_block_size(ids, e, block, enable_pdl=False)
    assert all(torch.equal(a, b) for a, b in zip(outs, again, strict=True))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t, h, inner, e, k", [(1, 2048, 768, 128, 8), (5, 256, 96, 8, 2),
                                               (33, 2048, 768, 128, 8),
                                               (512, 1024, 384, 64, 6), (37, 200, 72, 5, 3)])
def test_fused_moe(dtype, t, h, inner, e, k):
    hidden, w13, w2, weights, ids = _moe(t, h, inner, e, k, dtype)
    want = reference_fused_moe(hidden, w13, w2, weights, ids)
    outs = []
    for pdl in (True, False):
        out = torch.full((t, h), float("nan"), device="cuda", dtype=dtype)
        fused_moe(hidden, w13, w2, weights, ids, out=out, enable_pdl=pdl)
        outs.append(out)
    assert _rel_err(outs[0], want) < 1e-2
    torch.testing.assert_close(outs[0].float(), want, rtol=2e-2, atol=2e-2)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("t, h, inner, e, k", [(1, 2048, 768, 128, 8), (9, 256, 128, 8, 2),
                                               (300, 2048, 768, 128, 8)])
def test_fused_moe_fp8(t, h, inner, e, k):
    hidden, w13, w2, weights, ids = _moe(t, h, inner, e, k, torch.bfloat16)
    (q13, s13), (q2, s2) = _fp8(w13), _fp8(w2)
    want = reference_fused_moe(hidden, q13, q2, weights, ids, "fp8_block", s13, s2)
    outs = []
    for pdl in (True, False):
        out = torch.full((t, h), float("nan"), device="cuda", dtype=torch.bfloat16)
        fused_moe(hidden, q13, q2, weights, ids, quant="fp8_block", w13_scales=s13,
                  w2_scales=s2, out=out, enable_pdl=pdl)
        outs.append(out)
    # the reference keeps gate_up in fp32; the kernels round it to bf16 before quantizing,
    # which moves an activation across an fp8 rounding step now and then
    assert _rel_err(outs[0], want) < 3e-2
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("quant", [None, "fp8_block"])
def test_every_builtin_rule_runs(quant):
    t, h, inner, e, k = 70, 256, 256, 8, 2
    hidden, w13, w2, weights, ids = _moe(t, h, inner, e, k, torch.bfloat16)
    scales: tuple = (None, None)
    if quant:
        (w13, s13), (w2, s2) = _fp8(w13), _fp8(w2)
        scales = (s13, s2)
    want = reference_fused_moe(hidden, w13, w2, weights, ids, quant, *scales)
    for rule in MOE_BUILTIN.fp8_rules if quant else MOE_BUILTIN.rules:
        out = torch.full((t, h), float("nan"), device="cuda", dtype=torch.bfloat16)
        launch_fused_moe(out, hidden, w13, w2, weights, ids, quant, *scales, rule, pdl=True)
        assert _rel_err(out, want) < (3e-2 if quant else 1e-2), rule


def test_fused_moe_replays_in_a_cuda_graph():
    t, h, inner, e, k = 16, 2048, 768, 128, 8
    hidden, w13, w2, weights, ids = _moe(t, h, inner, e, k, torch.bfloat16)
    out = torch.empty(t, h, device="cuda", dtype=torch.bfloat16)
    fused_moe(hidden, w13, w2, weights, ids, out=out)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fused_moe(hidden, w13, w2, weights, ids, out=out)
    new_weights, new_ids = _routing(t, e, k)  # new routing: counts change, shapes do not
    hidden.copy_(torch.randn_like(hidden))
    weights.copy_(new_weights)
    ids.copy_(new_ids)
    out.fill_(float("nan"))
    graph.replay()
    want = reference_fused_moe(hidden, w13, w2, weights, ids)
    assert _rel_err(out, want) < 1e-2


def test_fused_moe_errors_on_cuda():
    hidden, w13, w2, weights, ids = _moe(4, 128, 64, 4, 2, torch.bfloat16)
    with pytest.raises(ValueError, match="fused_moe: topk_ids must be on cuda"):
        fused_moe(hidden, w13, w2, weights, ids.cpu())
    with pytest.raises(ValueError, match="fused_moe: w2 must be"):
        fused_moe(hidden, w13, w2.transpose(1, 2), weights, ids)
