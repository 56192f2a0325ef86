"""bench/tune allreduce logic on the CPU: the row summary (ratios against the best baseline,
errors as notes) and the tuner's choice of rules from timed rows."""

from __future__ import annotations

from fuseinfer.bench.suites.allreduce import summarize
from fuseinfer.bench.suites.allreduce_tune import choose
from fuseinfer.ops.allreduce.allreduce_dispatch import AllreduceDispatch


def _row(tokens: int, **us: float) -> dict:
    return {"tokens": tokens, "hidden": 4096, "bytes": tokens * 8192,
            **{f"us_{k.replace('_norm', '+norm')}": v for k, v in us.items()}}


def test_summary_takes_the_best_of_each_side():
    row = summarize({**_row(16, one_shot=5.0, two_shot=6.0, nccl=10.0, symm_one_shot=7.5,
                            fused_one_shot=6.0, fused_two_shot=9.0, nccl_norm=22.0,
                            symm_one_shot_norm=12.0), "error_symm_two_shot": "boom"})
    assert row["ratio_allreduce"] == 7.5 / 5.0
    assert row["ratio_fused"] == 12.0 / 6.0
    assert "symm_two_shot: boom" in row["note"]


def test_summary_without_baselines_has_no_ratio():
    row = summarize(_row(1, one_shot=5.0, fused_one_shot=6.0))
    assert "ratio_allreduce" not in row and "ratio_fused" not in row


def test_tuner_merges_sizes_and_keeps_the_fusion_only_where_it_wins():
    rows = [
        _row(1, one_shot=4.0, two_shot=5.0, nccl=9.0, fused_one_shot=5.0, one_shot_norm=7.0,
             nccl_norm=20.0),
        _row(16, one_shot=4.5, two_shot=5.0, nccl=10.0, fused_one_shot=5.5,
             one_shot_norm=7.5),
        _row(512, one_shot=30.0, two_shot=20.0, nccl=35.0, fused_two_shot=30.0,
             two_shot_norm=25.0),
        _row(8192, one_shot=400.0, two_shot=250.0, nccl=240.0, fused_two_shot=200.0,
             nccl_norm=300.0),
    ]
    rules, fused = choose(rows[::-1], world=2)  # any order in
    assert [(r.max_bytes, r.algorithm) for r in rules] == [
        (16 * 8192, "one_shot"), (512 * 8192, "two_shot"), (8192 * 8192, "nccl")]
    assert [(f.max_bytes, f.fused) for f in fused] == [(16 * 8192, True),
                                                      (8192 * 8192, False)]
    entry = AllreduceDispatch("t", True, rules, fused)
    entry.validate("t")
    assert entry.algorithm(2, 8192) == "one_shot" and entry.fused(2, 8192)
    assert entry.algorithm(2, 100 * 8192) == "two_shot" and not entry.fused(2, 100 * 8192)
    assert entry.algorithm(2, 1 << 30) == "nccl"  # past the largest size timed
