"""Paged attention (Triton kernels) on the GPU against the float32 reference (itself checked
against SDPA and the sink identity in the CPU suite): head dims, page sizes, GQA groups,
ragged extend batches, windows, sinks, soft-cap, FP8 KV, lse, split-KV, both decode
paths, padded rows, the split pieces merged by the last to finish or by a second kernel,
PDL on/off, CUDA-graph replay with changing lengths, torch.compile."""

from __future__ import annotations

import math

import pytest
import torch

from fuseinfer.bench.attention_inputs import make_paged_kv
from fuseinfer.ops import AttentionShape, PagedAttention
from fuseinfer.ops.attention.dispatch import ATTENTION_BUILTIN
from fuseinfer.ops.attention.reference import reference_paged_attention

TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3}


def _features(name, hq):
    sinks = (torch.randn(hq, device="cuda") * 2) if "sinks" in name else None
    return dict(sinks=sinks, window_left=37 if "window" in name else None,
                logit_cap=20.0 if "cap" in name else 0.0)


def _check(out, lse, q, kv, page_table, indptr, kv_lens, dtype, scale, **kw):
    want, want_lse = reference_paged_attention(
        q, kv.k_cache, kv.v_cache, page_table, indptr, kv_lens, sm_scale=scale,
        k_scale=kv.k_scale, v_scale=kv.v_scale, **kw)
    tol = TOL[dtype] * (2 if kv.k_scale is not None else 1)
    torch.testing.assert_close(out.float(), want, rtol=tol, atol=tol)
    live = torch.isfinite(want_lse)
    torch.testing.assert_close(lse[live], want_lse[live], rtol=1e-3, atol=1e-3)
    assert torch.equal(torch.isfinite(lse), live)


PREFILL_CASES = [  # (q_lens, kv_lens): prefill, extend on a cached prefix, tiny requests
    ([300, 1, 77], [300, 450, 77]),
    ([128, 1000], [640, 1000]),
]


@pytest.mark.parametrize("features", ["plain", "window", "sinks", "cap", "window-sinks-cap"])
@pytest.mark.parametrize("head_dim, hq, hkv, page_size, dtype", [
    (64, 8, 1, 16, torch.bfloat16), (128, 8, 2, 1, torch.bfloat16),
    (128, 4, 4, 128, torch.bfloat16), (256, 4, 2, 1, torch.bfloat16),
    (128, 8, 2, 16, torch.float16),
])
def test_prefill_matches_reference(features, head_dim, hq, hkv, page_size, dtype):
    for q_lens, kv_lens in PREFILL_CASES:
        kv = make_paged_kv(kv_lens, hkv, head_dim, page_size, dtype, "cuda", poison=True)
        q = torch.randn(sum(q_lens), hq, head_dim, device="cuda", dtype=dtype)
        attn = PagedAttention(AttentionShape(hq, hkv, head_dim, page_size), "cuda")
        plan = attn.plan_prefill(q_lens, kv_lens, kv.page_table)
        kw = _features(features, hq)
        out = torch.full_like(q, float("nan"))
        out, lse = attn.run(plan, q, kv.k_cache, kv.v_cache, out=out, return_lse=True, **kw)
        _check(out, lse, q, kv, kv.page_table, plan.q_indptr, plan.kv_lens, dtype,
               head_dim ** -0.5, **kw)


@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("page_size", [1, 16])
def test_prefill_fp8_cache(page_size, per_head):
    q_lens, kv_lens = [200, 3], [260, 3]
    kv = make_paged_kv(kv_lens, 2, 128, page_size, torch.bfloat16, "cuda", fp8=True,
                       per_head_scales=per_head)
    q = torch.randn(sum(q_lens), 8, 128, device="cuda", dtype=torch.bfloat16)
    attn = PagedAttention(AttentionShape(8, 2, 128, page_size), "cuda")
    plan = attn.plan_prefill(q_lens, kv_lens, kv.page_table)
    kw = _features("sinks-window", 8)
    out, lse = attn.run(plan, q, kv.k_cache, kv.v_cache, return_lse=True, k_scale=kv.k_scale,
                        v_scale=kv.v_scale, **kw)
    _check(out, lse, q, kv, kv.page_table, plan.q_indptr, plan.kv_lens, torch.bfloat16,
           128 ** -0.5, **kw)


def _decode(attn, kv, kv_lens, q, splits=None, **kw):
    plan = attn.plan_decode(kv_lens, kv.page_table, splits=splits)
    out = torch.full_like(q, float("nan"))
    out, lse = attn.run(plan, q, kv.k_cache, kv.v_cache, out=out, return_lse=True,
                        k_scale=kv.k_scale, v_scale=kv.v_scale, **kw)
    return plan, out, lse


@pytest.mark.parametrize("features", ["plain", "window", "sinks", "window-sinks-cap"])
@pytest.mark.parametrize("head_dim, hq, hkv, page_size", [
    (64, 64, 8, 16), (128, 32, 8, 1), (128, 8, 8, 128), (128, 16, 8, 1), (256, 8, 1, 64),
])
@pytest.mark.parametrize("splits", [None, 7])
def test_decode_matches_reference(features, head_dim, hq, hkv, page_size, splits):
    kv_lens = [1, 4100, 0, 333, 64, 2048]  # row 2 is a padded batch row
    if features == "plain" and splits == 7:
        splits = 1  # one piece: stage 1 finishes every request
    dtype = torch.bfloat16
    kv = make_paged_kv(kv_lens, hkv, head_dim, page_size, dtype, "cuda", poison=True)
    q = torch.randn(len(kv_lens), hq, head_dim, device="cuda", dtype=dtype)
    attn = PagedAttention(AttentionShape(hq, hkv, head_dim, page_size), "cuda")
    kw = _features(features, hq)
    plan, out, lse = _decode(attn, kv, kv_lens, q, splits, **kw)
    assert (out[2] == 0).all() and (lse[2] == -math.inf).all()
    indptr = torch.arange(len(kv_lens) + 1, dtype=torch.int32, device="cuda")
    _check(out, lse, q, kv, kv.page_table, indptr, plan.kv_lens, dtype, head_dim ** -0.5,
           **kw)


@pytest.mark.parametrize("tensor_core_min_group", [1, 64])
def test_decode_both_paths_and_fp8(tensor_core_min_group):
    table = ATTENTION_BUILTIN.__class__(**{**ATTENTION_BUILTIN.__dict__,
                                           "tensor_core_min_group": tensor_core_min_group})
    kv_lens = [3000, 17, 900]
    for fp8 in (False, True, "head"):
        kv = make_paged_kv(kv_lens, 4, 128, 16, torch.float16, "cuda", fp8=bool(fp8),
                           per_head_scales=fp8 == "head")
        q = torch.randn(3, 16, 128, device="cuda", dtype=torch.float16)
        attn = PagedAttention(AttentionShape(16, 4, 128, 16), "cuda", table=table)
        kw = _features("sinks", 16)
        plan, out, lse = _decode(attn, kv, kv_lens, q, **kw)
        indptr = torch.arange(4, dtype=torch.int32, device="cuda")
        _check(out, lse, q, kv, kv.page_table, indptr, plan.kv_lens, torch.float16,
               128 ** -0.5, **kw)


@pytest.mark.parametrize("tensor_core_min_group", [1, 64])
@pytest.mark.parametrize("features", ["plain", "window-sinks-cap"])
def test_fused_merge_matches_the_merge_kernel(tensor_core_min_group, features):
    """Pieces merged by the last one to finish (the default) against the merge kernel and
    the reference, three calls in a row (the counters return to zero), FP8 scales too."""
    table = ATTENTION_BUILTIN.__class__(**{**ATTENTION_BUILTIN.__dict__,
                                           "tensor_core_min_group": tensor_core_min_group})
    kv_lens = [1, 4100, 0, 333, 64, 2048, 9000]
    for fp8 in (False, True, "head"):
        kv = make_paged_kv(kv_lens, 8, 128, 16, torch.bfloat16, "cuda", fp8=bool(fp8),
                           poison=True, per_head_scales=fp8 == "head")
        q = torch.randn(len(kv_lens), 32, 128, device="cuda", dtype=torch.bfloat16)
        kw = _features(features, 32)
        got = []
        for fused in (True, False):
            attn = PagedAttention(AttentionShape(32, 8, 128, 16), "cuda", table=table,
                                  fused_merge=fused)
            for _ in range(3):
                plan, out, lse = _decode(attn, kv, kv_lens, q, **kw)
            assert plan.splits > 1
            if fused:
                assert (plan.merge_counters == 0).all()
            got.append((out, lse))
        (out, lse), (out_ref, lse_ref) = got
        torch.testing.assert_close(out.float(), out_ref.float(), rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(lse, lse_ref, rtol=1e-5, atol=1e-5)
        indptr = torch.arange(len(kv_lens) + 1, dtype=torch.int32, device="cuda")
        _check(out, lse, q, kv, kv.page_table, indptr, plan.kv_lens, torch.bfloat16,
               128 ** -0.5, **kw)


def test_pdl_on_and_off_identical():
    kv_lens = [5000, 12]
    kv = make_paged_kv(kv_lens, 8, 64, 16, torch.bfloat16, "cuda")
    q = torch.randn(2, 64, 64, device="cuda", dtype=torch.bfloat16)
    qp = torch.randn(400, 64, 64, device="cuda", dtype=torch.bfloat16)
    kw = _features("sinks-window", 64)
    outs = []
    for pdl in (True, False):
        attn = PagedAttention(AttentionShape(64, 8, 64, 16), "cuda", enable_pdl=pdl)
        outs.append(_decode(attn, kv, kv_lens, q, **kw)[1])
        plan = attn.plan_prefill([400, 0], [5000, 12], kv.page_table)
        outs.append(attn.run(plan, qp, kv.k_cache, kv.v_cache, **kw))
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[3])


def test_decode_cuda_graph_replay_with_new_lengths():
    batch, hq, hkv, d, page = 8, 32, 8, 128, 16
    max_len = 6000
    kv = make_paged_kv([max_len] * batch, hkv, d, page, torch.bfloat16, "cuda")
    table = kv.page_table.clone()  # a fixed buffer the graph reads
    attn = PagedAttention(AttentionShape(hq, hkv, d, page), "cuda", max_batch=batch)
    q = torch.randn(batch, hq, d, device="cuda", dtype=torch.bfloat16)
    sinks = torch.randn(hq, device="cuda")
    plan = attn.plan_decode([1] * batch, table)
    out = torch.empty_like(q)
    attn.run(plan, q, kv.k_cache, kv.v_cache, out=out, sinks=sinks)  # compile outside
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        attn.run(plan, q, kv.k_cache, kv.v_cache, out=out, sinks=sinks)
    indptr = torch.arange(batch + 1, dtype=torch.int32, device="cuda")
    for lens in ([5, 6000, 1, 0, 257, 4096, 33, 1000], [6000] * batch, [0] * 7 + [2]):
        again = attn.plan_decode(lens, table)
        assert again.kv_lens.data_ptr() == plan.kv_lens.data_ptr()
        assert again.partial_out.data_ptr() == plan.partial_out.data_ptr()
        q.copy_(torch.randn_like(q))
        out.fill_(float("nan"))
        graph.replay()
        want, _ = reference_paged_attention(q, kv.k_cache, kv.v_cache, table, indptr,
                                            again.kv_lens, sm_scale=d ** -0.5, sinks=sinks)
        torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)


def test_decode_under_torch_compile():
    kv_lens = [700, 9]
    kv = make_paged_kv(kv_lens, 2, 128, 16, torch.bfloat16, "cuda")
    attn = PagedAttention(AttentionShape(8, 2, 128, 16), "cuda")
    plan = attn.plan_decode(kv_lens, kv.page_table)
    q = torch.randn(2, 8, 128, device="cuda", dtype=torch.bfloat16)

    def step(x):
        return attn.run(plan, x * 2, kv.k_cache, kv.v_cache)

    got = torch.compile(step, fullgraph=True)(q)
    torch.testing.assert_close(got, step(q), rtol=0, atol=0)


def test_attention_suite_times_an_fp8_cache_beside_bf16():
    """`bench attention --fp8-kv`: decode rows carry the FP8 cache's time, its speedup and
    its error against the reference (per-head scales)."""
    from fuseinfer.bench.suites import attention as suite
    from fuseinfer.bench.timing import TimingConfig

    cases = suite.decode_cases([suite.MODELS["GPT-OSS"]], (4,), (2048,), extra=())
    rows = suite.run(cases, [], None, None, config=TimingConfig(repeats=2,
                                                                  target_graph_ms=0.2),
                     fp8_kv=True)
    row = rows[0]
    assert row["fp8_rel_err"] < 0.05 and row["rel_err"] < 0.01
    assert row["fp8_us"] > 0 and "fp8_speedup" in row


def test_attention_suite_times_the_fused_merge():
    """`bench attention --fused-merge`: decode rows carry the time with the pieces merged
    by the last one, its speedup and its error against the reference."""
    from fuseinfer.bench.suites import attention as suite
    from fuseinfer.bench.timing import TimingConfig

    cases = suite.decode_cases([suite.MODELS["Llama-3-8B"]], (1,), (8192,), extra=())
    row = suite.run(cases, [], None, None, config=TimingConfig(repeats=2, target_graph_ms=0.2),
                    fused_merge=True)[0]
    assert row["splits"] > 1  # pieces to merge
    assert row["fused_rel_err"] < 0.01 and row["fused_us"] > 0
    assert row["fused_speedup"] == pytest.approx(row["us"] / row["fused_us"])


@pytest.mark.parametrize("per_program", [1, 2, 4])
@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("features", ["plain", "window-sinks-cap"])
@pytest.mark.parametrize("head_dim, hq, hkv, page_size", [(64, 64, 8, 16), (128, 32, 8, 64),
                                                          (128, 16, 8, 1)])
def test_decode_with_several_kv_heads_per_program(per_program, fp8, features, head_dim, hq,
                                                  hkv, page_size):
    """KV heads read side by side by one program (a table choice) against the reference,
    split pieces merged both ways, FP8 caches with a scale per KV head."""
    table = ATTENTION_BUILTIN.__class__(**{
        **ATTENTION_BUILTIN.__dict__, "tensor_core_min_group": 2,
        "decode_rules": tuple(r.__class__(**{**r.__dict__, "kv_heads_per_program":
                                             per_program})
                              for r in ATTENTION_BUILTIN.decode_rules)})
    kv_lens = [1, 4100, 0, 333, 64, 2048]  # row 2 is a padded batch row
    kv = make_paged_kv(kv_lens, hkv, head_dim, page_size, torch.bfloat16, "cuda", fp8=fp8,
                       per_head_scales=fp8, poison=True)
    q = torch.randn(len(kv_lens), hq, head_dim, device="cuda", dtype=torch.bfloat16)
    kw = _features(features, hq)
    indptr = torch.arange(len(kv_lens) + 1, dtype=torch.int32, device="cuda")
    for fused in (True, False):
        attn = PagedAttention(AttentionShape(hq, hkv, head_dim, page_size), "cuda",
                              table=table, fused_merge=fused)
        plan, out, lse = _decode(attn, kv, kv_lens, q, **kw)
        assert plan.launch.kv_heads_per_program == per_program
        assert (out[2] == 0).all() and (lse[2] == -math.inf).all()
        _check(out, lse, q, kv, kv.page_table, indptr, plan.kv_lens, torch.bfloat16,
               head_dim ** -0.5, **kw)
