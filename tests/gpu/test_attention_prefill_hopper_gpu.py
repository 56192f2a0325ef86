"""The warp-specialized sm_90a prefill kernel on the GPU against the float32 reference:
head dims 64 and 128, page sizes smaller than, equal to and larger than the key block, both
key blocks and every stage count that fits, ragged extend batches, windows, sinks,
soft-cap, lse, fp16, a strided q (a view of a fused qkv), caches poisoned with NaN past
every request's end; a launch counter proves the kernel ran, and where it does not apply
(an FP8 cache) the portable kernel answers instead."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from fuseinfer.bench.attention_inputs import make_paged_kv
from fuseinfer.ops import AttentionShape, PagedAttention
from fuseinfer.ops.attention import launch as attention_launch
from fuseinfer.ops.attention.dispatch import ATTENTION_BUILTIN, PrefillLaunchRule
from fuseinfer.ops.attention.prefill_hopper import SMEM_BYTES, smem_bytes
from fuseinfer.ops.attention.reference import reference_paged_attention

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
    reason="the sm_90a kernel needs an sm_90 GPU")

TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3}
CASES = [  # (q_lens, kv_lens): prefill, extend on a cached prefix, tiny requests, a long one
    ([300, 1, 77], [300, 450, 77]),
    ([128, 1000], [640, 1000]),
    ([2100], [2100]),
]


@pytest.fixture
def launches(monkeypatch):
    """Counts the sm_90a kernel's launches."""
    count = []
    real = attention_launch.launch_prefill_hopper

    def counted(a):
        launched = real(a)
        assert launched, "the sm_90a kernel did not build here (see the warning)"
        count.append(1)
        return launched

    monkeypatch.setattr(attention_launch, "launch_prefill_hopper", counted)
    return count


def _table(block_n: int, stages: int, pingpong: bool = False, persistent: bool = False,
           block_m: int = 128):
    """One sm_90a rule; 192-row tiles (head_dim 64 only) with the built-in catch-all for
    the portable kernel after them."""
    rule = PrefillLaunchRule(None if block_m == 128 else 64, block_m, block_n, block_m // 16,
                             stages, True, "hopper", pingpong, persistent)
    rules = (rule,) if block_m == 128 else (rule, ATTENTION_BUILTIN.prefill_rules[-1])
    return replace(ATTENTION_BUILTIN, prefill_rules=rules)


def _features(name, hq, window=37):
    sinks = (torch.randn(hq, device="cuda") * 2) if "sinks" in name else None
    return dict(sinks=sinks, window_left=window if "window" in name else None,
                logit_cap=20.0 if "cap" in name else 0.0)


def _run_and_check(hq, hkv, head_dim, page_size, dtype, block_n, stages, features,
                   cases=CASES, fused_qkv=False, fp8=False, window=37, return_lse=True,
                   table=None, pingpong=False, persistent=False, block_m=128):
    attn = PagedAttention(AttentionShape(hq, hkv, head_dim, page_size), "cuda",
                          table=table or _table(block_n, stages, pingpong, persistent,
                                                block_m))
    for q_lens, kv_lens in cases:
        kv = make_paged_kv(kv_lens, hkv, head_dim, page_size, dtype, "cuda", poison=not fp8,
                           fp8=fp8)
        tokens = sum(q_lens)
        if fused_qkv:  # q a view of the projection's output: rows (hq + 2 hkv) heads apart
            qkv = torch.randn(tokens, (hq + 2 * hkv) * head_dim, device="cuda", dtype=dtype)
            q = qkv[:, :hq * head_dim].view(tokens, hq, head_dim)
        else:
            q = torch.randn(tokens, hq, head_dim, device="cuda", dtype=dtype)
        plan = attn.plan_prefill(q_lens, kv_lens, kv.page_table)
        kw = _features(features, hq, window)
        out = torch.full((tokens, hq, head_dim), float("nan"), device="cuda", dtype=dtype)
        got = attn.run(plan, q, kv.k_cache, kv.v_cache, out=out, return_lse=return_lse,
                       k_scale=kv.k_scale, v_scale=kv.v_scale, **kw)
        out, lse = got if return_lse else (got, None)
        want, want_lse = reference_paged_attention(
            q, kv.k_cache, kv.v_cache, kv.page_table, plan.q_indptr, plan.kv_lens,
            sm_scale=head_dim ** -0.5, k_scale=kv.k_scale, v_scale=kv.v_scale, **kw)
        tol = TOL[dtype] * (2 if fp8 else 1)
        torch.testing.assert_close(out.float(), want, rtol=tol, atol=tol)
        if lse is None:
            continue
        live = torch.isfinite(want_lse)
        torch.testing.assert_close(lse[live], want_lse[live], rtol=1e-3, atol=1e-3)
        assert torch.equal(torch.isfinite(lse), live)


@pytest.mark.parametrize("features", ["plain", "window", "sinks", "cap", "window-sinks-cap"])
@pytest.mark.parametrize("head_dim, hq, hkv, page_size", [
    (64, 16, 2, 16), (64, 8, 1, 64), (128, 8, 2, 64), (128, 4, 4, 128), (128, 8, 1, 256),
])
def test_matches_reference(launches, features, head_dim, hq, hkv, page_size):
    _run_and_check(hq, hkv, head_dim, page_size, torch.bfloat16, 128,
                   2 if head_dim == 128 else 4, features)
    assert len(launches) == len(CASES)


# the (block_n, stages) that fit shared memory (the table refuses the others)
FITTING = [(d, n, s) for d in (64, 128) for n in (64, 128) for s in (2, 3, 4)
           if smem_bytes(d, n, s) <= SMEM_BYTES]


@pytest.mark.parametrize("head_dim, block_n, stages", FITTING)
def test_every_block_and_stage_count_that_fits(launches, head_dim, block_n, stages):
    _run_and_check(8, 2, head_dim, 64, torch.bfloat16, block_n, stages, "window-sinks-cap")
    assert len(launches) == len(CASES)


@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("features", ["plain", "window-sinks-cap"])
@pytest.mark.parametrize("head_dim, block_n, stages", [(64, 128, 4), (128, 128, 2),
                                                       (128, 64, 3)])
def test_pingpong_and_persistent(launches, head_dim, block_n, stages, features, persistent):
    """The consumers taking turns issuing their MMAs, and one program per SM running tile
    after tile (the stage ring, the Q buffer, the turns and the tail clearing's barrier
    all carry on across tiles): the same results, no deadlock."""
    _run_and_check(8, 2, head_dim, 64, torch.bfloat16, block_n, stages, features,
                   pingpong=True, persistent=persistent)
    _run_and_check(8, 2, head_dim, 64, torch.bfloat16, block_n, stages, features,
                   persistent=persistent)
    assert len(launches) == 2 * len(CASES)


def test_fp16_and_a_strided_q(launches):
    _run_and_check(8, 2, 128, 64, torch.float16, 128, 2, "sinks", fused_qkv=True)
    assert len(launches) == len(CASES)


def test_fp8_cache_falls_back_to_the_portable_kernel(launches):
    _run_and_check(8, 2, 128, 64, torch.bfloat16, 128, 2, "plain", fp8=True)
    assert not launches


def test_many_requests_in_one_launch(launches):
    """A batch of 24 ragged requests (work items longest first) in one launch."""
    gen = torch.Generator().manual_seed(7)
    kv_lens = torch.randint(1, 900, (24,), generator=gen).tolist()
    q_lens = [max(1, n - int(torch.randint(0, n, (1,), generator=gen))) for n in kv_lens]
    for pingpong, persistent in itertools.product((False, True), (False, True)):
        _run_and_check(16, 2, 64, 64, torch.bfloat16, 128, 4, "window-sinks",
                       cases=[(q_lens, kv_lens)], pingpong=pingpong, persistent=persistent)
    assert len(launches) == 4


def test_no_lse_small_calls_and_odd_page_sizes(launches):
    """Without lse; whole calls shorter than one 128-query block (the Q copy's box runs
    past the tensor); pages of 8 and 32 slots (several pieces per key tile)."""
    small = [([5], [5]), ([1, 3], [300, 3]), ([100], [1000])]
    for page_size in (8, 32):
        _run_and_check(8, 2, 128, page_size, torch.bfloat16, 128, 2, "sinks", cases=small,
                       return_lse=False)
    assert len(launches) == 2 * len(small)


@pytest.mark.parametrize("window", [0, 1, 200])
def test_window_edges(launches, window):
    """window_left 0 (each query sees itself only), 1, and one wider than a key block,
    with fp16 and soft-cap too."""
    _run_and_check(8, 2, 64, 64, torch.float16, 128, 4, "window-cap", window=window)
    assert len(launches) == len(CASES)


def test_narrow_windows_run_the_portable_kernel(launches):
    """The table's hopper_prefill_min_window: a narrower window runs the portable kernel
    (no sm_90a launch), a wider one the sm_90a kernel, both right."""
    table = replace(_table(128, 2), hopper_prefill_min_window=256)
    _run_and_check(8, 2, 128, 64, torch.bfloat16, 128, 2, "window", window=100, table=table)
    assert not launches
    _run_and_check(8, 2, 128, 64, torch.bfloat16, 128, 2, "window", window=300, table=table)
    assert len(launches) == len(CASES)


@pytest.mark.parametrize("programs", [1, 3, 7])
@pytest.mark.parametrize("stages, pingpong", [(2, False), (3, True), (4, True)])
def test_persistent_long_tile_chains(launches, monkeypatch, programs, stages, pingpong):
    """Few programs for many tiles: each program runs long chains of tiles, tail tiles back
    to back, every barrier's parity wrapping many times."""
    from fuseinfer.ops.attention import prefill_hopper

    monkeypatch.setattr(prefill_hopper, "_sm_count", lambda index: programs)
    gen = torch.Generator().manual_seed(11)
    kv_lens = torch.randint(1, 700, (9,), generator=gen).tolist()
    q_lens = [max(1, n - int(torch.randint(0, n, (1,), generator=gen))) for n in kv_lens]
    _run_and_check(8, 2, 64, 64, torch.bfloat16, 64, stages, "window-sinks",
                   cases=[(q_lens, kv_lens)], pingpong=pingpong, persistent=True)
    assert len(launches) == 1


def test_padded_work_items_are_skipped(launches):
    """Work items of request -1 (padding) in the middle of the list: every partition skips
    them alike, and the real tiles around them come out right."""
    from fuseinfer.ops.attention.arguments import PrefillArgs
    from fuseinfer.ops.attention.launch import launch_prefill

    q_lens, kv_lens = [300, 77], [450, 77]
    kv = make_paged_kv(kv_lens, 2, 128, 64, torch.bfloat16, "cuda", poison=True)
    q = torch.randn(sum(q_lens), 8, 128, device="cuda", dtype=torch.bfloat16)
    attn = PagedAttention(AttentionShape(8, 2, 128, 64), "cuda",
                          table=_table(128, 2, pingpong=True, persistent=True))
    plan = attn.plan_prefill(q_lens, kv_lens, kv.page_table)
    pad = torch.full((1, 2), -1, dtype=torch.int32, device="cuda")
    work = torch.cat([plan.work[:1], pad, plan.work[1:], pad])
    out = torch.full_like(q, float("nan"))
    launch_prefill(PrefillArgs(q, kv.k_cache, kv.v_cache, kv.page_table, plan.q_indptr,
                               plan.kv_lens, work, out, sm_scale=128 ** -0.5,
                               launch=plan.launch))
    want, _ = reference_paged_attention(q, kv.k_cache, kv.v_cache, kv.page_table,
                                        plan.q_indptr, plan.kv_lens, sm_scale=128 ** -0.5)
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)
    assert len(launches) == 1


# three consumer warpgroups (192-row tiles) at head_dim 64: both key blocks, the stage
# counts' extremes, with pingpong (a ring of three turns) and persistent
THREE = [(64, 3), (128, 2), (128, 4)]


@pytest.mark.parametrize("features", ["plain", "window-sinks-cap"])
@pytest.mark.parametrize("block_n, stages", THREE)
def test_three_consumers(launches, block_n, stages, features):
    assert smem_bytes(64, block_n, stages, 192) <= SMEM_BYTES
    for pingpong, persistent in itertools.product((False, True), (False, True)):
        _run_and_check(16, 2, 64, 64, torch.bfloat16, block_n, stages, features,
                       pingpong=pingpong, persistent=persistent, block_m=192)
    assert len(launches) == 4 * len(CASES)


@pytest.mark.parametrize("programs", [1, 3, 7])
def test_three_consumers_long_tile_chains(launches, monkeypatch, programs):
    """A few persistent programs over many 192-row tiles of ragged requests, waves running
    both ways, the last V tile's clearing (two of three consumers) many times over."""
    from fuseinfer.ops.attention import prefill_hopper

    monkeypatch.setattr(prefill_hopper, "_sm_count", lambda index: programs)
    gen = torch.Generator().manual_seed(13)
    kv_lens = torch.randint(1, 900, (11,), generator=gen).tolist()
    q_lens = [max(1, n - int(torch.randint(0, n, (1,), generator=gen))) for n in kv_lens]
    _run_and_check(8, 1, 64, 16, torch.float16, 64, 3, "window-sinks",
                   cases=[(q_lens, kv_lens)], pingpong=True, persistent=True, block_m=192)
    assert len(launches) == 1


def test_three_consumer_tables_fall_back_with_their_own_items(launches, monkeypatch):
    """A 192-row rule: narrow windows run the next portable rule over its own work items,
    and a call the kernel declines (here: as if this Triton could not build it) runs the
    portable kernel over 64-row pieces of the 192-row items; both right, no sm_90a launch."""
    from fuseinfer.ops.attention import prefill_hopper

    table = replace(_table(128, 2, persistent=True, block_m=192),
                    hopper_prefill_min_window=256)
    _run_and_check(8, 2, 64, 64, torch.bfloat16, 128, 2, "window-sinks", window=100,
                   table=table)
    assert not launches
    _run_and_check(8, 2, 64, 64, torch.bfloat16, 128, 2, "window-sinks", window=300,
                   table=table)
    assert len(launches) == len(CASES)
    monkeypatch.setattr(prefill_hopper, "unavailable", "declined by the test")
    _run_and_check(8, 2, 64, 64, torch.bfloat16, 128, 2, "sinks-cap", table=table)
    assert len(launches) == len(CASES)


# tiles dealt by the plan (a rule's longest_first): the kernel reads its [waves, programs]
# schedule instead of dealing alternating waves itself
def _dealt_table(block_m: int = 128, pingpong: bool = True):
    table = _table(128, 2, pingpong=pingpong, persistent=True, block_m=block_m)
    rules = (replace(table.prefill_rules[0], longest_first=True), *table.prefill_rules[1:])
    return replace(table, prefill_rules=rules)


@pytest.mark.parametrize("programs", [3, 17, 132])
@pytest.mark.parametrize("head_dim, block_m", [(128, 128), (64, 128), (64, 192)])
def test_dealt_schedules(launches, monkeypatch, programs, head_dim, block_m):
    """Ragged batches over a few to every SM's worth of programs, the plan's dealt schedule
    always taken: the kernel runs every tile it names, once (outputs poisoned with NaN)."""
    from fuseinfer.ops.attention import plan as plan_module

    monkeypatch.setattr(plan_module, "worth_it", lambda schedule: True)
    # 3 programs take 224-326 waves of these batches, past the plan's cap on dealing
    monkeypatch.setattr(plan_module, "MAX_WAVES", 1 << 20)
    real_init = PagedAttention.__init__
    planned = []

    def with_programs(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.sm_count = programs
        real_plan = self.plan_prefill

        def plan_prefill(*a, **k):
            plan = real_plan(*a, **k)
            planned.append(plan.schedule)
            return plan

        self.plan_prefill = plan_prefill

    monkeypatch.setattr(PagedAttention, "__init__", with_programs)
    gen = torch.Generator().manual_seed(programs + head_dim + block_m)
    kv_lens = torch.randint(200, 2200, (5,), generator=gen).tolist()
    q_lens = [max(1, n - int(torch.randint(0, n // 2, (1,), generator=gen)))
              for n in kv_lens]
    _run_and_check(16, 4, head_dim, 64, torch.bfloat16, 128, 2, "window-sinks-cap",
                   window=1500, cases=[(q_lens, kv_lens)], table=_dealt_table(block_m))
    assert len(launches) == 1
    (schedule,) = planned
    assert schedule is not None and schedule.size(1) == programs


def test_any_valid_schedule_gives_the_same_answer(launches):
    """A shuffled schedule (every tile once, some programs idle in several waves) through
    the op: the kernel follows it and the result still matches the reference."""
    from fuseinfer.ops.attention.arguments import PrefillArgs
    from fuseinfer.ops.attention.launch import launch_prefill

    q_lens, kv_lens = [700, 33, 1200], [900, 33, 1200]
    hq, hkv, d = 8, 2, 128
    kv = make_paged_kv(kv_lens, hkv, d, 64, torch.bfloat16, "cuda", poison=True)
    q = torch.randn(sum(q_lens), hq, d, device="cuda", dtype=torch.bfloat16)
    attn = PagedAttention(AttentionShape(hq, hkv, d, 64), "cuda", table=_dealt_table())
    plan = attn.plan_prefill(q_lens, kv_lens, kv.page_table)
    tiles, programs = plan.work.size(0) * hq, 11
    waves = -(-tiles // programs)
    slots = torch.full((waves * programs,), -1, dtype=torch.int32)
    gen = torch.Generator().manual_seed(5)
    slots[torch.randperm(waves * programs, generator=gen)[:tiles]] = \
        torch.randperm(tiles, generator=gen).to(torch.int32)
    out = torch.full_like(q, float("nan"))
    launch_prefill(PrefillArgs(q, kv.k_cache, kv.v_cache, kv.page_table, plan.q_indptr,
                               plan.kv_lens, plan.work, out, sm_scale=d ** -0.5,
                               launch=plan.launch,
                               schedule=slots.view(waves, programs).cuda()))
    want, _ = reference_paged_attention(q, kv.k_cache, kv.v_cache, kv.page_table,
                                        plan.q_indptr, plan.kv_lens, sm_scale=d ** -0.5)
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)
    assert len(launches) == 1


def test_a_4x2k_batch_on_every_sm_is_dealt(launches):
    """The shape the dealt schedule is for (4 x 2k, Llama-3-8B heads) at the GPU's own SM
    count: a schedule is planned and the answer is right."""
    q_lens = kv_lens = [2048] * 4
    attn = PagedAttention(AttentionShape(32, 8, 128, 64), "cuda", table=_dealt_table())
    kv = make_paged_kv(kv_lens, 8, 128, 64, torch.bfloat16, "cuda", poison=True)
    plan = attn.plan_prefill(q_lens, kv_lens, kv.page_table)
    assert plan.schedule is not None
    q = torch.randn(sum(q_lens), 32, 128, device="cuda", dtype=torch.bfloat16)
    out = attn.run(plan, q, kv.k_cache, kv.v_cache)
    want, _ = reference_paged_attention(q, kv.k_cache, kv.v_cache, kv.page_table,
                                        plan.q_indptr, plan.kv_lens, sm_scale=128 ** -0.5)
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)
    assert len(launches) == 1
