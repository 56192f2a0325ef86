"""The persistent sm_90a prefill's tile schedule on the CPU: tile_schedule.py's dealing
(every tile once, a tile per program per wave, its makespans against recomputations done
here, the alternating waves it is compared with), the plan that carries it (only for a
persistent longest-first rule, where the model says it pays, on the sm_90a launch alone),
the rule checks, and the op's checks of the schedule argument."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from fuseinfer.bench.attention_inputs import make_paged_kv
from fuseinfer.dispatch import TableError
from fuseinfer.dispatch.schema import parse_dataclass, to_json
from fuseinfer.ops import AttentionShape, PagedAttention
from fuseinfer.ops.attention.dispatch import (
    ATTENTION_BUILTIN,
    AttentionDispatch,
    PrefillLaunchRule,
)
from fuseinfer.ops.attention.tile_schedule import (
    MAX_WAVES,
    MIN_GAIN,
    TILE_OVERHEAD,
    TileSchedule,
    longest_first,
    tile_costs,
    waves_of,
    worth_it,
)

# positional: max_head_dim, block_m, block_n, num_warps, num_stages, tma, kernel, pingpong,
# persistent, longest_first
DEALT = PrefillLaunchRule(None, 128, 128, 8, 2, True, "hopper", False, True, True)
PORTABLE = PrefillLaunchRule(None, 64, 64, 4, 2, True)


def _table(*rules: PrefillLaunchRule, min_window: int = 0) -> AttentionDispatch:
    return replace(ATTENTION_BUILTIN, prefill_rules=rules,
                   hopper_prefill_min_window=min_window)


def _fresh_key_ends(q_lens: list[int], block_m: int, prefixes: list[int] | None = None
                    ) -> list[int]:
    """Each work item's last visible key + 1, longest first (as the plan orders them)."""
    prefixes = prefixes or [0] * len(q_lens)
    ends = [p + min((blk + 1) * block_m, q) for q, p in zip(q_lens, prefixes, strict=True)
            for blk in range(-(-q // block_m))]
    return sorted(ends, reverse=True)


def _randint(gen: torch.Generator, lo: int, hi: int) -> int:
    """A random int in lo..hi (both included)."""
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


def _loads(slots: list[int], programs: int, costs: list[float], heads: int) -> list[float]:
    """Per program, the summed costs of the tiles a wave-major slot list gives it."""
    loads = [0.0] * programs
    for at, t in enumerate(slots):
        if t >= 0:
            loads[at % programs] += costs[t // heads]
    return loads


def _alternating_slots(tiles: int, programs: int) -> list[int]:
    """The kernel's own dealing: tile t of wave t // programs goes to program t % programs
    on even waves and programs - 1 - t % programs on odd ones."""
    waves = -(-tiles // programs)
    slots = [-1] * (waves * programs)
    for t in range(tiles):
        w, i = divmod(t, programs)
        slots[w * programs + (i if w % 2 == 0 else programs - 1 - i)] = t
    return slots


def _random_batches(seed: int, count: int):
    """(item costs, heads, programs) of random ragged batches: random q lens 1..3000 (some
    with a cached prefix), block 64 or 128, 1..64 heads, 1..132 programs."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(count):
        batch = _randint(gen, 1, 6)
        q_lens = [_randint(gen, 1, 3000) for _ in range(batch)]
        prefixes = [_randint(gen, 0, 4000) if _randint(gen, 0, 1) else 0 for _ in q_lens]
        block = (64, 128)[_randint(gen, 0, 1)]
        costs = tile_costs(_fresh_key_ends(q_lens, block, prefixes), block)
        yield costs, _randint(gen, 1, 64), _randint(gen, 1, 132)
    # few tiles for many programs: the schedule narrows to the tiles
    yield tile_costs([_randint(gen, 1, 3000)], 128), 1, 132


def test_longest_first_deals_every_tile_once_a_tile_per_program_per_wave():
    for costs, heads, asked in _random_batches(seed=11, count=40):
        tiles = len(costs) * heads
        s = longest_first(costs, heads, asked)
        programs = min(asked, tiles)
        assert s.programs == programs
        assert s.waves == -(-tiles // programs) and len(s.slots) == s.waves * programs
        dealt = [t for t in s.slots if t >= 0]
        assert sorted(dealt) == list(range(tiles))
        assert s.slots.count(-1) == len(s.slots) - tiles
        assert all(t == -1 for t in s.slots if t < 0)
        for w in range(s.waves):
            row = [t for t in s.slots[w * programs:(w + 1) * programs] if t >= 0]
            assert all(w * programs <= t < (w + 1) * programs for t in row)
            # every wave but the last is full: a tile for each program
            assert len(row) == (programs if w < s.waves - 1
                                else tiles - (s.waves - 1) * programs)


def test_longest_first_makespans_match_recomputations():
    for costs, heads, asked in _random_batches(seed=12, count=40):
        tiles = len(costs) * heads
        s = longest_first(costs, heads, asked)
        loads = _loads(s.slots, s.programs, costs, heads)
        assert s.makespan == pytest.approx(max(loads), rel=1e-12)
        alternating = _loads(_alternating_slots(tiles, s.programs), s.programs, costs, heads)
        assert s.alternating_makespan == pytest.approx(max(alternating), rel=1e-12)
        bound = max(sum(costs) * heads / s.programs, max(costs))
        assert s.makespan >= bound - 1e-9 and s.alternating_makespan >= bound - 1e-9
        assert sum(loads) == pytest.approx(sum(costs) * heads)


def test_each_wave_gives_its_heaviest_tiles_to_the_least_loaded_programs():
    """Within a wave, a tile that comes first (costs at least as much) goes to a program
    that had at most as much work before the wave as the one a later tile goes to."""
    for costs, heads, asked in _random_batches(seed=13, count=25):
        s = longest_first(costs, heads, asked)
        p = s.programs
        loads = [0.0] * p
        for w in range(s.waves):
            row = s.slots[w * p:(w + 1) * p]
            owner = sorted((t, prog) for prog, t in enumerate(row) if t >= 0)
            before = [loads[prog] for _, prog in owner]
            assert before == sorted(before)
            for t, prog in owner:
                loads[prog] += costs[t // heads]


def test_equal_tiles_keep_the_kernels_own_dealing_cost():
    """One long request's tiles cost the same per wave: dealing gains nothing."""
    gen = torch.Generator().manual_seed(14)
    for _ in range(10):
        heads, programs = _randint(gen, 1, 64), _randint(gen, 1, 132)
        cost = _randint(gen, 1, 200) + TILE_OVERHEAD
        s = longest_first([cost] * _randint(gen, 1, 40), heads, programs)
        assert s.makespan == s.alternating_makespan == s.waves * cost
        assert not worth_it(s)


def test_four_2k_requests_gain_and_one_16k_request_does_not():
    heads, programs, block = 32, 132, 128
    ragged = longest_first(tile_costs(_fresh_key_ends([2048] * 4, block), block), heads,
                           programs)
    assert ragged.makespan <= 0.98 * ragged.alternating_makespan
    assert worth_it(ragged)
    long = longest_first(tile_costs(_fresh_key_ends([16384], block), block), heads,
                         programs)
    assert long.makespan >= long.alternating_makespan * (1 - MIN_GAIN)
    assert not worth_it(long)


def test_worth_it_is_the_min_gain_threshold():
    gen = torch.Generator().manual_seed(15)
    for _ in range(20):
        alternating = float(torch.rand((), generator=gen)) * 1000 + 1
        edge = (1 - MIN_GAIN) * alternating
        assert worth_it(TileSchedule(1, [0], edge * (1 - 1e-6), alternating))
        assert not worth_it(TileSchedule(1, [0], edge * (1 + 1e-6), alternating))
        assert not worth_it(TileSchedule(1, [0], alternating, alternating))


def test_tile_costs_are_key_blocks_plus_the_overhead():
    gen = torch.Generator().manual_seed(16)
    for block_n in (16, 32, 64, 128, 256):
        ends = torch.randint(1, 100_000, (50,), generator=gen).tolist()
        want = [(end + block_n - 1) // block_n + TILE_OVERHEAD for end in ends]
        assert tile_costs(ends, block_n) == want
        assert all(c == math.ceil(e / block_n) + TILE_OVERHEAD
                   for c, e in zip(tile_costs(ends, block_n), ends, strict=True))


# ---- the plan -------------------------------------------------------------------------

def _page_table(batch: int, tokens: int, page_size: int = 16) -> torch.Tensor:
    pages = -(-tokens // page_size)
    return torch.arange(batch * pages, dtype=torch.int32).view(batch, pages)


def _attention(table: AttentionDispatch, sm_count: int = 132, fp8: bool = False,
               **kwargs) -> PagedAttention:
    attn = PagedAttention(AttentionShape(32, 8, 128, page_size=16, kv_fp8=fp8), "cpu",
                          table=table, **kwargs)
    attn.sm_count = sm_count
    return attn


def _plan_key_ends(plan) -> list[int]:
    """The key end of each of the plan's work items, in its order."""
    bm = plan.launch.block_m
    out = []
    for req, blk in plan.work.tolist():
        q_len, kv_len = plan.q_lens_host[req], plan.kv_lens_host[req]
        out.append(kv_len - q_len + min((blk + 1) * bm, q_len))
    return out


def test_the_table_with_a_dealt_rule_validates():
    table = _table(DEALT, PORTABLE, min_window=1024)
    table.validate("t")
    again = parse_dataclass(AttentionDispatch, to_json(table), "t")  # validates each rule
    assert again == table and again.prefill_rules[0].longest_first


def test_plan_deals_4x2k_tiles_for_the_sm90_launch_only():
    table = _table(DEALT, PORTABLE, min_window=1024)
    attn = _attention(table)
    plan = attn.plan_prefill([2048] * 4, [2048] * 4, _page_table(4, 2048))
    heads, programs = 32, 132
    tiles = plan.work.size(0) * heads
    assert plan.launch.hopper_kernel == 1 and plan.launch.persistent == 1
    s = plan.schedule
    assert s is not None and s.dtype == torch.int32 and s.is_contiguous()
    assert list(s.shape) == [-(-tiles // programs), programs]
    flat = s.flatten().tolist()
    assert sorted(t for t in flat if t >= 0) == list(range(tiles))
    assert all(t == -1 for t in flat if t < 0)
    # the plan's items, dealt here again, give the same table
    want = longest_first(tile_costs(_plan_key_ends(plan), plan.launch.block_n), heads,
                         programs)
    assert worth_it(want) and flat == want.slots
    # only the sm_90a launch has it
    assert plan.portable_launch != plan.launch
    assert plan.schedule_for(plan.launch) is s
    assert plan.schedule_for(plan.portable_launch) is None
    assert plan.schedule_for(attn.prefill_launch(plan, 128)) is None  # narrow window
    assert plan.schedule_for(attn.prefill_launch(plan, None)) is s


def test_plan_schedule_follows_the_model_on_random_batches():
    """Random ragged batches (some extending a cached prefix): a schedule exactly where the
    model says it pays, and then the dealing of the plan's own items."""
    gen = torch.Generator().manual_seed(21)
    attn = _attention(_table(DEALT))
    seen = set()
    for _ in range(12):
        batch = _randint(gen, 1, 6)
        q_lens = [_randint(gen, 1, 3000) for _ in range(batch)]
        kv_lens = [q + (_randint(gen, 0, 2000) if _randint(gen, 0, 1) else 0)
                   for q in q_lens]
        attn.sm_count = _randint(gen, 1, 132)
        plan = attn.plan_prefill(q_lens, kv_lens, _page_table(batch, max(kv_lens)))
        dealt = longest_first(tile_costs(_plan_key_ends(plan), plan.launch.block_n), 32,
                              attn.sm_count)
        seen.add(plan.schedule is not None)
        if worth_it(dealt):
            assert plan.schedule is not None
            assert plan.schedule.flatten().tolist() == dealt.slots
            assert list(plan.schedule.shape) == [dealt.waves, dealt.programs]
        else:
            assert plan.schedule is None
    assert seen == {True, False}  # both kinds of batch came up


def test_no_schedule_without_longest_first_or_where_it_does_not_pay():
    table = _table(DEALT)
    args = ([2048] * 4, [2048] * 4, _page_table(4, 2048))
    assert _attention(table).plan_prefill(*args).schedule is not None  # the baseline
    persistent = _table(replace(DEALT, longest_first=False))
    plan = _attention(persistent).plan_prefill(*args)
    assert plan.launch.persistent == 1 and plan.schedule is None
    assert plan.schedule_for(plan.launch) is None
    long = _attention(table).plan_prefill([16384], [16384], _page_table(1, 16384))
    assert long.launch.persistent == 1 and long.schedule is None
    fp8 = _attention(table, fp8=True).plan_prefill(*args)
    assert fp8.launch.hopper_kernel == 0 and fp8.schedule is None
    off = _attention(table, hopper_prefill=False).plan_prefill(*args)
    assert off.launch.hopper_kernel == 0 and off.schedule is None
    assert _attention(table, sm_count=1).plan_prefill(*args).schedule is None  # one program
    empty = _attention(table).plan_prefill([0], [5], _page_table(1, 16))
    assert empty.work.size(0) == 0 and empty.schedule is None


# ---- the rule checks --------------------------------------------------------------------

@pytest.mark.parametrize("fields, problem", [
    (dict(kernel="triton", block_m=64, num_warps=4, persistent=False),
     "longest_first: only with kernel 'hopper'"),
    (dict(persistent=False), "longest_first: only with persistent programs"),
])
def test_longest_first_needs_the_persistent_sm90_kernel(fields, problem):
    DEALT.validate("t")
    rule = replace(DEALT, **fields)
    with pytest.raises(TableError, match=problem):
        rule.validate("t")
    data = to_json(_table(rule))  # a table file asking for it is refused too
    with pytest.raises(TableError, match=problem):
        parse_dataclass(AttentionDispatch, data, "t")


# ---- the op's schedule argument ---------------------------------------------------------

def _op_case():
    """A small ragged prefill planned with a schedule, and the op's keyword arguments."""
    gen = torch.Generator().manual_seed(31)
    q_lens, kv_lens = [300, 130, 7], [300, 130, 7]
    kv = make_paged_kv(kv_lens, 2, 64, 16, torch.float32, "cpu", generator=gen)
    attn = PagedAttention(AttentionShape(8, 2, 64, 16), "cpu", table=_table(DEALT))
    attn.sm_count = 5
    plan = attn.plan_prefill(q_lens, kv_lens, kv.page_table)
    assert plan.schedule is not None  # the case needs one
    q = torch.randn(sum(q_lens), 8, 64, generator=gen)
    args = dict(q=q, k_cache=kv.k_cache, v_cache=kv.v_cache, page_table=kv.page_table,
                q_indptr=plan.q_indptr, kv_lens=plan.kv_lens, work=plan.work,
                out=torch.full_like(q, float("nan")), sm_scale=0.125,
                launch=list(plan.launch))
    return plan, args


def test_op_accepts_the_plans_schedule_and_gives_the_same_output():
    plan, args = _op_case()
    torch.ops.fuseinfer.paged_prefill_attention(**args)
    without = args["out"].clone()
    assert torch.isfinite(without).all()
    args["out"] = torch.full_like(args["q"], float("nan"))
    torch.ops.fuseinfer.paged_prefill_attention(**args, schedule=plan.schedule)
    assert torch.equal(args["out"], without)


@pytest.mark.parametrize("bad", [
    lambda s: s.long(),
    lambda s: torch.full((s.size(0) + 1, s.size(1)), -1, dtype=torch.int32),
    lambda s: torch.full((s.size(0) - 1, s.size(1)), -1, dtype=torch.int32),
    lambda s: s.flatten(),
    lambda s: torch.empty(s.size(1), s.size(0), dtype=torch.int32).t(),  # not contiguous
    lambda s: torch.empty(s.size(0), 0, dtype=torch.int32),
], ids=["int64", "extra_wave", "missing_wave", "1d", "strided", "no_programs"])
def test_op_rejects_a_bad_schedule(bad):
    plan, args = _op_case()
    with pytest.raises(ValueError, match="schedule"):
        torch.ops.fuseinfer.paged_prefill_attention(**args, schedule=bad(plan.schedule))
    # the fake impl checks it too (off the CPU, q and the cache are 16-bit)
    meta = {k: _to_meta(v) for k, v in args.items()}
    torch.ops.fuseinfer.paged_prefill_attention(**meta, schedule=_to_meta(plan.schedule))
    with pytest.raises(ValueError, match="schedule"):
        torch.ops.fuseinfer.paged_prefill_attention(
            **meta, schedule=_to_meta(bad(plan.schedule)))


def _to_meta(v):
    if not isinstance(v, torch.Tensor):
        return v
    return v.to("meta", torch.bfloat16) if v.is_floating_point() else v.to("meta")


def test_no_schedule_past_max_waves():
    """Dealing costs the host per wave: past MAX_WAVES waves the plan keeps the kernel's
    alternating waves even where the model says dealing would pay; inside the bound it
    deals where it pays."""
    attn = _attention(_table(DEALT))
    for lens, inside in (([2048] * 8 + [1000] * 14, True), ([3000] * 4 + [1000] * 24, False)):
        plan = attn.plan_prefill(lens, lens, _page_table(len(lens), 3000))
        dealt = longest_first(tile_costs(_plan_key_ends(plan), 128), 32, 132)
        assert worth_it(dealt)  # the model would deal both
        assert (dealt.waves <= MAX_WAVES) == inside
        assert (plan.schedule is not None) == inside
        assert plan.launch.persistent == 1


def test_waves_of_matches_longest_first():
    gen = torch.Generator().manual_seed(3)
    for _ in range(30):
        items, heads, programs = (int(torch.randint(0, n, (1,), generator=gen)) + 1
                                  for n in (200, 64, 132))
        dealt = longest_first([1.0] * items, heads, programs)
        assert waves_of(items, heads, programs) == dealt.waves
    assert waves_of(0, 32, 132) == 0


def test_a_scheduled_launch_is_its_own_configuration():
    """The build guard keys compiled variants by configuration: a persistent launch with a
    schedule compiles apart from one without (Triton makes an int argument of 1 a
    constant), so its first launch is guarded too."""
    from fuseinfer.ops.attention.arguments import PrefillArgs, PrefillLaunch
    from fuseinfer.ops.attention.prefill_hopper import _configuration

    plan, args = _op_case()
    launch = PrefillLaunch._make(args["launch"])
    persistent = list(launch._replace(hopper_kernel=1, persistent=1))
    base = dict(args, launch=persistent)
    plain = _configuration(PrefillArgs(**base))
    dealt = _configuration(PrefillArgs(**base, schedule=plan.schedule))
    assert plain != dealt
    # one program per tile ignores a schedule: the same compiled kernel
    single = dict(args, launch=list(launch._replace(hopper_kernel=1, persistent=0)))
    assert _configuration(PrefillArgs(**single)) == \
        _configuration(PrefillArgs(**single, schedule=plan.schedule))


def test_run_rejects_q_with_other_heads_than_the_shape():
    """The schedule counts the shape's q heads: run refuses a q with another count."""
    plan, args = _op_case()
    heads = args["q"].size(1)
    attn = PagedAttention(AttentionShape(heads, args["k_cache"].size(-2),
                                         args["q"].size(2), args["k_cache"].size(1)), "cpu")
    plan = attn.plan_prefill(plan.q_lens_host, plan.kv_lens_host, args["page_table"])
    q = args["q"].repeat(1, 2, 1)
    with pytest.raises(ValueError, match="q"):
        attn.run(plan, q, args["k_cache"], args["v_cache"])
    out = attn.run(plan, args["q"], args["k_cache"], args["v_cache"])
    assert torch.isfinite(out).all()
