"""RoPE and fused RoPE + KV write on the GPU against the CPU reference (itself checked
against float64 in the CPU suite): styles, partial rotary, GQA, strided qkv views, paged
and flat caches, FP8, int32/int64 indices, every launch shape, PDL, CUDA graphs."""

from __future__ import annotations

import pytest
import torch
from qkv_cases import assert_close, cpu_run, make_case

import fuseinfer
from fuseinfer.ops.rope.dispatch import (
    ROPE_BUILTIN,
    RopeDispatch,
    RopeLaunchRule,
    push_rope,
)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("model", [(32, 8, 128, 128), (16, 8, 128, 128), (64, 8, 64, 64),
                                   (4, 2, 128, 64), (6, 3, 80, 32), (4, 1, 66, 34)])
@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("tokens", [1, 7, 300])
def test_fused_rope_kv_matches_reference(tokens, is_neox, model, dtype):
    q_heads, k_heads, head, rotary = model
    case = make_case(tokens, q_heads, k_heads, head, rotary, dtype, pad=8)
    want_qkv, want_kc, want_vc = cpu_run(case, head, is_neox)
    qkv, q, k, v, kc, vc, loc, pos, cs = case
    fuseinfer.ops.rope_with_cos_sin_cache(pos, q, k, head, cs, is_neox, v, kc, vc, loc)
    assert_close(qkv, want_qkv, dtype)
    written = loc.long()
    assert_close(kc.view(-1, k_heads * head)[written], want_kc.view(-1, k_heads * head)
                 [written.cpu()], dtype)
    assert torch.equal(vc.view(-1, k_heads * head)[written].cpu(),
                       want_vc.view(-1, k_heads * head)[written.cpu()])
    # the cache holds exactly the rotated key the kernel wrote back
    assert torch.equal(kc.view(-1, k_heads * head)[written], k.reshape(tokens, -1))


@pytest.mark.parametrize("cache", ["flat", "paged"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_rope_only_and_layouts(cache, index_dtype):
    case = make_case(33, 8, 2, 128, 128, torch.bfloat16, cache=cache, index_dtype=index_dtype)
    qkv, q, k, v, kc, vc, loc, pos, cs = case
    ref = fuseinfer.ops.rope.rope_with_cos_sin_cache.reference_rope
    want_q = ref(pos.cpu(), q.cpu(), 128, cs.cpu(), True)
    want_k = ref(pos.cpu(), k.cpu(), 128, cs.cpu(), True)
    v_before = v.clone()
    fuseinfer.ops.rope_with_cos_sin_cache(pos, q, k, 128, cs, True)
    assert_close(q, want_q, torch.bfloat16)
    assert_close(k, want_k, torch.bfloat16)
    assert torch.equal(v, v_before) and torch.isnan(kc.float()).all()
    fuseinfer.ops.rope_with_cos_sin_cache(pos, q, k, 128, cs, True, v, kc, vc, loc)
    assert torch.equal(vc.view(-1, 256)[loc.long()], v)


@pytest.mark.parametrize("per_head", [False, True])
def test_fp8_cache_with_scales(per_head):
    case = make_case(40, 8, 2, 128, 128, torch.bfloat16, cache_dtype=torch.float8_e4m3fn)
    scales = (torch.tensor([0.05, 0.003], device="cuda"),
              torch.tensor([0.02, 0.4], device="cuda")) if per_head else \
        (torch.tensor([0.05], device="cuda"), torch.tensor([0.02], device="cuda"))
    want_qkv, want_kc, want_vc = cpu_run(case, 128, True, scales)
    qkv, q, k, v, kc, vc, loc, pos, cs = case
    fuseinfer.ops.rope_with_cos_sin_cache(pos, q, k, 128, cs, True, v, kc, vc, loc, *scales)
    rows = loc.long()
    got_k = kc.view(-1, 256)[rows].float().cpu()
    want_k = want_kc.view(-1, 256)[rows.cpu()].float()
    assert ((got_k - want_k).abs() > 0).float().mean() < 0.01  # rounding ties only
    assert torch.equal(vc.view(-1, 256)[rows].cpu().float(), want_vc.view(-1, 256)
                       [rows.cpu()].float())


@pytest.mark.parametrize("rule", [(1, 1, 32), (1, 2, 64), (1, 0, 128), (4, 0, 256),
                                  (16, 0, 1024), (1, 5, 96)])
def test_every_launch_shape(rule):
    tokens_per_block, heads_per_block, threads = rule
    device = torch.cuda.current_device()
    case = make_case(37, 8, 2, 128, 64, torch.bfloat16)
    want_qkv, want_kc, _ = cpu_run(case, 128, False)
    qkv, q, k, v, kc, vc, loc, pos, cs = case
    fuseinfer.ops.rope_with_cos_sin_cache(pos[:1], q[:1].clone(), k[:1].clone(), 128, cs)
    try:
        push_rope(device, RopeDispatch("test", True, (RopeLaunchRule(
            None, tokens_per_block, heads_per_block, threads),)))
        fuseinfer.ops.rope_with_cos_sin_cache(pos, q, k, 128, cs, False, v, kc, vc, loc)
    finally:
        push_rope(device, fuseinfer.dispatch.lookup(
            "rope", fuseinfer.dispatch.current_identity(device)).entry)
    assert_close(qkv, want_qkv, torch.bfloat16)
    assert_close(kc.view(-1, 256)[loc.long()], want_kc.view(-1, 256)[loc.long().cpu()],
                 torch.bfloat16)
    assert ROPE_BUILTIN.rules


def test_pdl_on_off_identical_and_graph_capture():
    case = make_case(64, 8, 2, 128, 128, torch.bfloat16)
    qkv, q, k, v, kc, vc, loc, pos, cs = case
    start = qkv.clone()
    results = []
    for pdl in (True, False):
        qkv.copy_(start)
        fuseinfer.ops.rope_with_cos_sin_cache(pos, q, k, 128, cs, True, v, kc, vc, loc,
                                              enable_pdl=pdl)
        results.append((qkv.clone(), kc.clone()))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1].view(-1, 256)[loc.long()],
                       results[1][1].view(-1, 256)[loc.long()])
    qkv.copy_(start)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fuseinfer.ops.rope_with_cos_sin_cache(pos, q, k, 128, cs, True, v, kc, vc, loc)
    qkv.copy_(start)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(qkv, results[0][0])


@pytest.mark.parametrize("case", ["fused_partial", "head_size", "cache_width", "loc_dtype",
                                  "rotary_odd"])
def test_bad_input_errors_cuda(case):
    qkv, q, k, v, kc, vc, loc, pos, cs = make_case(4, 4, 2, 64, 64, torch.bfloat16)
    fuseinfer.ops.rope_with_cos_sin_cache(pos, q, k, 64, cs)  # loaded: C++ checks below
    op = torch.ops.fuseinfer.rope_with_cos_sin_cache
    calls = {
        "fused_partial": (lambda: op(pos, q, k, 64, cs, True, v, kc, None, loc),
                          "go together"),
        "head_size": (lambda: op(pos, q, k, 48, cs[:, :32]), "not whole heads"),
        "cache_width": (lambda: op(pos, q, k, 64, cs, True, v, kc[:, :1], vc, loc),
                        "k_cache rows hold"),
        "loc_dtype": (lambda: op(pos, q, k, 64, cs, True, v, kc, vc, loc.float()),
                      "cache_loc must be"),
        "rotary_odd": (lambda: op(pos, q, k, 64, cs[:, :63].contiguous()), "must be even"),
    }
    fn, pattern = calls[case]
    with pytest.raises(ValueError, match=pattern):
        fn()


@pytest.mark.parametrize("fused", [False, True])
def test_rope_zero_tokens_is_a_no_op(fused):
    from fuseinfer.ops.rope.rope_with_cos_sin_cache import rope_with_cos_sin_cache

    qkv = torch.empty(0, (8 + 2 * 2) * 128, device="cuda", dtype=torch.bfloat16)
    q, k, v = qkv[:, :1024], qkv[:, 1024:1280], qkv[:, 1280:]
    cos_sin = torch.randn(64, 128, device="cuda")
    kc = torch.randn(32, 2, 128, device="cuda", dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    before_k, before_v = kc.clone(), vc.clone()
    extra = (v, kc, vc, torch.zeros(0, dtype=torch.int64, device="cuda")) if fused else ()
    rope_with_cos_sin_cache(torch.zeros(0, dtype=torch.int64, device="cuda"), q, k, 128,
                            cos_sin, True, *extra)
    torch.cuda.synchronize()  # a zero-grid launch would surface here
    assert torch.equal(kc, before_k) and torch.equal(vc, before_v)
