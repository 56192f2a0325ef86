"""store_kv_cache on the GPU against the CPU reference (itself checked in the CPU suite):
flat and paged caches, bf16 and FP8 with scales, strided rows, the scalar path for
misaligned rows, only the named slots written, PDL on and off identical, CUDA graphs."""

from __future__ import annotations

import pytest
import torch
from qkv_cases import make_case

import fuseinfer


@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.float8_e4m3fn, "fp8 per head"])
@pytest.mark.parametrize("cache", ["flat", "paged"])
@pytest.mark.parametrize("tokens", [1, 5, 1000])
def test_store_kv_cache(tokens, cache, cache_dtype):
    per_head = cache_dtype == "fp8 per head"
    if per_head:
        cache_dtype = torch.float8_e4m3fn
    case = make_case(tokens, 4, 8, 128, 128, torch.bfloat16, cache=cache,
                     cache_dtype=cache_dtype, pad=8)
    _, _, k, v, kc, vc, loc, _, _ = case
    scale = torch.tensor([0.1], device="cuda") if cache_dtype != torch.bfloat16 else None
    if per_head:  # 8 KV heads of 128, each its own scale (out of order, none saturating)
        scale = torch.tensor([0.1, 0.03, 0.4, 0.05, 0.2, 0.02, 0.3, 0.07], device="cuda")
    want_kc, want_vc = kc.cpu().clone(), vc.cpu().clone()
    cpu_scale = scale.cpu() if scale is not None else None
    fuseinfer.ops.store_kv_cache(want_kc, want_vc, loc.cpu(), k.cpu(), v.cpu(), cpu_scale,
                                 cpu_scale)
    fuseinfer.ops.store_kv_cache(kc, vc, loc, k, v, scale, scale)
    rows = loc.long()
    for got, want in ((kc, want_kc), (vc, want_vc)):
        g = got.view(-1, 1024)[rows].cpu().float()
        w = want.view(-1, 1024)[rows.cpu()].float()
        assert ((g - w).abs() > 0).float().mean() < 0.01
    untouched = torch.ones(kc.view(-1, 1024).size(0), dtype=torch.bool)
    untouched[rows.cpu()] = False
    assert torch.isnan(kc.view(-1, 1024)[untouched.cuda()].float()).all()


def test_store_misaligned_rows_take_scalar_path():
    k = torch.randn(9, 3 * 130 + 1, device="cuda", dtype=torch.bfloat16)[:, 1:]
    v = torch.randn(9, 390, device="cuda", dtype=torch.bfloat16)
    kc = torch.zeros(20, 390, device="cuda", dtype=torch.bfloat16)
    vc = torch.zeros_like(kc)
    loc = torch.arange(9, device="cuda", dtype=torch.int32) * 2
    fuseinfer.ops.store_kv_cache(kc, vc, loc, k, v)
    assert torch.equal(kc[loc.long()], k) and torch.equal(vc[loc.long()], v)


def test_pdl_on_off_identical_and_graph_capture():
    _, _, k, v, kc, vc, loc, _, _ = make_case(64, 8, 2, 128, 128, torch.bfloat16)
    rows = loc.long()
    results = []
    for pdl in (True, False):
        kc.fill_(float("nan"))
        vc.fill_(float("nan"))
        fuseinfer.ops.store_kv_cache(kc, vc, loc, k, v, enable_pdl=pdl)
        results.append((kc.clone(), vc.clone()))
    assert torch.equal(results[0][0].view(-1, 256)[rows], results[1][0].view(-1, 256)[rows])
    assert torch.equal(results[0][1].view(-1, 256)[rows], results[1][1].view(-1, 256)[rows])
    assert torch.equal(results[0][0].view(-1, 256)[rows], k)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fuseinfer.ops.store_kv_cache(kc, vc, loc, k, v)
    kc.fill_(float("nan"))
    k.copy_(torch.randn_like(k))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(kc.view(-1, 256)[rows], k)


@pytest.mark.parametrize("layout", [(0, 8, 128), (0, 1024)])
def test_store_kv_cache_zero_tokens_is_a_no_op(layout):
    kc = torch.randn(64, 8, 128, device="cuda", dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    before_k, before_v = kc.clone(), vc.clone()
    k = torch.empty(layout, device="cuda", dtype=torch.bfloat16)
    fuseinfer.ops.store_kv_cache(kc, vc, torch.zeros(0, dtype=torch.int32, device="cuda"),
                                 k, torch.empty_like(k))
    torch.cuda.synchronize()  # a zero-grid launch would surface here
    assert torch.equal(kc, before_k) and torch.equal(vc, before_v)
