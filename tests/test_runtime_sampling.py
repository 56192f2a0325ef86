"""Batched sampling on the CPU: greedy, the drawn distribution, top-k/top-p/min-p filters,
per-request seeds independent of batch composition, parameter validation (errors name the
field)."""

from __future__ import annotations

import pytest
import torch

from fuseinfer.runtime.sampling import (
    InvalidSamplingParam,
    SamplingBatch,
    SamplingParams,
    filter_logits,
    sample,
    uniform_noise,
)


def _batch(params, vocab, seeds=None):
    seeds = seeds if seeds is not None else list(range(len(params)))
    return SamplingBatch.build(params, vocab, "cpu", seeds)


def test_greedy_rows_take_the_argmax():
    logits = torch.randn(4, 50)
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.8),
              SamplingParams(top_k=1), SamplingParams(temperature=0.0, top_p=0.5)]
    got = sample(logits, _batch(params, 50), torch.zeros(4, dtype=torch.int64))
    want = logits.argmax(-1)
    assert got[0] == want[0] and got[2] == want[2] and got[3] == want[3]
    all_greedy = _batch([SamplingParams(temperature=0.0)] * 4, 50)
    assert all_greedy.all_greedy
    assert torch.equal(sample(logits, all_greedy, torch.zeros(4, dtype=torch.int64)), want)


def test_draws_follow_the_softmax():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    n = 20000
    batch = _batch([SamplingParams(temperature=0.7)] * n, 5, seeds=list(range(n)))
    got = sample(logits.expand(n, 5), batch, torch.zeros(n, dtype=torch.int64))
    freq = torch.bincount(got, minlength=5).float() / n
    torch.testing.assert_close(freq, (logits / 0.7).softmax(-1), atol=0.015, rtol=0)


def test_seeded_rows_do_not_depend_on_the_batch():
    vocab = 1000
    logits = torch.randn(3, vocab)
    p = SamplingParams(temperature=1.0, seed=1234)
    alone = sample(logits[1:2], _batch([p], vocab), torch.tensor([7]))
    mixed = sample(logits, _batch([SamplingParams(), p, SamplingParams(seed=9)], vocab),
                   torch.tensor([3, 7, 0]))
    assert mixed[1] == alone[0]
    steps = torch.arange(64)
    many = sample(logits[1:2].expand(64, vocab), _batch([p] * 64, vocab), steps)
    assert len(set(many.tolist())) > 20  # the step counter moves the noise


def test_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 3))
    params = [SamplingParams(top_k=2), SamplingParams(top_p=0.7), SamplingParams(min_p=0.5)]
    out = filter_logits(logits, _batch(params, 4))
    keep = torch.isfinite(out)
    assert keep.tolist() == [[True, True, False, False],   # top-2
                             [True, True, False, False],   # 0.5 + 0.3 crosses 0.7
                             [True, True, False, False]]   # p >= 0.5 * 0.5
    n = 2000
    batch = _batch([SamplingParams(top_k=2, temperature=1.5)] * n, 4, seeds=list(range(n)))
    drawn = sample(logits[:1].expand(n, 4), batch, torch.zeros(n, dtype=torch.int64))
    assert set(drawn.tolist()) == {0, 1}


def test_noise_is_uniform_and_deterministic():
    seed, step = torch.tensor([5, 6]), torch.tensor([0, 0])
    u = uniform_noise(seed, step, 50000)
    assert (u > 0).all() and (u < 1).all()
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    assert torch.equal(u, uniform_noise(seed, step, 50000))
    assert not torch.equal(u[0], u[1])


@pytest.mark.parametrize("bad, name", [
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(min_p=2.0), "min_p"),
    (dict(top_k=-2), "top_k"), (dict(logprobs=21), "logprobs"), (dict(logprobs=-1), "logprobs"),
])
def test_params_validation_names_the_field(bad, name):
    with pytest.raises(ValueError, match=name) as info:  # still a ValueError for callers
        SamplingParams(**bad).validate()
    err = info.value
    assert isinstance(err, InvalidSamplingParam) and err.field == name
    assert err.requirement in str(err) and repr(bad[name]) in str(err)


def test_params_at_the_edges_are_valid():
    for ok in (dict(max_new_tokens=1), dict(temperature=0.0), dict(top_k=-1), dict(top_k=0),
               dict(top_p=1.0), dict(min_p=0.0), dict(min_p=1.0), dict(logprobs=0),
               dict(logprobs=20)):
        SamplingParams(**ok).validate()


def test_gc_controls(caplog):
    import gc
    import logging

    from fuseinfer.runtime.gc_control import GcPauseMonitor, freeze_after_warmup, gc_disabled

    with gc_disabled():
        assert not gc.isenabled()
    assert gc.isenabled()
    with caplog.at_level(logging.WARNING, logger="fuseinfer.runtime"):
        with GcPauseMonitor(0.0) as monitor:
            gc.collect()
        assert monitor.pauses and "paused the engine" in caplog.text
        with GcPauseMonitor(60.0) as quiet:
            gc.collect()
        assert not quiet.pauses
    assert monitor._callback not in gc.callbacks
    try:
        assert freeze_after_warmup() > 0
    finally:
        gc.unfreeze()
