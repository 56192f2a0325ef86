"""Paged attention on the CPU: the reference against independent formulas (SDPA, the
sink identity), the plan's checks, the ops' argument errors, and the Triton kernels run
by Triton's interpreter against the reference on small shapes."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F

from fuseinfer.bench.attention_inputs import make_paged_kv
from fuseinfer.ops import AttentionShape, PagedAttention
from fuseinfer.ops.attention.arguments import DecodeArgs, DecodeLaunch, PrefillArgs, PrefillLaunch
from fuseinfer.ops.attention.reference import reference_paged_attention

BF16 = torch.bfloat16


def _sdpa_request(q, k, v, prefix, window_left=None, scale=None):
    """Torch SDPA for one request: q [n, hq, d], k/v [L, hkv, d] float32, explicit mask."""
    n, hq, _ = q.shape
    group = hq // k.size(1)
    pos = torch.arange(prefix, prefix + n)
    j = torch.arange(k.size(0))
    mask = j[None, :] <= pos[:, None]
    if window_left is not None:
        mask &= j[None, :] >= pos[:, None] - window_left
    out = F.scaled_dot_product_attention(
        q.float().transpose(0, 1), k.repeat_interleave(group, 1).transpose(0, 1),
        v.repeat_interleave(group, 1).transpose(0, 1), attn_mask=mask, scale=scale)
    return out.transpose(0, 1)


def _prefill_case(q_lens, kv_lens, hq, hkv, d, page_size, dtype=BF16, fp8=False,
                  poison=False):
    """fp8: True (one scale per cache) or "head" (one per KV head)."""
    kv = make_paged_kv(kv_lens, hkv, d, page_size, dtype, "cpu", fp8=bool(fp8), poison=poison,
                       per_head_scales=fp8 == "head")
    q = torch.randn(sum(q_lens), hq, d).to(dtype)
    indptr = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    return kv, q, indptr, torch.tensor(kv_lens, dtype=torch.int32)


@pytest.mark.parametrize("window_left", [None, 0, 5])
@pytest.mark.parametrize("page_size", [1, 4])
def test_reference_matches_sdpa(window_left, page_size):
    q_lens, kv_lens = [3, 9, 1], [10, 9, 14]
    kv, q, indptr, lens = _prefill_case(q_lens, kv_lens, 8, 2, 64, page_size)
    out, lse = reference_paged_attention(q, kv.k_cache, kv.v_cache, kv.page_table, indptr,
                                         lens, sm_scale=0.125, window_left=window_left)
    for b, (n, length) in enumerate(zip(q_lens, kv_lens, strict=True)):
        k, v = kv.contiguous(b, length)
        rows = slice(int(indptr[b]), int(indptr[b + 1]))
        want = _sdpa_request(q[rows], k, v, length - n, window_left, scale=0.125)
        torch.testing.assert_close(out[rows], want, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(lse).all()


def test_reference_sink_identity():
    """A sink only grows the denominator: out_sink = out * Z / (Z + e^sink), Z = e^lse."""
    kv, q, indptr, lens = _prefill_case([4, 2], [7, 2], 4, 4, 64, 1)
    sinks = torch.randn(4) * 2
    base, base_lse = reference_paged_attention(q, kv.k_cache, kv.v_cache, kv.page_table,
                                               indptr, lens, sm_scale=0.125)
    out, lse = reference_paged_attention(q, kv.k_cache, kv.v_cache, kv.page_table, indptr,
                                         lens, sm_scale=0.125, sinks=sinks)
    z = base_lse.exp()
    ratio = z / (z + sinks.exp()[None, :])
    torch.testing.assert_close(out, base * ratio[..., None], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse, torch.log(z + sinks.exp()[None, :]), rtol=1e-5,
                               atol=1e-5)


def test_reference_soft_cap_and_fp8_scale():
    kv, q, indptr, lens = _prefill_case([3], [5], 2, 1, 64, 2, fp8=True)
    out, _ = reference_paged_attention(q, kv.k_cache, kv.v_cache, kv.page_table, indptr, lens,
                                       sm_scale=0.3, logit_cap=2.0, k_scale=kv.k_scale,
                                       v_scale=kv.v_scale)
    k, v = kv.contiguous(0, 5)  # dequantized
    s = torch.einsum("nhd,lhd->hnl", q.float(), k.expand(5, 2, 64)) * 0.3
    s = 2.0 * torch.tanh(s / 2.0)
    s = s.masked_fill(torch.arange(5)[None, :] > torch.arange(2, 5)[:, None], -math.inf)
    want = torch.einsum("hnl,lhd->nhd", s.softmax(-1), v.expand(5, 2, 64))
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_reference_reads_each_kv_head_with_its_own_scale():
    kv, q, indptr, lens = _prefill_case([4], [6], 4, 2, 64, 2, fp8="head")
    assert kv.k_scale.numel() == 2 and kv.k_scale[0] != kv.k_scale[1]
    out, _ = reference_paged_attention(q, kv.k_cache, kv.v_cache, kv.page_table, indptr, lens,
                                       sm_scale=0.125, k_scale=kv.k_scale,
                                       v_scale=kv.v_scale)
    pos = torch.arange(6)
    slots = kv.page_table[0].long()[pos // 2] * 2 + pos % 2
    for h in range(4):  # q head h reads KV head h // 2, dequantized by that head's scales
        kh = h // 2
        k = kv.k_cache.flatten(0, 1)[slots, kh].double() * float(kv.k_scale[kh])
        v = kv.v_cache.flatten(0, 1)[slots, kh].double() * float(kv.v_scale[kh])
        s = (q[:, h].double() @ k.T) * 0.125
        s = s.masked_fill(pos[None, :] > torch.arange(2, 6)[:, None], -math.inf)
        torch.testing.assert_close(out[:, h].double(), s.softmax(-1) @ v, rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("hq, hkv, per_rule, want", [
    (8, 4, 2, 2),    # group 2 on tensor cores, 4 KV heads: 2 per program, 2 programs
    (12, 3, 2, 1),   # 3 KV heads: 2 does not divide them
    (4, 4, 2, 1),    # group 1 stays off the tensor cores (min group 2)
    (16, 8, 4, 4),
])
def test_kv_heads_per_program_follows_the_rule_where_it_fits(hq, hkv, per_rule, want):
    from dataclasses import replace

    from fuseinfer.ops.attention.dispatch import ATTENTION_BUILTIN, DecodeLaunchRule

    table = replace(ATTENTION_BUILTIN, tensor_core_min_group=2,
                    decode_rules=(DecodeLaunchRule(None, 64, 4, 2, per_rule),))
    attn = PagedAttention(AttentionShape(hq, hkv, 64, 4), "cpu", table=table)
    kv = make_paged_kv([9], hkv, 64, 4, BF16, "cpu")
    plan = attn.plan_decode([9], kv.page_table)
    assert plan.launch.kv_heads_per_program == want
    units = hkv // want if hq // hkv >= 2 else hq
    assert attn.decode_units() == units


def test_an_fp8_cache_plans_with_the_fp8_decode_rules():
    """A shape whose cache is FP8 launches with the entry's FP8 rules (per head dim), a
    bf16 one with the decode rules; an entry without FP8 rules serves both from the
    decode rules. The rules travel through the table's JSON and are validated there."""
    from dataclasses import replace

    from fuseinfer.dispatch import TableError
    from fuseinfer.dispatch.schema import parse_dataclass, to_json
    from fuseinfer.ops.attention.dispatch import (
        ATTENTION_BUILTIN,
        AttentionDispatch,
        DecodeLaunchRule,
    )

    table = replace(ATTENTION_BUILTIN, tensor_core_min_group=2,
                    decode_rules=(DecodeLaunchRule(None, 32, 2, 3),),
                    fp8_decode_rules=(DecodeLaunchRule(64, 256, 8, 4, 2),
                                      DecodeLaunchRule(None, 128, 4, 2)))
    kv = make_paged_kv([9, 70], 4, 64, 4, BF16, "cpu")
    plans = {}
    for fp8 in (False, True):
        for d in (64, 128):
            attn = PagedAttention(AttentionShape(8, 4, d, 4, kv_fp8=fp8), "cpu", table=table)
            launch = attn.plan_decode([9, 70], kv.page_table).launch
            plans[fp8, d] = (launch.block_n, launch.num_warps, launch.num_stages,
                             launch.kv_heads_per_program)
    assert plans == {(False, 64): (32, 2, 3, 1), (False, 128): (32, 2, 3, 1),
                     (True, 64): (256, 8, 4, 2), (True, 128): (128, 4, 2, 1)}
    assert replace(table, fp8_decode_rules=()).decode_rule(64, fp8=True) \
        == table.decode_rule(64)
    assert parse_dataclass(AttentionDispatch, to_json(table), "t") == table
    bad = to_json(table)
    bad["fp8_decode_rules"] = bad["fp8_decode_rules"][:1]  # no catch-all rule
    with pytest.raises(TableError, match="fp8_decode_rules: the last rule"):
        parse_dataclass(AttentionDispatch, bad, "t")


def test_split_count_aims_at_the_rules_programs_per_sm():
    """A decode rule's ctas_per_sm sets the split count's target for the batches it serves
    (the entry's target_ctas_per_sm elsewhere), sizes the split buffers for every batch,
    and travels through the table's JSON."""
    from dataclasses import replace

    from fuseinfer.dispatch.schema import parse_dataclass, to_json
    from fuseinfer.ops.attention.dispatch import (
        ATTENTION_BUILTIN,
        AttentionDispatch,
        DecodeLaunchRule,
    )

    table = replace(ATTENTION_BUILTIN, target_ctas_per_sm=4, max_splits=64,
                    tensor_core_min_group=2,
                    decode_rules=(DecodeLaunchRule(None, 64, 4, 2, max_batch=2, ctas_per_sm=24),
                                  DecodeLaunchRule(None, 64, 4, 2)))
    assert parse_dataclass(AttentionDispatch, to_json(table), "t") == table
    attn = PagedAttention(AttentionShape(8, 2, 64, 4), "cpu", table=table, max_batch=4)
    # sm_count is 1 off a GPU; 2 KV groups per request on tensor cores
    assert [attn.splits_for(b) for b in (1, 2, 3, 4)] == [12, 6, 1, 1]
    kv = make_paged_kv([40, 9], 2, 64, 4, BF16, "cpu")
    plan = attn.plan_decode([40, 9], kv.page_table)
    assert plan.splits == 6 and plan.partial_lse.shape == (2, 8, 6)
    plain = PagedAttention(AttentionShape(8, 2, 64, 4), "cpu", max_batch=4,
                           table=replace(table, decode_rules=table.decode_rules[1:]))
    assert [plain.splits_for(b) for b in (1, 2)] == [2, 1]


def test_decode_rules_pick_a_kernel():
    """A decode rule's kernel: "triton" (default) or "cuda" (4 or 8 warps, 2-4 stages, one
    KV head per program), validated on load; the plan hands it to the launch, and off a CUDA GPU the
    Triton kernel runs the call (here interpreted) with the same results."""
    from dataclasses import replace

    from fuseinfer.dispatch import TableError
    from fuseinfer.dispatch.schema import parse_dataclass, to_json
    from fuseinfer.ops.attention.arguments import DecodeArgs
    from fuseinfer.ops.attention.decode_cuda import cuda_decode_fits
    from fuseinfer.ops.attention.dispatch import (
        ATTENTION_BUILTIN,
        AttentionDispatch,
        DecodeLaunchRule,
    )

    table = replace(ATTENTION_BUILTIN,
                    decode_rules=(DecodeLaunchRule(None, 16, 4, 2, 1, "cuda"),))
    assert parse_dataclass(AttentionDispatch, to_json(table), "t") == table
    assert parse_dataclass(AttentionDispatch, to_json(ATTENTION_BUILTIN), "t") \
        .decode_rule(64).kernel == "triton"
    for bad, message in (({"kernel": "cutlass"}, "kernel: must be one of"),
                         ({"num_warps": 2}, "4 or 8 warps"),
                         ({"num_stages": 1}, "2-4 stages"),
                         ({"kv_heads_per_program": 2}, "one KV head per program")):
        data = to_json(table)
        data["decode_rules"][0].update(bad)
        with pytest.raises(TableError, match=message):
            parse_dataclass(AttentionDispatch, data, "t")

    kv_lens = [40, 0, 7, 25]
    kv = make_paged_kv(kv_lens, 2, 64, 4, BF16, "cpu", poison=True)
    q = torch.randn(len(kv_lens), 8, 64).to(BF16)
    attn = PagedAttention(AttentionShape(8, 2, 64, 4), "cpu", table=table)
    plan = attn.plan_decode(kv_lens, kv.page_table, splits=3)
    assert plan.launch.cuda_kernel == 1
    args = DecodeArgs(q, kv.k_cache, kv.v_cache, plan.page_table, plan.kv_lens,
                      plan.partial_out, plan.partial_lse, q, launch=plan.launch)
    assert not cuda_decode_fits(args)  # a CPU tensor
    if os.environ.get("TRITON_INTERPRET") == "1":
        from fuseinfer.ops.attention.launch import launch_decode

        out = torch.full_like(q, float("nan"))
        lse = torch.full((len(kv_lens), 8), float("nan"))
        launch_decode(args._replace(out=out, lse=lse, sm_scale=0.125, enable_pdl=False))
        want, want_lse = reference_paged_attention(
            q, kv.k_cache, kv.v_cache, kv.page_table, torch.arange(5, dtype=torch.int32),
            plan.kv_lens, sm_scale=0.125)
        live = [0, 2, 3]
        _close(out[live], lse[live], want[live], want_lse[live])


def test_scales_come_in_pairs():
    kv, q, _, _ = _prefill_case([1], [3], 4, 2, 64, 2, fp8=True)
    attn = PagedAttention(AttentionShape(4, 2, 64, 2), "cpu")
    plan = attn.plan_decode([3], kv.page_table)
    with pytest.raises(ValueError, match="k_scale needs its partner"):
        attn.run(plan, q, kv.k_cache, kv.v_cache, k_scale=kv.k_scale)
    with pytest.raises(ValueError, match="v_scale needs its partner"):
        attn.run(plan, q, kv.k_cache, kv.v_cache, v_scale=kv.v_scale)


def test_a_scale_per_kv_head_is_checked_against_the_head_count():
    kv, q, _, _ = _prefill_case([1], [3], 4, 2, 64, 2, fp8="head")
    attn = PagedAttention(AttentionShape(4, 2, 64, 2), "cpu")
    plan = attn.plan_decode([3], kv.page_table)
    with pytest.raises(ValueError, match="k_scale must have one element or one per KV head"):
        attn.run(plan, q, kv.k_cache, kv.v_cache, k_scale=torch.ones(4),
                 v_scale=kv.v_scale)


def _run_plan(attn, plan, q, kv, **kw):
    return attn.run(plan, q, kv.k_cache, kv.v_cache, k_scale=kv.k_scale, v_scale=kv.v_scale,
                    return_lse=True, **kw)


def test_plan_run_cpu_matches_reference():
    q_lens, kv_lens = [2, 6], [9, 6]
    kv, q, indptr, lens = _prefill_case(q_lens, kv_lens, 8, 2, 128, 4)
    attn = PagedAttention(AttentionShape(8, 2, 128, 4), "cpu")
    sinks = torch.randn(8)
    out, lse = _run_plan(attn, attn.plan_prefill(q_lens, kv_lens, kv.page_table), q, kv,
                         sinks=sinks, window_left=3)
    want, want_lse = reference_paged_attention(q, kv.k_cache, kv.v_cache, kv.page_table,
                                               indptr, lens, sm_scale=128 ** -0.5,
                                               sinks=sinks, window_left=3)
    torch.testing.assert_close(out.float(), want, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(lse, want_lse)
    plan = attn.plan_decode([9, 0], kv.page_table)
    out, lse = _run_plan(attn, plan, q[:2], kv)
    assert (out[1] == 0).all() and torch.isinf(lse[1]).all() and (lse[1] < 0).all()


@pytest.mark.parametrize("bad, message", [
    (dict(kv_lens=[3, 6]), "kv_len 3 must be >= q_len 4"),
    (dict(page_table_pages=2), "too short"),
    (dict(q_lens=[4]), "has 1 requests but kv_lens has 2"),
])
def test_plan_rejects_bad_lengths(bad, message):
    kv = make_paged_kv([9, 6], 2, 64, 4, BF16, "cpu")
    attn = PagedAttention(AttentionShape(4, 2, 64, 4), "cpu")
    table = kv.page_table[:, :bad.get("page_table_pages", kv.page_table.size(1))]
    with pytest.raises(ValueError, match=message):
        attn.plan_prefill(bad.get("q_lens", [4, 6]), bad.get("kv_lens", [9, 6]), table)


def test_plan_needs_host_lengths_and_valid_shape():
    with pytest.raises(ValueError, match="head_dim 96 is not supported"):
        PagedAttention(AttentionShape(4, 2, 96), "cpu")
    with pytest.raises(ValueError, match="must divide"):
        PagedAttention(AttentionShape(6, 4, 64), "cpu")
    attn = PagedAttention(AttentionShape(4, 2, 64), "cpu", max_batch=2)
    with pytest.raises(ValueError, match="more than max_batch"):
        attn.plan_decode([1, 2, 3], torch.zeros(3, 4, dtype=torch.int32))


def _decode_args(batch=2, hq=4, hkv=2, d=64, splits=2):
    kv = make_paged_kv([5] * batch, hkv, d, 1, BF16, "cpu")
    q = torch.randn(batch, hq, d).to(BF16)
    return dict(q=q, k_cache=kv.k_cache, v_cache=kv.v_cache, page_table=kv.page_table,
                kv_lens=torch.full((batch,), 5, dtype=torch.int32),
                partial_out=torch.empty(batch, hq, splits, d),
                partial_lse=torch.empty(batch, hq, splits), out=torch.empty_like(q))


@pytest.mark.parametrize("change, message", [
    (dict(window_left=-1), "window_left must be >= 0"),
    (dict(q=torch.randn(2, 4, 96).to(BF16)), "head_dim 96 is not supported"),
    (dict(kv_lens=torch.full((3,), 5, dtype=torch.int32)), "kv_lens must have 2 elements"),
    (dict(kv_lens=torch.full((2,), 5, dtype=torch.int64)), "kv_lens must be a contiguous int32"),
    (dict(sinks=torch.randn(3)), "sinks must be a contiguous float32 or bfloat16 vector of 4"),
    (dict(k_scale=torch.tensor([1.0])), "k_scale is only used with a float8_e4m3fn cache"),
    (dict(page_table=torch.zeros(1, 5, dtype=torch.int32)), "page_table must be int32"),
    (dict(partial_lse=torch.empty(2, 4, 3)), "partial_out must be contiguous float32"),
    (dict(logit_cap=-1.0), "logit_cap must be >= 0"),
    (dict(merge_counters=torch.zeros(2, 4, dtype=torch.int64)),
     "merge_counters must be contiguous int32"),
    (dict(merge_counters=torch.zeros(1, 4, dtype=torch.int32)),
     r"merge_counters must be contiguous int32 \[>= 2, 4\]"),
])
def test_decode_op_rejects_bad_arguments(change, message):
    args = {**_decode_args(), **change}
    with pytest.raises(ValueError, match=message):
        torch.ops.fuseinfer.paged_decode_attention(**args)


def test_prefill_op_checks_q_indptr_and_runs_on_meta():
    kv = make_paged_kv([4], 1, 64, 1, BF16, "meta")
    q = torch.empty(4, 2, 64, dtype=BF16, device="meta")
    args = dict(q=q, k_cache=kv.k_cache, v_cache=kv.v_cache, page_table=kv.page_table,
                q_indptr=torch.zeros(3, dtype=torch.int32, device="meta"),
                kv_lens=torch.zeros(1, dtype=torch.int32, device="meta"),
                work=torch.zeros(1, 2, dtype=torch.int32, device="meta"),
                out=torch.empty_like(q))
    with pytest.raises(ValueError, match="q_indptr must have 2 elements"):
        torch.ops.fuseinfer.paged_prefill_attention(**args)
    args["q_indptr"] = torch.zeros(2, dtype=torch.int32, device="meta")
    torch.ops.fuseinfer.paged_prefill_attention(**args)  # the fake impl: shapes only


@pytest.mark.parametrize("op, args, written", [
    ("paged_prefill_attention", PrefillArgs, ("out", "lse")),
    ("paged_decode_attention", DecodeArgs, ("partial_out", "partial_lse", "out", "lse",
                                            "merge_counters")),
])
def test_schema_is_the_argument_tuple(op, args, written):
    """The registered schema lists the tuple's fields in order, with its defaults, and marks
    exactly the written tensors; the launch default is the tuple's launch choice."""
    schema = getattr(torch.ops.fuseinfer, op).default._schema
    assert [a.name for a in schema.arguments] == list(args._fields)
    assert tuple(a.name for a in schema.arguments
                 if a.alias_info is not None and a.alias_info.is_write) == written
    launch = next(a for a in schema.arguments if a.name == "launch")
    assert list(launch.default_value) == list(args._field_defaults["launch"])
    optional = {a.name for a in schema.arguments if a.type.kind() == "OptionalType"}
    assert optional == {"lse", "sinks", "k_scale", "v_scale", "window_left", "enable_pdl"} \
        | ({"merge_counters"} if op == "paged_decode_attention" else {"schedule"})
    assert len(schema.returns) == 0


def test_op_schema_maps_annotations():
    from typing import NamedTuple

    from fuseinfer.ops.signature import call_args, op_schema

    class Toy(NamedTuple):
        out: torch.Tensor
        x: torch.Tensor
        extra: torch.Tensor | None = None
        factor: float = 0.5
        steps: int | None = None
        sizes: Sequence[int] = (4, 2)
        enable_pdl: bool | None = None

    assert op_schema("toy", Toy, ("out",)) == (
        "toy(Tensor(a!) out, Tensor x, Tensor? extra=None, float factor=0.5, "
        "int? steps=None, int[] sizes=[4, 2], bool? enable_pdl=None) -> ()")
    with pytest.raises(TypeError, match="only tensors can be mutated"):
        op_schema("toy", Toy, ("factor",))
    with pytest.raises(TypeError, match="mutated names no argument"):
        op_schema("toy", Toy, ("missing",))

    t = torch.zeros(1)
    full = call_args(Toy, (t, t, None, 0.5, 3, (4, 2), False), {})
    assert full == call_args(Toy, (t, t), {"steps": 3, "enable_pdl": False})
    assert type(full) is Toy and full.steps == 3 and full.factor == 0.5

    class Bad(NamedTuple):
        x: str

    with pytest.raises(TypeError, match="has no schema type"):
        op_schema("bad", Bad)


# ---- Triton kernels under the interpreter ---------------------------------------------------

needs_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="a GPU is present: the GPU suite runs these kernels natively")


def _close(out, lse, want, want_lse, rows=None):
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(lse, want_lse, rtol=1e-4, atol=1e-4)


@needs_interpreter
@pytest.mark.parametrize("case", [
    dict(page_size=1, hq=4, hkv=4, dtype=torch.float16),
    dict(page_size=4, hq=8, hkv=2, window_left=6),
    dict(page_size=2, hq=4, hkv=1, sinks=True, logit_cap=4.0),
    dict(page_size=4, hq=4, hkv=2, sinks=True, window_left=2, fp8=True),
    dict(page_size=4, hq=8, hkv=4, fp8="head"),  # a scale per KV head
    dict(page_size=16, hq=4, hkv=2, window_left=9),  # a key block lies in one page: TMA
    dict(page_size=16, hq=4, hkv=2, window_left=9, tma=False),  # ... or a scalar base
])
def test_prefill_kernel_interpreted(case):
    from fuseinfer.ops.attention.launch import launch_prefill

    q_lens, kv_lens = [5, 21, 1], [12, 21, 33]
    hq, hkv, d = case["hq"], case["hkv"], 64
    kv, q, indptr, lens = _prefill_case(q_lens, kv_lens, hq, hkv, d, case["page_size"],
                                        case.get("dtype", BF16), case.get("fp8", False),
                                        poison=True)
    sinks = torch.randn(hq) if case.get("sinks") else None
    kw = dict(sinks=sinks, window_left=case.get("window_left"),
              logit_cap=case.get("logit_cap", 0.0))
    attn = PagedAttention(AttentionShape(hq, hkv, d, case["page_size"]), "cpu")
    plan = attn.plan_prefill(q_lens, kv_lens, kv.page_table, block_m=16)
    out = torch.full_like(q, float("nan"))
    lse = torch.full((q.size(0), hq), float("nan"))
    launch_prefill(PrefillArgs(
        q, kv.k_cache, kv.v_cache, plan.page_table, plan.q_indptr, plan.kv_lens, plan.work,
        out, lse, k_scale=kv.k_scale, v_scale=kv.v_scale, sm_scale=0.125, enable_pdl=False,
        launch=PrefillLaunch(16, 16, 4, 1, int(case.get("tma", True))), **kw))
    want, want_lse = reference_paged_attention(
        q, kv.k_cache, kv.v_cache, kv.page_table, indptr, lens, sm_scale=0.125,
        k_scale=kv.k_scale, v_scale=kv.v_scale, **kw)
    _close(out, lse, want, want_lse)


def test_fused_merge_follows_the_table_on_windowed_layers(monkeypatch):
    """fused_merge=None: the merge is fused only on layers whose window bounds every request
    to at most the table's fused_merge_window_pieces; True / False override the table; run()
    hands the op the counters only where it fuses."""
    from dataclasses import replace

    from fuseinfer.dispatch import TableError
    from fuseinfer.dispatch.schema import parse_dataclass, to_json
    from fuseinfer.ops.attention.dispatch import ATTENTION_BUILTIN, AttentionDispatch

    table = replace(ATTENTION_BUILTIN, min_chunk=64, fused_merge_window_pieces=4)
    # the bound against the kernel's own split arithmetic (_split_range): a request sees
    # the keys from its window's first key's block on, cut into pieces of >= min_chunk
    for window, block_n in ((127, 32), (127, 64), (191, 64), (193, 64), (500, 16)):
        bound = -(-(window + block_n) // 64)
        seen = 0
        for kv_len in range(1, 3000, 3):
            first = max(kv_len - 1 - window, 0)
            seen = max(seen, -(-(kv_len - first // block_n * block_n) // 64))
        assert seen == bound
        assert table.fuses_merge(window, block_n) == (bound <= 4)
    assert table.fuses_merge(191, 64) and not table.fuses_merge(193, 64)
    assert not table.fuses_merge(None, 16)  # a full-length layer: pieces grow with length
    assert not replace(table, fused_merge_window_pieces=0).fuses_merge(127, 32)
    data = to_json(table)
    assert parse_dataclass(AttentionDispatch, data, "t") == table
    data["fused_merge_window_pieces"] = -1
    with pytest.raises(TableError, match="fused_merge_window_pieces"):
        parse_dataclass(AttentionDispatch, data, "t")

    shape = AttentionShape(8, 2, 64, 4)
    never = PagedAttention(shape, "cpu", table=replace(table, fused_merge_window_pieces=0))
    assert never.plan_decode([9], torch.zeros(1, 4, dtype=torch.int32)).merge_counters is None
    assert not never.fuses_merge(127, 32)
    assert not PagedAttention(shape, "cpu", table=table, fused_merge=False).fuses_merge(127, 32)
    assert PagedAttention(shape, "cpu", table=table, fused_merge=True).fuses_merge(None, 32)

    seen_counters = []
    monkeypatch.setattr(torch.ops.fuseinfer, "paged_decode_attention",
                        lambda *a, merge_counters=None, **kw: seen_counters.append(
                            merge_counters))
    attn = PagedAttention(shape, "cpu", table=table)
    kv = make_paged_kv([300, 40], 2, 64, 4, BF16, "cpu")
    plan = attn.plan_decode([300, 40], kv.page_table, splits=8)
    q = torch.randn(2, 8, 64).to(BF16)
    block_n = plan.launch.block_n
    for window in (127, 64 * 4 - block_n + 1, None):
        attn.run(plan, q, kv.k_cache, kv.v_cache, window_left=window)
    assert [c is plan.merge_counters for c in seen_counters] == [True, False, False]


@needs_interpreter
@pytest.mark.parametrize("fused_merge", [True, False])
@pytest.mark.parametrize("tensor_cores", [True, False, "2 kv heads per program",
                                          "4 kv heads per program", "group 16"])
@pytest.mark.parametrize("case", [
    dict(page_size=1, splits=1),
    dict(page_size=4, splits=3, sinks=True, window_left=9),
    dict(page_size=2, splits=4, fp8=True, logit_cap=3.0),
    dict(page_size=2, splits=4, fp8="head"),  # a scale per KV head, merged pieces too
    dict(page_size=32, splits=2, sinks=True, window_left=20),  # a key block in one page
])
def test_decode_kernel_interpreted(case, tensor_cores, fused_merge):
    """Split-KV decode against the reference, its pieces merged by the last piece to finish
    (fused_merge: the counters are left at zero) or by the merge kernel."""
    from fuseinfer.ops.attention.launch import launch_decode

    kv_lens = [40, 0, 7, 25]  # row 1 is a padded batch row
    hq, hkv, d = 8, 2, 64
    kv_per_program = 1
    if tensor_cores == "group 16":  # 16 rows: the fused merge takes 2 pieces per round
        hq = 32
    elif isinstance(tensor_cores, str):  # KV heads side by side in one program (group 2)
        kv_per_program = int(tensor_cores[0])
        hq, hkv = 2 * kv_per_program, kv_per_program
    kv = make_paged_kv(kv_lens, hkv, d, case["page_size"], BF16, "cpu",
                       fp8=bool(case.get("fp8", False)), poison=True,
                       per_head_scales=case.get("fp8") == "head")
    q = torch.randn(len(kv_lens), hq, d).to(BF16)
    sinks = torch.randn(hq) if case.get("sinks") else None
    kw = dict(sinks=sinks, window_left=case.get("window_left"),
              logit_cap=case.get("logit_cap", 0.0))
    attn = PagedAttention(AttentionShape(hq, hkv, d, case["page_size"]), "cpu",
                          fused_merge=fused_merge)
    plan = attn.plan_decode(kv_lens, kv.page_table, splits=case["splits"])
    assert (plan.merge_counters is not None) == fused_merge
    out = torch.full_like(q, float("nan"))
    lse = torch.full((q.size(0), hq), float("nan"))
    for _ in range(2):  # twice: the counters are back at zero for the next call
        out.fill_(float("nan"))
        lse.fill_(float("nan"))
        launch_decode(DecodeArgs(
            q, kv.k_cache, kv.v_cache, plan.page_table, plan.kv_lens, plan.partial_out,
            plan.partial_lse, out, lse, k_scale=kv.k_scale, v_scale=kv.v_scale,
            sm_scale=0.125, launch=DecodeLaunch(16, 4, 1, 16, 2 if tensor_cores else 100,
                                                kv_per_program),
            enable_pdl=False, merge_counters=plan.merge_counters, **kw))
        if fused_merge:
            assert (plan.merge_counters == 0).all()
    want, want_lse = reference_paged_attention(
        q, kv.k_cache, kv.v_cache, kv.page_table, torch.arange(5, dtype=torch.int32),
        plan.kv_lens, sm_scale=0.125, k_scale=kv.k_scale, v_scale=kv.v_scale, **kw)
    assert (out[1] == 0).all() and (lse[1] == -math.inf).all()
    live = [0, 2, 3]
    _close(out[live], lse[live], want[live], want_lse[live])


@needs_interpreter
@pytest.mark.parametrize("layout", [
    dict(hq=12, hkv=4, d=64, per_program=2, min_group=2),   # group 3: rows past the group
    dict(hq=16, hkv=2, d=64, per_program=2, min_group=2),   # 2 KV heads, 8 rows per KV head
    dict(hq=4, hkv=2, d=256, per_program=1, min_group=100),  # one q head per program
    dict(hq=32, hkv=2, d=64, per_program=1, min_group=2),   # group 16: one piece per round
])
def test_fused_merge_of_many_pieces(layout):
    """The merge in the last piece over many pieces (more than a round of MERGE_CHUNK),
    against the reference and bit-for-bit stable across calls; per-KV-head FP8 scales and
    sinks; unused split slots poisoned."""
    from fuseinfer.ops.attention.launch import launch_decode

    hq, hkv, d = layout["hq"], layout["hkv"], layout["d"]
    kv_lens = [300, 0, 130]
    kv = make_paged_kv(kv_lens, hkv, d, 4, BF16, "cpu", fp8=True, per_head_scales=True,
                       poison=True)
    q = torch.randn(len(kv_lens), hq, d).to(BF16)
    sinks = torch.randn(hq)
    attn = PagedAttention(AttentionShape(hq, hkv, d, 4), "cpu", fused_merge=True)
    plan = attn.plan_decode(kv_lens, kv.page_table, splits=24)  # 300 keys: 19 pieces of 16
    results = []
    for _ in range(2):
        plan.partial_out.fill_(float("nan"))
        plan.partial_lse.fill_(float("nan"))
        out = torch.full_like(q, float("nan"))
        lse = torch.full((q.size(0), hq), float("nan"))
        launch_decode(DecodeArgs(
            q, kv.k_cache, kv.v_cache, plan.page_table, plan.kv_lens, plan.partial_out,
            plan.partial_lse, out, lse, k_scale=kv.k_scale, v_scale=kv.v_scale, sinks=sinks,
            sm_scale=d ** -0.5, launch=DecodeLaunch(16, 4, 1, 16, layout["min_group"],
                                                    layout["per_program"]),
            enable_pdl=False, merge_counters=plan.merge_counters))
        assert (plan.merge_counters == 0).all()
        results.append((out.clone(), lse.clone()))
    want, want_lse = reference_paged_attention(
        q, kv.k_cache, kv.v_cache, kv.page_table, torch.arange(4, dtype=torch.int32),
        plan.kv_lens, sm_scale=d ** -0.5, k_scale=kv.k_scale, v_scale=kv.v_scale,
        sinks=sinks)
    out, lse = results[0]
    assert torch.equal(out, results[1][0]) and torch.equal(lse, results[1][1])
    assert (out[1] == 0).all() and (lse[1] == -math.inf).all()
    _close(out[[0, 2]], lse[[0, 2]], want[[0, 2]], want_lse[[0, 2]])
