"""`fuseinfer tune gemm` on the CPU: the candidate menu per M bucket, the choice of the
fastest candidate by geometric mean over the projections (timings faked: the search, not
the clock, is under test), and the entry it returns parsing back as a valid `linear`
table entry."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from fuseinfer.bench.suites import linear_tune as tune
from fuseinfer.bench.suites.linear import Shape
from fuseinfer.dispatch.schema import parse_dataclass
from fuseinfer.ops.linear.dispatch import LinearDispatch


def test_candidates_offer_cublas_always_and_the_gemv_only_while_it_can_run():
    rules = tune.candidates(8)
    gemvs = len(tune.GEMV_CANDIDATES)
    kinds = [r.kernel for r in rules]
    assert kinds[:1 + gemvs] == ["cublas"] + ["gemv"] * gemvs
    assert set(kinds[1 + gemvs:]) == {"split_k"}
    # the gemv's candidates differ in grid, stages or warps, the fields it uses
    assert len({(r.min_programs, r.num_stages, r.num_warps)
                for r in rules[1:1 + gemvs]}) == gemvs
    for max_m in (16, None):
        kinds = [r.kernel for r in tune.candidates(max_m)]
        assert kinds[0] == "cublas" and set(kinds[1:]) == {"split_k"}
    assert all(r.max_m == 4 for r in tune.candidates(4))


@pytest.mark.parametrize("fast_block_n", [32, 128])
def test_tune_picks_the_fastest_by_geomean_per_bucket(monkeypatch, fast_block_n):
    shapes = [Shape("m", "o", 48, 64), Shape("m", "down", 32, 96)]

    def fake_timed(sets, config, launch):
        x, w, _ = sets[0]
        rule = launch.__defaults__[0]
        if rule.kernel == "gemv":  # fast at one row only
            return 1.0 if x.shape[0] == 1 else 50.0
        if rule.kernel == "cublas":  # wins from 32 rows on
            return 1.5 if x.shape[0] >= 32 else 40.0
        # the wanted split_k tile is fastest; others slower, by shape too
        return (2.0 if rule.block_n == fast_block_n else 5.0) * (1 + w.shape[1] / 1000)

    monkeypatch.setattr(tune, "_timed", fake_timed)
    entry, log = tune.tune(shapes, device="cpu")
    assert [r.max_m for r in entry.rules] == [m for m, _ in tune.BUCKETS]
    kinds = {r.max_m: r.kernel for r in entry.rules}
    assert kinds[1] == "gemv" and kinds[32] == "cublas" and kinds[None] == "cublas"
    assert all(r.kernel == "split_k" and r.block_n == fast_block_n
               for r in entry.rules if r.max_m in (2, 4, 8, 16))
    assert len(log) == sum(len(tune.candidates(m)) for m, _ in tune.BUCKETS)
    as_json = {"source": "t", "enable_pdl": True, "rules": [asdict(r) for r in entry.rules]}
    assert parse_dataclass(LinearDispatch, as_json, "linear") == \
        LinearDispatch("t", True, entry.rules)


def test_tune_gives_a_shape_its_own_rules_where_another_candidate_wins_on_it(monkeypatch):
    """The o-like shape runs cuBLAS fastest at 2..4 rows while split_k wins the geomean:
    it gets a ladder of its own up to bucket 4 (the general gemv at 1, cuBLAS at 2 and 4),
    the other shape none; lookups by shape then follow it."""
    o_like, down_like = Shape("m", "o", 48, 64), Shape("m", "down", 32, 96)

    def fake_timed(sets, config, launch):
        x, w, _ = sets[0]
        rule, m = launch.__defaults__[0], x.shape[0]
        if rule.kernel == "gemv":
            return 1.0 if m == 1 else 50.0
        if rule.kernel == "cublas":
            return 1.0 if (w.shape[0] == 48 and m <= 4) else 40.0
        return 2.0 if rule.block_n == 64 and rule.block_k == 128 else 5.0

    monkeypatch.setattr(tune, "_timed", fake_timed)
    # the o-like shape twice (two models share it): timed once, one ladder
    entry, _ = tune.tune([o_like, down_like, Shape("n", "o", 48, 64)], device="cpu")
    shaped = [r for r in entry.rules if r.n is not None]
    assert [(r.max_m, r.kernel, r.n, r.k) for r in shaped] == [
        (1, "gemv", 48, 64), (2, "cublas", 48, 64), (4, "cublas", 48, 64)]
    assert entry.rule(2, 48, 64).kernel == "cublas" and entry.rule(8, 48, 64).kernel == "split_k"
    assert entry.rule(2, 32, 96).kernel == "split_k" and entry.rule(2).kernel == "split_k"
    as_json = {"source": "t", "enable_pdl": True, "rules": [asdict(r) for r in entry.rules]}
    assert parse_dataclass(LinearDispatch, as_json, "linear").rule(4, 48, 64).kernel == \
        "cublas"
