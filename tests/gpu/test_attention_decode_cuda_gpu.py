"""The CUDA decode kernel (csrc/attention, a decode rule's kernel "cuda") on the GPU against
the float32 reference: GQA groups 1-16, head dims 64 and 128, bf16/fp16 and FP8 caches
(a scale per KV head), page sizes 1/16/64, windows, sinks, soft-cap, one piece and split
pieces merged by the last piece or by the merge kernel, 4 and 8 warps, 2-4 ring stages,
padded rows, NaN-poisoned cache slots, CUDA-graph replay; and the calls it does not take
(head_dim 256, groups past 16, rings past shared memory) falling back to Triton."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from fuseinfer.bench.attention_inputs import make_paged_kv
from fuseinfer.ops import AttentionShape, PagedAttention
from fuseinfer.ops.attention.arguments import DecodeArgs
from fuseinfer.ops.attention.decode_cuda import cuda_decode_fits
from fuseinfer.ops.attention.dispatch import ATTENTION_BUILTIN, DecodeLaunchRule
from fuseinfer.ops.attention.reference import reference_paged_attention

TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3}


def _table(warps: int = 4, block_n: int = 64, stages: int = 2):
    return replace(ATTENTION_BUILTIN, tensor_core_min_group=1,
                   decode_rules=(DecodeLaunchRule(None, block_n, warps, stages, 1, "cuda"),))


def _features(name, hq):
    sinks = (torch.randn(hq, device="cuda") * 2) if "sinks" in name else None
    return dict(sinks=sinks, window_left=37 if "window" in name else None,
                logit_cap=20.0 if "cap" in name else 0.0)


def _run_and_check(attn, kv, kv_lens, q, dtype, splits=None, **kw):
    plan = attn.plan_decode(kv_lens, kv.page_table, splits=splits)
    plan.partial_out.fill_(float("nan"))  # every read partial must have been written
    out = torch.full_like(q, float("nan"))
    out, lse = attn.run(plan, q, kv.k_cache, kv.v_cache, out=out, return_lse=True,
                        k_scale=kv.k_scale, v_scale=kv.v_scale, **kw)
    indptr = torch.arange(len(kv_lens) + 1, dtype=torch.int32, device="cuda")
    want, want_lse = reference_paged_attention(
        q, kv.k_cache, kv.v_cache, kv.page_table, indptr, plan.kv_lens,
        sm_scale=q.size(2) ** -0.5, k_scale=kv.k_scale, v_scale=kv.v_scale, **kw)
    tol = TOL[dtype] * (2 if kv.k_scale is not None else 1)
    torch.testing.assert_close(out.float(), want, rtol=tol, atol=tol)
    live = torch.isfinite(want_lse)
    torch.testing.assert_close(lse[live], want_lse[live], rtol=1e-3, atol=1e-3)
    assert torch.equal(torch.isfinite(lse), live)
    return plan, out, lse


def _takes_cuda(kv, q, plan) -> bool:
    return cuda_decode_fits(DecodeArgs(q, kv.k_cache, kv.v_cache, plan.page_table,
                                       plan.kv_lens, plan.partial_out, plan.partial_lse, q,
                                       launch=plan.launch))


@pytest.mark.parametrize("cache", ["bf16", "fp16", "fp8"])
@pytest.mark.parametrize("head_dim, hq, hkv, page_size", [
    (64, 64, 8, 16),    # GPT-OSS: group 8
    (128, 32, 8, 64),   # Llama-3-8B: group 4
    (128, 16, 1, 1),    # group 16, one slot per page
    (64, 8, 8, 64),     # group 1
])
@pytest.mark.parametrize("features", ["plain", "window-sinks-cap"])
@pytest.mark.parametrize("splits, stages", [(None, 4), (1, 2)])
def test_cuda_decode_matches_reference(cache, head_dim, hq, hkv, page_size, features, splits,
                                       stages):
    dtype = torch.float16 if cache == "fp16" else torch.bfloat16
    kv_lens = [1, 4100, 0, 333, 64, 2048, 17]  # row 2 is a padded batch row
    kv = make_paged_kv(kv_lens, hkv, head_dim, page_size, dtype, "cuda", fp8=cache == "fp8",
                       per_head_scales=cache == "fp8", poison=True)
    q = torch.randn(len(kv_lens), hq, head_dim, device="cuda", dtype=dtype)
    attn = PagedAttention(AttentionShape(hq, hkv, head_dim, page_size), "cuda",
                          table=_table(stages=stages))
    plan, out, lse = _run_and_check(attn, kv, kv_lens, q, dtype, splits,
                                    **_features(features, hq))
    assert plan.launch.cuda_kernel == 1 and _takes_cuda(kv, q, plan)
    assert (out[2] == 0).all() and (lse[2] == -math.inf).all()


@pytest.mark.parametrize("fused_merge", [True, False])
# 4 warps x 3 FP8 stages: 48 KB of rings, plus the kernel's static bytes past the default
@pytest.mark.parametrize("warps, block_n, stages", [(8, 64, 3), (4, 16, 3), (8, 128, 2)])
def test_cuda_decode_warps_split_alignment_and_merges(warps, block_n, stages, fused_merge):
    """8 warps merge more per-warp states; block_n only aligns the split ranges (the merge
    cuts them the same way; 129 keys at block_n 128 leave an empty third piece); the pieces
    merged by the last to finish (counters back at zero) or by the merge kernel; rings of
    2-4 chunks per warp (a warp with fewer chunks than stages, 16 keys, issues empty
    groups)."""
    kv_lens = [5000, 129, 16, 4096]
    kv = make_paged_kv(kv_lens, 8, 128, 64, torch.bfloat16, "cuda", fp8=True,
                       per_head_scales=True, poison=True)
    q = torch.randn(len(kv_lens), 32, 128, device="cuda", dtype=torch.bfloat16)
    attn = PagedAttention(AttentionShape(32, 8, 128, 64), "cuda",
                          table=_table(warps, block_n, stages), fused_merge=fused_merge)
    for splits in (None, 3):
        for _ in range(2):  # twice: the counters are back at zero for the next call
            plan, _, _ = _run_and_check(attn, kv, kv_lens, q, torch.bfloat16, splits,
                                        **_features("window-sinks", 32))
            assert (plan.merge_counters is not None) == fused_merge
            if fused_merge:
                assert (plan.merge_counters == 0).all()


def test_cuda_decode_falls_back_where_it_does_not_apply():
    """head_dim 256, a group of 32 and 8 warps of 4 bf16 head_dim-128 chunks (256 KB of
    rings) are not the CUDA kernel's: Triton runs them."""
    for hq, hkv, d, warps, stages in ((8, 1, 256, 4, 2), (32, 1, 128, 4, 2),
                                      (32, 8, 128, 8, 4)):
        kv = make_paged_kv([300, 70], hkv, d, 16, torch.bfloat16, "cuda", poison=True)
        q = torch.randn(2, hq, d, device="cuda", dtype=torch.bfloat16)
        attn = PagedAttention(AttentionShape(hq, hkv, d, 16), "cuda",
                              table=_table(warps, stages=stages))
        plan, _, _ = _run_and_check(attn, kv, [300, 70], q, torch.bfloat16)
        assert not _takes_cuda(kv, q, plan)


def test_cuda_decode_cuda_graph_replay_with_new_lengths():
    batch, hq, hkv, d, page = 8, 64, 8, 64, 16
    kv = make_paged_kv([6000] * batch, hkv, d, page, torch.bfloat16, "cuda", fp8=True,
                       per_head_scales=True)
    table = kv.page_table.clone()
    attn = PagedAttention(AttentionShape(hq, hkv, d, page), "cuda", max_batch=batch,
                          table=_table(), fused_merge=True)
    q = torch.randn(batch, hq, d, device="cuda", dtype=torch.bfloat16)
    sinks = torch.randn(hq, device="cuda")
    plan = attn.plan_decode([1] * batch, table)
    out = torch.empty_like(q)
    kw = dict(out=out, sinks=sinks, k_scale=kv.k_scale, v_scale=kv.v_scale)
    attn.run(plan, q, kv.k_cache, kv.v_cache, **kw)  # build and compile outside
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        attn.run(plan, q, kv.k_cache, kv.v_cache, **kw)
    indptr = torch.arange(batch + 1, dtype=torch.int32, device="cuda")
    for lens in ([5, 6000, 1, 0, 257, 4096, 33, 1000], [6000] * batch):
        again = attn.plan_decode(lens, table)
        assert again.kv_lens.data_ptr() == plan.kv_lens.data_ptr()
        q.copy_(torch.randn_like(q))
        out.fill_(float("nan"))
        graph.replay()
        want, _ = reference_paged_attention(q, kv.k_cache, kv.v_cache, table, indptr,
                                            again.kv_lens, sm_scale=d ** -0.5, sinks=sinks,
                                            k_scale=kv.k_scale, v_scale=kv.v_scale)
        torch.testing.assert_close(out.float(), want, rtol=4e-2, atol=4e-2)


def test_cuda_decode_pdl_on_and_off_identical():
    kv_lens = [3000, 12]
    kv = make_paged_kv(kv_lens, 8, 128, 64, torch.bfloat16, "cuda")
    q = torch.randn(2, 32, 128, device="cuda", dtype=torch.bfloat16)
    outs = []
    for pdl in (True, False):
        attn = PagedAttention(AttentionShape(32, 8, 128, 64), "cuda", table=_table(),
                              enable_pdl=pdl)
        plan = attn.plan_decode(kv_lens, kv.page_table)
        outs.append(attn.run(plan, q, kv.k_cache, kv.v_cache))
    assert torch.equal(outs[0], outs[1])


def test_attention_suite_times_the_cuda_kernel_beside_the_table():
    """`bench attention --cuda-decode --fp8-kv`: decode rows carry the CUDA kernel's time on
    the bf16 and the FP8 cache, each checked against the reference first."""
    from fuseinfer.bench.suites import attention as suite
    from fuseinfer.bench.timing import TimingConfig

    cases = suite.decode_cases([suite.MODELS["Llama-3-8B"]], (4,), (2048,), extra=())
    rows = suite.run(cases, [], None, None, config=TimingConfig(repeats=2,
                                                                  target_graph_ms=0.2),
                     fp8_kv=True, cuda_decode=True)
    row = rows[0]
    assert row["cuda_rel_err"] < 0.05
    for key in ("cuda", "fp8_cuda"):
        assert row[f"{key}_us"] > 0
        assert row[f"{key}_speedup"] == pytest.approx(row["us"] / row[f"{key}_us"])
