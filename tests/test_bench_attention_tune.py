"""`fuseinfer tune attention`'s part selection (--kinds, --head-dims) on the CPU: the timings
are a made-up cost per candidate, so the test checks which rules change and which stay."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fuseinfer.bench.suites import attention_tune as tune
from fuseinfer.ops.attention.dispatch import ATTENTION_BUILTIN


def _fake_cost(case, table, block_m=None, fp8=False):
    """A cost with one best candidate per part that no built-in rule already holds."""
    d = case.model.head_dim
    if fp8:  # timed on an FP8 cache: its own rule decides, a long block wins
        r = table.decode_rule(d, fp8=True)
        return 2.0 + (r.block_n != 256) + (r.num_warps != 2) + (r.num_stages != 3) \
            + 0.25 * (r.kernel == "cuda")
    if case.kind == "prefill":
        r = table.prefill_rule(d)
        return 1.0 + (r.block_m != 64) + (r.block_n != 128) + (r.num_warps != 8) \
            + (r.num_stages != 3) + r.tma
    if (table.min_chunk, table.target_ctas_per_sm) != (ATTENTION_BUILTIN.min_chunk,
                                                        ATTENTION_BUILTIN.target_ctas_per_sm):
        return 1.0 + (table.min_chunk != 512) + (table.target_ctas_per_sm != 1)
    r = table.decode_rule(d)
    return 3.0 + (r.block_n != 32) + (r.num_warps != 8) + (r.num_stages != 4) \
        - 0.5 * (r.kv_heads_per_program == 2) + 0.25 * (r.kernel == "cuda")


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(tune, "_time", _fake_cost)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)


def _on_sm90(monkeypatch, cost, sm_count: int | None = None) -> None:
    """Tune as on an sm_90 GPU (of sm_count SMs, where given) with made-up timings."""
    monkeypatch.setattr(tune, "_time", cost)
    if sm_count is not None:
        monkeypatch.setattr(tune, "_sm_count", lambda: sm_count)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))


def test_decode_of_one_head_dim_leaves_the_rest(fake):
    start = ATTENTION_BUILTIN
    table, log = tune.tune(0, ("decode",), start, (64,))
    assert table.decode_rule(64) == replace(start.decode_rule(64), max_head_dim=64,
                                            block_n=32, num_warps=8, num_stages=4,
                                            kv_heads_per_program=2)
    assert table.decode_rule(128) == start.decode_rule(128)
    assert table.prefill_rules == start.prefill_rules
    assert (table.min_chunk, table.target_ctas_per_sm) == (start.min_chunk,
                                                          start.target_ctas_per_sm)
    # the loop search, then 2 and 4 KV heads per program with its winner (already 8 warps),
    # then the CUDA kernel at 4 and 8 warps and 2-4 ring stages, on the entry's split
    # target and on its own
    assert len(log) == len(tune.DECODE_CANDIDATES) + len(tune.KV_HEADS_PER_PROGRAM) \
        + len(tune.CUDA_DECODE_CANDIDATES)
    assert [e["candidate"] for e in log[-8:]] == [
        (32, 8, 4, 2), (32, 8, 4, 4), (32, 4, 2, 1, "cuda"), (32, 4, 4, 1, "cuda"),
        (32, 4, 3, 1, "cuda", None, 2), (32, 4, 4, 1, "cuda", None, 2), (32, 8, 3, 1, "cuda"),
        (32, 8, 3, 1, "cuda", None, 1)]
    assert {e["head_dim"] for e in log} == {64}


def test_splits_alone_change_only_the_split_policy(fake):
    start = ATTENTION_BUILTIN
    table, log = tune.tune(0, ("splits",), start)
    assert (table.min_chunk, table.target_ctas_per_sm) == (512, 1)
    assert table.decode_rules == start.decode_rules
    assert table.prefill_rules == start.prefill_rules
    assert [e["kind"] for e in log] == ["splits"] * len(tune.SPLIT_CANDIDATES)


def test_prefill_of_both_head_dims(fake):
    start = ATTENTION_BUILTIN
    table, _ = tune.tune(0, ("prefill",), start)
    for d in (64, 128):
        r = table.prefill_rule(d)
        assert (r.block_m, r.block_n, r.num_warps, r.num_stages, r.tma) == (64, 128, 8, 3,
                                                                             False)
    assert table.decode_rules == start.decode_rules
    assert table.prefill_rule(256) == start.prefill_rule(256)


def test_every_timing_is_saved_as_it_is_taken(fake):
    saved = []
    _, log = tune.tune(0, ("splits",), ATTENTION_BUILTIN, saved=saved.append)
    assert [len(s) for s in saved] == list(range(1, len(tune.SPLIT_CANDIDATES) + 1))
    assert saved[-1] == list(log)


def test_fp8_decode_tunes_its_own_rules(fake):
    start = ATTENTION_BUILTIN
    table, log = tune.tune(0, ("decode-fp8",), start, (128,))
    fp8 = table.decode_rule(128, fp8=True)
    assert (fp8.block_n, fp8.num_warps, fp8.num_stages, fp8.max_head_dim) == (256, 2, 3, 128)
    assert table.decode_rules == start.decode_rules  # bf16 caches keep theirs
    assert table.decode_rule(256, fp8=True) == start.decode_rule(256)  # copied from decode
    assert table.prefill_rules == start.prefill_rules
    assert {e["kind"] for e in log} == {"decode-fp8"}
    assert len(log) == len(tune.FP8_DECODE_CANDIDATES) + len(tune.KV_HEADS_PER_PROGRAM) * 2 \
        + len(tune.CUDA_DECODE_CANDIDATES)
    # the default parts leave the FP8 rules alone
    again, log = tune.tune(0, tune.DEFAULT_KINDS, table, (64,))
    assert again.fp8_decode_rules == table.fp8_decode_rules
    assert "decode-fp8" not in {e["kind"] for e in log}


def test_the_cuda_kernel_wins_where_it_is_faster(monkeypatch):
    """A CUDA-kernel candidate faster than every Triton one becomes the rule (its warps,
    the winning loop's block_n as the split alignment)."""
    def cost(case, table, block_m=None, fp8=False):
        r = table.decode_rule(case.model.head_dim, fp8)
        return 1.0 if (r.kernel, r.num_warps) == ("cuda", 8) else 2.0 + (r.block_n != 64)

    monkeypatch.setattr(tune, "_time", cost)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    table, _ = tune.tune(0, ("decode",), ATTENTION_BUILTIN, (128,))
    r = table.decode_rule(128)
    assert (r.kernel, r.num_warps, r.block_n, r.kv_heads_per_program) == ("cuda", 8, 64, 1)
    table.validate("t")


def test_small_and_large_batches_get_their_own_rule(monkeypatch):
    """Each candidate is timed at a small and a large batch; where their fastest differ,
    the small batch's becomes a rule for batches up to SMALL_BATCH ahead of the large
    batch's, and a plan picks by its batch."""
    from fuseinfer.ops import AttentionShape, PagedAttention

    def cost(case, table, block_m=None, fp8=False):
        r = table.decode_rule(case.model.head_dim, fp8)
        small = len(case.kv_lens) <= tune.SMALL_BATCH
        want = (32, 2, 3) if small else (64, 8, 3)
        return 1.0 + ((r.block_n, r.num_warps, r.num_stages) != want) + (r.kernel == "cuda")

    monkeypatch.setattr(tune, "_time", cost)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    table, _ = tune.tune(0, ("decode",), ATTENTION_BUILTIN, (128,))
    table.validate("t")
    rules = [r for r in table.decode_rules if r.max_head_dim == 128]
    assert [(r.block_n, r.num_warps, r.max_batch) for r in rules] == [(32, 2, tune.SMALL_BATCH),
                                                                      (64, 8, None)]
    attn = PagedAttention(AttentionShape(32, 8, 128, 16), "cpu", table=table, max_batch=64)
    pages = torch.zeros(64, 4, dtype=torch.int32)
    for batch, want in ((1, 32), (tune.SMALL_BATCH, 32), (tune.SMALL_BATCH + 1, 64), (64, 64)):
        assert attn.plan_decode([5] * batch, pages[:batch]).launch.block_n == want
    assert table.decode_rule(128).block_n == 64  # no batch given: the catch-all


def test_resume_takes_back_a_cut_runs_timings(fake, monkeypatch):
    """A run cut after some candidates (its log through JSON, as --log writes it): the
    resumed run times only the rest and ends on the table a whole run gives."""
    import json

    whole, whole_log = tune.tune(0, ("decode", "splits"), ATTENTION_BUILTIN, (64,))
    cut = json.loads(json.dumps(list(whole_log)[:20]))
    timed = []
    monkeypatch.setattr(tune, "_time", lambda *a, **k: timed.append(a) or _fake_cost(*a, **k))
    resumed, log = tune.tune(0, ("decode", "splits"), ATTENTION_BUILTIN, (64,), resumed=cut)
    assert resumed == whole
    assert len(log) == len(whole_log)
    # the 20 logged candidates were not timed again; every other one was (decode: one
    # timing per shape, splits: one per model and shape)
    per_split = len(tune.TUNE_MODELS) * len(tune.SPLIT_SHAPES)
    decode_left = len(tune.DECODE_CANDIDATES) + len(tune.KV_HEADS_PER_PROGRAM) \
        + len(tune.CUDA_DECODE_CANDIDATES) - 20
    assert len(timed) == decode_left * len(tune.DECODE_SHAPES) \
        + len(tune.SPLIT_CANDIDATES) * per_split
    assert [e["us"] for e in log[:20]] == [e["us"] for e in cut]


def test_a_cuda_candidate_with_its_own_split_target_can_win_the_small_batches(monkeypatch):
    """The CUDA kernel aimed at two programs per SM wins batch 1 x 8k only: it becomes the
    small-batch rule with ctas_per_sm 2, and large batches keep the loop search's winner."""
    def cost(case, table, block_m=None, fp8=False):
        batch = len(case.kv_lens)
        r = table.decode_rule(case.model.head_dim, fp8, batch)
        if r.kernel == "cuda":
            return 1.0 if (batch == 1 and r.ctas_per_sm == 2 and r.num_warps == 4) else 9.0
        return 2.0 + (r.block_n != 64) + (r.num_warps != 4) + (r.num_stages != 2) \
            + (r.kv_heads_per_program != 1)

    monkeypatch.setattr(tune, "_time", cost)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    table, _ = tune.tune(0, ("decode",), ATTENTION_BUILTIN, (128,))
    small, large = table.decode_rule(128, batch=1), table.decode_rule(128, batch=64)
    assert (small.kernel, small.num_warps, small.ctas_per_sm, small.max_batch) == \
        ("cuda", 4, 2, tune.SMALL_BATCH)
    assert (large.kernel, large.block_n, large.num_warps, large.num_stages,
            large.ctas_per_sm) == ("triton", 64, 4, 2, None)


@pytest.mark.parametrize("wins_up_to", [0, 4, 16])
def test_merge_fuses_up_to_the_last_piece_count_where_it_wins(monkeypatch, wins_up_to):
    """The merge part times the fused merge and the merge kernel on windows of 2, 4, 8, 16
    pieces (both tuned models, both decode shapes) and keeps the counts, in order, where
    the fused merge wins; only fused_merge_window_pieces changes."""
    seen = set()

    def cost(case, table, block_m=None, fp8=False):
        m = case.model
        block_n = table.decode_rule(m.head_dim, batch=len(case.kv_lens)).block_n
        pieces = -(-(m.window_left + block_n) // table.min_chunk)  # the window's bound
        seen.add((m.name, case.shape, pieces))
        fused = table.fuses_merge(m.window_left, block_n)
        return 1.0 if fused == (pieces <= wins_up_to) else 2.0

    monkeypatch.setattr(tune, "_time", cost)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    start = ATTENTION_BUILTIN
    table, log = tune.tune(0, ("merge",), start)
    assert table.fused_merge_window_pieces == wins_up_to
    assert replace(table, fused_merge_window_pieces=0) == start
    tried = [p for p in tune.MERGE_PIECES if p <= wins_up_to]
    tried += [p for p in tune.MERGE_PIECES if p > wins_up_to][:1]
    chunk = start.min_chunk
    assert [e["candidate"] for e in log] == [[p, (p - 1) * chunk, f] for p in tried
                                             for f in (0, 1)]
    assert {e["kind"] for e in log} == {"merge"}
    assert seen == {(name, f"{b}x{n}", p) for name in tune.TUNE_MODELS.values()
                    for b, n in tune.DECODE_SHAPES for p in tried}


def test_the_sm90_prefill_kernel_is_tried_on_sm90_and_wins_where_faster(monkeypatch):
    """On an sm_90 GPU the prefill search also times the warp-specialized kernel at the
    (block_n, stages) that fit its shared memory at that head dim (3 stages of 128-key
    tiles do not at head_dim 128), 192-row tiles at head_dim 64 only; a faster one becomes
    the rule, the fastest portable candidate the rule after it. Elsewhere it is not
    tried."""
    def cost(case, table, block_m=None, fp8=False):
        r = table.prefill_rule(case.model.head_dim)
        return 1.0 + (r.block_n != 128) + 0.5 * (not r.pingpong) if r.kernel == "hopper" \
            else 5.0 + r.tma

    _on_sm90(monkeypatch, cost)
    table, log = tune.tune(0, ("prefill",), ATTENTION_BUILTIN, (64, 128))
    table.validate("t")
    for d in (64, 128):
        r = table.prefill_rule(d)
        assert (r.kernel, r.block_m, r.block_n, r.num_warps, r.pingpong) == \
            ("hopper", 128, 128, 8, True)
        tried = {e["candidate"][1:4:2] for e in log
                 if e["head_dim"] == d and e["candidate"][5:6] == ("hopper",)}
        assert {e["candidate"][6] for e in log if e["candidate"][5:6] == ("hopper",)} \
            == {False, True}
        assert tried == ({(64, 2), (64, 3), (64, 4), (128, 2)} if d == 128 else
                         {(64, 2), (64, 3), (64, 4), (128, 2), (128, 3), (128, 4)})
        assert {e["candidate"][0] for e in log
                if e["head_dim"] == d and e["candidate"][5:6] == ("hopper",)} \
            == ({128} if d == 128 else {128, 192})
        fallback = table.portable_prefill_rule(d)  # the cheapest portable: no tma
        assert (fallback.kernel, fallback.max_head_dim, fallback.tma) == ("triton", d, False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    table, log = tune.tune(0, ("prefill",), ATTENTION_BUILTIN, (128,))
    assert table.prefill_rule(128).kernel == "triton"
    assert len(log) == len(tune.PREFILL_CANDIDATES)


def test_a_winning_192_row_rule_is_written_with_its_portable_rule(monkeypatch):
    """Where a 192-row sm_90a candidate is fastest (head_dim 64), the head dim's rules are
    it and the fastest portable candidate after it; the table validates and plans."""
    def cost(case, table, block_m=None, fp8=False):
        r = table.prefill_rule(case.model.head_dim)
        if r.kernel == "hopper":
            return 1.0 + (r.block_m != 192) + (r.num_stages != 3)
        return 5.0 + (r.block_n != 64) + r.num_warps / 8

    _on_sm90(monkeypatch, cost)
    table, _ = tune.tune(0, ("prefill",), ATTENTION_BUILTIN, (64,))
    table.validate("t")
    hopper, fallback = table.prefill_rule(64), table.portable_prefill_rule(64)
    assert (hopper.kernel, hopper.block_m, hopper.num_warps, hopper.num_stages) == \
        ("hopper", 192, 12, 3)
    assert (fallback.kernel, fallback.max_head_dim, fallback.block_n, fallback.num_warps) \
        == ("triton", 64, 64, 4)
    assert table.prefill_rules.index(fallback) == table.prefill_rules.index(hopper) + 1


@pytest.mark.parametrize("dealt_faster", [False, True])
def test_a_persistent_winner_is_timed_on_a_ragged_batch_with_and_without_dealing(
        monkeypatch, dealt_faster):
    """A persistent sm_90a winner is timed again on four 2k requests with the plan's dealt
    schedule off and on (it changes nothing on the one long request the search uses), and
    longest_first is whichever was faster there; the search itself never deals."""
    ragged = []

    def cost(case, table, block_m=None, fp8=False):
        r = table.prefill_rule(case.model.head_dim)
        if case.shape == tune.RAGGED_PREFILL:
            ragged.append((r.persistent, r.longest_first))
            return 2.0 - 0.5 * (r.longest_first == dealt_faster)
        assert not r.longest_first
        if r.kernel == "hopper":
            return 1.0 + (r.block_n != 128) + (not r.persistent) + (r.num_stages != 2)
        return 5.0 + r.tma

    _on_sm90(monkeypatch, cost, sm_count=132)
    table, log = tune.tune(0, ("prefill",), ATTENTION_BUILTIN, (128,))
    table.validate("t")
    rule = table.prefill_rule(128)
    assert (rule.kernel, rule.persistent, rule.block_n, rule.num_stages) == \
        ("hopper", True, 128, 2)
    assert rule.longest_first == dealt_faster
    assert sorted(ragged) == [(True, False), (True, True)]
    assert [e["kind"] for e in log].count("prefill-ragged") == 2
    assert table.portable_prefill_rule(128).kernel == "triton"


def test_a_one_program_per_tile_winner_is_not_timed_ragged(monkeypatch):
    def cost(case, table, block_m=None, fp8=False):
        assert case.shape != tune.RAGGED_PREFILL
        r = table.prefill_rule(case.model.head_dim)
        return 1.0 + r.persistent + (r.block_n != 128) if r.kernel == "hopper" else 5.0

    _on_sm90(monkeypatch, cost)
    table, _ = tune.tune(0, ("prefill",), ATTENTION_BUILTIN, (128,))
    rule = table.prefill_rule(128)
    assert (rule.kernel, rule.persistent, rule.longest_first) == ("hopper", False, False)


def test_no_ragged_timing_where_the_plan_would_not_deal(monkeypatch):
    """On a GPU where the plan deals no tiles of the ragged batch (here: one SM, where every
    order is the same), both timings would be one launch: none is taken, and the rule
    does not deal."""
    def cost(case, table, block_m=None, fp8=False):
        assert case.shape != tune.RAGGED_PREFILL
        r = table.prefill_rule(case.model.head_dim)
        return 1.0 + (not r.persistent) + (r.block_n != 128) if r.kernel == "hopper" else 5.0

    _on_sm90(monkeypatch, cost, sm_count=1)
    table, log = tune.tune(0, ("prefill",), ATTENTION_BUILTIN, (128,))
    rule = table.prefill_rule(128)
    assert (rule.kernel, rule.persistent, rule.longest_first) == ("hopper", True, False)
    assert "prefill-ragged" not in {e["kind"] for e in log}
