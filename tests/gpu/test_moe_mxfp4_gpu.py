"""fused_moe's GPT-OSS path on the GPU: quant="mxfp4" (the Triton W4A16 grouped GEMM
decoding E2M1/E8M0 tiles in the kernel), expert biases and the clamped SwiGLU, against the
float32 reference (checked against float64 math in the CPU suite) over GPT-OSS shapes
(H = I = 2880: K tails past every BLOCK_K; E = 32 and 128, top-4) and a small one, T from 1
to 4096, bf16 and fp16, masked slots, poisoned outputs, fresh random codes and scales; PDL on
and off give identical bits; every built-in mxfp4 rule runs; no bf16 copy of the experts is
allocated; the op replays in a CUDA graph; biases keep fp8_block off the CUTLASS path."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from fuseinfer.ops import fused_moe
from fuseinfer.ops.moe.fused_moe import launch_fused_moe, reference_fused_moe
from fuseinfer.ops.moe.moe_dispatch import MOE_BUILTIN, forced_fp8_backend
from fuseinfer.triton.mxfp4 import mxfp4_pairs_bf16

GPT_OSS = dict(activation="clamped_swiglu", swiglu_alpha=1.702, swiglu_limit=7.0)


def _routing(t: int, e: int, k: int):
    ids = torch.rand(t, e, device="cuda").topk(k, dim=1).indices.to(torch.int32)
    if t > 3:
        ids[::3, -1] = -1  # masked slots
        ids[1, 0] = e      # a slot some other path takes
    return torch.softmax(torch.randn(t, k, device="cuda"), dim=1), ids


def _mxfp4(t, h, inner, e, k, dtype, bias_dtype=torch.float32):
    dev = "cuda"
    hidden = torch.randn(t, h, device=dev, dtype=dtype)
    w13 = torch.randint(0, 256, (e, 2 * inner, h // 2), dtype=torch.uint8, device=dev)
    s13 = torch.randint(118, 123, (e, 2 * inner, h // 32), dtype=torch.uint8, device=dev)
    w2 = torch.randint(0, 256, (e, h, inner // 2), dtype=torch.uint8, device=dev)
    s2 = torch.randint(118, 123, (e, h, inner // 32), dtype=torch.uint8, device=dev)
    b13 = torch.randn(e, 2 * inner, device=dev).to(bias_dtype)
    b2 = (0.5 * torch.randn(e, h, device=dev)).to(bias_dtype)
    return hidden, w13, s13, w2, s2, b13, b2, *_routing(t, e, k)


def _kwargs(s13, s2, b13, b2) -> dict:
    return dict(quant="mxfp4", w13_scales=s13, w2_scales=s2, w13_bias=b13, w2_bias=b2,
                **GPT_OSS)


def _ref(hidden, w13, w2, weights, ids, **kw) -> torch.Tensor:
    kw = dict(kw)
    return reference_fused_moe(hidden, w13, w2, weights, ids, kw.pop("quant"),
                               kw.pop("w13_scales"), kw.pop("w2_scales"), **kw)


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all()
    return ((out.float() - ref).norm() / ref.norm()).item()


@triton.jit
def _pairs_decode(P, S, Out, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_N, BLOCK_K / 2] packed bytes, each with its own scale byte (S, the same
    shape), through the PTX decode; the nibble halves joined as the GEMM joins them."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs = rn[:, None] * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)[None, :]
    lo, hi = mxfp4_pairs_bf16(tl.load(P + offs), tl.load(S + offs))
    w = tl.reshape(tl.join(lo, hi), (BLOCK_N, BLOCK_K))
    tl.store(Out + rn[:, None] * BLOCK_K + tl.arange(0, BLOCK_K)[None, :], w)


def test_ptx_decode_is_bit_exact_for_scales_1_to_254():
    from fuseinfer.ops.quant.fp4_format import e2m1_decode, e8m0_to_float, unpack_nibbles

    # every (byte, scale byte) pair exactly once, each byte with its own scale, shuffled
    # (so the 4 bytes one asm word decodes carry unrelated scales: a swapped pair shows)
    g = torch.Generator().manual_seed(1)
    t = torch.arange(256 * 256)
    order = torch.randperm(t.numel(), generator=g)
    rows = t.numel() // 128
    packed = (t % 256)[order].view(rows, 128).to(torch.uint8)
    scales = ((t // 256 + t) % 256)[order].view(rows, 128).to(torch.uint8)
    out = torch.full((rows, 256), float("nan"), device="cuda", dtype=torch.bfloat16)
    _pairs_decode[(rows // 64,)](packed.cuda(), scales.cuda(), out, BLOCK_N=64, BLOCK_K=256)
    s = scales.long().repeat_interleave(2, dim=1)  # each element's scale byte
    want = (e2m1_decode(unpack_nibbles(packed)) * e8m0_to_float(scales).repeat_interleave(
        2, dim=1)).to(torch.bfloat16)
    got = out.cpu()
    normal = (s >= 1) & (s <= 254)
    assert torch.equal(got.view(torch.int16)[normal], want.view(torch.int16)[normal])
    # the documented edges: scale byte 0 decodes to +-0 (not 2^-127 x value), 255 to
    # +-inf for nonzero codes (not NaN)
    assert (got[s == 0] == 0).all()
    codes = e2m1_decode(unpack_nibbles(packed))
    assert torch.isinf(got[(s == 255) & (codes != 0)].float()).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t, h, inner, e, k", [
    (1, 2880, 2880, 32, 4), (4, 2880, 2880, 128, 4), (32, 2880, 2880, 32, 4),
    (257, 2880, 2880, 128, 4), (4096, 2880, 2880, 32, 4), (4096, 2880, 2880, 128, 4),
    (37, 256, 96, 8, 2), (5, 96, 160, 4, 3)])
def test_mxfp4_gpt_oss_layer(dtype, t, h, inner, e, k):
    hidden, w13, s13, w2, s2, b13, b2, weights, ids = _mxfp4(t, h, inner, e, k, dtype)
    kw = _kwargs(s13, s2, b13, b2)
    want = _ref(hidden, w13, w2, weights, ids, **kw)
    outs = []
    for pdl in (True, False):
        out = torch.full((t, h), float("nan"), device="cuda", dtype=dtype)
        fused_moe(hidden, w13, w2, weights, ids, out=out, enable_pdl=pdl, **kw)
        outs.append(out)
    assert _rel_err(outs[0], want) < 1e-2
    scale = want.abs().max().item()
    torch.testing.assert_close(outs[0].float(), want, rtol=3e-2, atol=3e-2 * scale)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("activation", ["silu", "clamped_swiglu"])
def test_mxfp4_without_biases_and_with_bf16_biases(activation):
    hidden, w13, s13, w2, s2, b13, b2, weights, ids = _mxfp4(19, 2880, 2880, 32, 4,
                                                             torch.bfloat16, torch.bfloat16)
    for biases in ((None, None), (b13, b2)):
        kw = dict(quant="mxfp4", w13_scales=s13, w2_scales=s2, w13_bias=biases[0],
                  w2_bias=biases[1], activation=activation)
        out = fused_moe(hidden, w13, w2, weights, ids, **kw)
        assert _rel_err(out, _ref(hidden, w13, w2, weights, ids, **kw)) < 1e-2


def test_every_builtin_and_tune_candidate_mxfp4_rule_runs():
    """The built-in rules and every tune moe candidate, the split_dot ones included."""
    from dataclasses import replace

    from fuseinfer.bench.suites.moe_tune import MXFP4_CANDIDATES, MXFP4_SPLIT_CANDIDATES
    from fuseinfer.ops.moe.moe_dispatch import Mxfp4LaunchRule

    t, h, inner, e, k = 70, 2880, 2880, 32, 4
    hidden, w13, s13, w2, s2, b13, b2, weights, ids = _mxfp4(t, h, inner, e, k,
                                                             torch.bfloat16)
    want = _ref(hidden, w13, w2, weights, ids, **_kwargs(s13, s2, b13, b2))
    candidates = [Mxfp4LaunchRule(None, *c) for c in MXFP4_CANDIDATES + MXFP4_SPLIT_CANDIDATES]
    split_builtins = [replace(r, split_dot=True) for r in MOE_BUILTIN.mxfp4_rules]
    for rule in (*MOE_BUILTIN.mxfp4_rules, *split_builtins, *candidates):
        out = torch.full((t, h), float("nan"), device="cuda", dtype=torch.bfloat16)
        launch_fused_moe(out, hidden, w13, w2, weights, ids, "mxfp4", s13, s2, rule,
                         pdl=True, activation="clamped_swiglu", w13_bias=b13, w2_bias=b2)
        assert _rel_err(out, want) < 1e-2, rule


def test_no_bf16_copy_of_the_experts():
    t, h, inner, e, k = 32, 2880, 2880, 32, 4
    hidden, w13, s13, w2, s2, b13, b2, weights, ids = _mxfp4(t, h, inner, e, k,
                                                             torch.bfloat16)
    kw = _kwargs(s13, s2, b13, b2)
    fused_moe(hidden, w13, w2, weights, ids, **kw)  # compile first
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fused_moe(hidden, w13, w2, weights, ids, **kw)
    torch.cuda.synchronize()
    bf16_experts = e * 3 * h * inner * 2
    assert torch.cuda.max_memory_allocated() - before < bf16_experts / 50


def test_mxfp4_replays_in_a_cuda_graph():
    t, h, inner, e, k = 16, 2880, 2880, 128, 4
    hidden, w13, s13, w2, s2, b13, b2, weights, ids = _mxfp4(t, h, inner, e, k,
                                                             torch.bfloat16)
    kw = _kwargs(s13, s2, b13, b2)
    out = torch.empty(t, h, device="cuda", dtype=torch.bfloat16)
    fused_moe(hidden, w13, w2, weights, ids, out=out, **kw)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fused_moe(hidden, w13, w2, weights, ids, out=out, **kw)
    new_weights, new_ids = _routing(t, e, k)
    hidden.copy_(torch.randn_like(hidden))
    weights.copy_(new_weights)
    ids.copy_(new_ids)
    out.fill_(float("nan"))
    graph.replay()
    assert _rel_err(out, _ref(hidden, w13, w2, weights, ids, **kw)) < 1e-2


def test_fp8_with_biases_or_clamped_swiglu_stays_off_cutlass():
    from test_moe_gpu import _fp8, _moe  # same folder

    t, h, inner, e, k = 300, 2048, 768, 128, 8  # a bucket the CUTLASS path would take
    hidden, w13, w2, weights, ids = _moe(t, h, inner, e, k, torch.bfloat16)
    (q13, s13), (q2, s2) = _fp8(w13), _fp8(w2)
    b13 = torch.randn(e, 2 * inner, device="cuda")
    b2 = torch.randn(e, h, device="cuda")
    for kw in (dict(w13_bias=b13, w2_bias=b2), dict(activation="clamped_swiglu"),
               dict(w2_bias=b2, activation="clamped_swiglu")):
        want = reference_fused_moe(hidden, q13, q2, weights, ids, "fp8_block", s13, s2, **kw)
        with forced_fp8_backend("cutlass"):
            out = fused_moe(hidden, q13, q2, weights, ids, quant="fp8_block",
                            w13_scales=s13, w2_scales=s2, **kw)
        assert _rel_err(out, want) < 3e-2, kw


def test_mxfp4_errors_on_cuda():
    hidden, w13, s13, w2, s2, b13, b2, weights, ids = _mxfp4(4, 256, 128, 4, 2,
                                                             torch.bfloat16)
    with pytest.raises(ValueError, match="fused_moe: w13_scales must be on cuda"):
        fused_moe(hidden, w13, w2, weights, ids, quant="mxfp4", w13_scales=s13.cpu(),
                  w2_scales=s2)
    with pytest.raises(ValueError, match="fused_moe: w2_bias must be on cuda"):
        fused_moe(hidden, w13, w2, weights, ids, quant="mxfp4", w13_scales=s13,
                  w2_scales=s2, w2_bias=b2.cpu())
