"""`fuseinfer tune moe` on the CPU: the bucket choice (geometric means, skipping candidates
that did not run every case, merging equal neighbours), and the whole command on a tiny
model with host timing: every candidate is checked before it is timed, a failing one is
logged and skipped, and the entry it writes parses and validates."""

from __future__ import annotations

import argparse
import json

import pytest

from fuseinfer.bench import moe_baselines as mb
from fuseinfer.bench import moe_inputs
from fuseinfer.bench.suites import moe_tune as tune
from fuseinfer.bench.timing import time_eager_cpu
from fuseinfer.bench.tuning import TuneTarget
from fuseinfer.dispatch.schema import parse_dataclass
from fuseinfer.ops.moe.moe_dispatch import MoeDispatch

TINY = mb.MoeModel("tiny", 8, 2, 256, 128, renormalize=True)


def test_choose_takes_geomeans_and_merges_equal_neighbours(monkeypatch):
    monkeypatch.setattr(tune, "BUCKETS", ((8, (1, 8)), (64, (64,)), (None, (512,))))
    times = {
        "a": {("m", 1): 1.0, ("m", 8): 4.0, ("m", 64): 9.0, ("m", 512): 50.0},
        "b": {("m", 1): 2.5, ("m", 8): 2.5, ("m", 64): 8.0, ("m", 512): 40.0},
        "c": {("m", 1): 0.1},  # ran one case only: never a winner of a bucket it missed
    }
    model = mb.MoeModel("m", 8, 2, 256, 128)
    # bucket 1: a 2.0 vs b 2.5 (geomeans); buckets 2 and 3: b, merged, last unbounded
    assert tune.choose(times, [model]) == [(8, "a"), (None, "b")]


def test_tune_command_writes_a_valid_entry(tmp_path, monkeypatch):
    monkeypatch.setattr(tune, "BUCKETS", ((4, (2,)), (None, (9,))))
    monkeypatch.setattr(tune, "BF16_CANDIDATES", ((16, 64, 64, 1, 4, 3), (32, 64, 64, 2, 4, 3)))
    monkeypatch.setattr(tune, "FP8_CANDIDATES", ((16, 128, 128, 1, 4, 3),))
    monkeypatch.setattr(tune, "buffer_sets", lambda *args, **kwargs: 2)
    monkeypatch.setattr(tune, "time_calls", lambda calls, config: time_eager_cpu(
        lambda: [c() for c in calls], repeats=1))
    monkeypatch.setattr(mb, "MODELS", {"tiny": TINY})
    out = tmp_path / "cpu.json"
    identity = argparse.Namespace(name="CPU test")
    monkeypatch.setattr(tune, "tune_target", lambda args: TuneTarget(identity, 0, "cpu", out))
    real_make = moe_inputs.make_inputs
    monkeypatch.setattr(moe_inputs, "make_inputs",
                        lambda model, t, count, hidden, device="cuda":
                        real_make(model, t, count, hidden, "cpu"))
    monkeypatch.setattr(mb, "make_weights", _cpu_weights(mb.make_weights))
    failing = tune._name(tune.BF16_CANDIDATES[1])
    real_entry = tune._entry

    def entry(rule, fp8, grouped):  # the second bf16 candidate breaks when it runs
        made = real_entry(rule, fp8, grouped)
        if rule == tune.BF16_CANDIDATES[1]:
            return _Exploding(made)
        return made

    monkeypatch.setattr(tune, "_entry", entry)
    # fused_moe on the CPU never reads the table: make the marked candidate's calls raise
    from fuseinfer.ops.moe import fused_moe as fused_moe_module
    from fuseinfer.ops.moe import moe_dispatch

    real_fused_moe = fused_moe_module.fused_moe

    def guarded(*args, **kwargs):
        if isinstance(moe_dispatch._forced_entry, _Exploding):
            raise RuntimeError("this candidate cannot run")
        return real_fused_moe(*args, **kwargs)

    monkeypatch.setattr(fused_moe_module, "fused_moe", guarded)
    log = tmp_path / "log.json"
    assert tune.tune_command(argparse.Namespace(models=None, output=out, log=log)) == 0
    written = json.loads(out.read_text())["ops"]["moe"]
    parsed = parse_dataclass(MoeDispatch, written, "moe")
    assert [r.block_m for r in parsed.rules] == [16]  # the failing candidate never wins
    assert parsed.rules[-1].max_tokens is None and parsed.fp8_rules[-1].max_tokens is None
    assert parsed.fp8_backend == "triton"  # no sm_90a GPU: the Triton path only
    assert parsed.source.startswith("tuned on CPU test")
    timings = json.loads(log.read_text())["timings"]
    assert any(t["candidate"] == failing and "error" in t for t in timings)
    assert all("us" in t or "error" in t for t in timings)


def _cpu_weights(make):
    return lambda model, quant, device="cuda": make(model, quant, "cpu")


class _Exploding:
    """Marks a candidate entry whose runs raise (see `guarded`)."""

    def __init__(self, entry):
        self._entry = entry

    def __getattr__(self, name):
        return getattr(self._entry, name)


@pytest.mark.parametrize("params", tune.BF16_CANDIDATES + tune.FP8_CANDIDATES)
def test_every_candidate_is_a_valid_rule(params):
    from fuseinfer.ops.moe.moe_dispatch import MoeLaunchRule

    MoeLaunchRule(None, *params).validate("candidate")


TINY_OSS = mb.MoeModel("tiny-oss", 8, 4, 160, 96, softmax_after_topk=True,
                       activation="clamped_swiglu", bias=True, mxfp4=True)


def test_tune_mxfp4_only_writes_the_mxfp4_rules(tmp_path, monkeypatch):
    from fuseinfer.ops.moe.moe_dispatch import MOE_BUILTIN, Mxfp4LaunchRule

    monkeypatch.setattr(tune, "BUCKETS", ((4, (2,)), (None, (9,))))
    monkeypatch.setattr(tune, "MXFP4_CANDIDATES", ((16, 32, 256, 1, 4, 4),
                                                   (32, 32, 64, 2, 4, 3)))
    monkeypatch.setattr(tune, "MXFP4_SPLIT_CANDIDATES", ((16, 32, 128, 1, 4, 4, True),))
    monkeypatch.setattr(tune, "buffer_sets", lambda *args, **kwargs: 2)
    timed: list[int] = []

    def host_timed(calls, config):
        timed.append(len(calls))
        return time_eager_cpu(lambda: [c() for c in calls], repeats=1)

    monkeypatch.setattr(tune, "time_calls", host_timed)
    monkeypatch.setattr(mb, "MODELS", {"tiny": TINY, "tiny-oss": TINY_OSS})
    out = tmp_path / "cpu.json"
    identity = argparse.Namespace(name="CPU test")
    monkeypatch.setattr(tune, "tune_target", lambda args: TuneTarget(identity, 0, "cpu", out))
    real_make = moe_inputs.make_inputs
    monkeypatch.setattr(moe_inputs, "make_inputs",
                        lambda model, t, count, hidden, device="cuda":
                        real_make(model, t, count, hidden, "cpu"))
    made: list[str | None] = []
    real_weights = mb.make_weights

    def weights(model, quant, device="cuda"):
        made.append(quant)
        return real_weights(model, quant, "cpu")

    monkeypatch.setattr(mb, "make_weights", weights)
    log = tmp_path / "log.json"
    args = argparse.Namespace(models=None, output=out, log=log, quant=["mxfp4"])
    assert tune.tune_command(args) == 0
    assert made == ["mxfp4"]  # only the mxfp4 model, only mxfp4 weights
    assert len(timed) == 3 * 2  # three candidates at two token counts, each checked first
    parsed = parse_dataclass(MoeDispatch, json.loads(out.read_text())["ops"]["moe"], "moe")
    assert parsed.rules == MOE_BUILTIN.rules and parsed.fp8_rules == MOE_BUILTIN.fp8_rules
    assert parsed.source == MOE_BUILTIN.source  # the untuned parts keep the present entry
    assert parsed.mxfp4_source.startswith("tuned on CPU test") and "mxfp4" in \
        parsed.mxfp4_source and "tiny-oss" in parsed.mxfp4_source
    assert all(isinstance(r, Mxfp4LaunchRule) for r in parsed.mxfp4_rules)
    assert {r.block_k for r in parsed.mxfp4_rules} <= {256, 64, 128}
    assert all(r.split_dot == (r.block_k == 128) for r in parsed.mxfp4_rules)
    assert parsed.mxfp4_rules[-1].max_tokens is None
    timings = json.loads(log.read_text())["timings"]
    assert {t["quant"] for t in timings} == {"mxfp4"} and all("us" in t for t in timings)


@pytest.mark.parametrize("params", tune.MXFP4_CANDIDATES + tune.MXFP4_SPLIT_CANDIDATES)
def test_every_mxfp4_candidate_is_a_valid_rule(params):
    from fuseinfer.ops.moe.moe_dispatch import Mxfp4LaunchRule

    rule = Mxfp4LaunchRule(None, *params)
    rule.validate("candidate")
    assert rule.split_dot == (len(params) > 6 and params[6])
    assert tune._name(params).endswith("_split") == rule.split_dot
