"""FP8 KV-cache scales calibrated at load, on the CPU with a tiny checkpoint whose value
projections are scaled down 256x (and the output projections up 256x: the same function in
exact arithmetic), so its V heads hold values of order 0.005, the subnormal range of e4m3
under a scale of 1.0. Checked against transformers: the per-head maxima calibration saw,
the cache's stored peaks, and how far the chosen tokens' logprobs drift."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_checkpoint import save_small_v_checkpoint

from fuseinfer.runtime.engine import Engine, EngineArgs
from fuseinfer.runtime.kv_scale_calibration import (
    CALIBRATION_SEED,
    HEADROOM,
    calibration_prompt,
    scales_from_amax,
)
from fuseinfer.runtime.sampling import SamplingParams

V_SHRINK = 256.0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3-small-v")
    return path, save_small_v_checkpoint(path, V_SHRINK)


def _engine(path, scales):
    return Engine(EngineArgs(model=str(path), device="cpu", page_size=4,
                             kv_cache_dtype="fp8_e4m3", kv_cache_scales=scales))


def test_scales_from_amax_keeps_one_where_nothing_was_seen():
    got = scales_from_amax(torch.tensor([0.0, 2.24, math.nan, math.inf, 1e-38]))
    assert got.tolist() == pytest.approx([1.0, 2.24 * HEADROOM / 448, 1.0, 1.0, 1.0])


def test_calibration_sees_what_transformers_computes(checkpoint):
    path, model = checkpoint
    engine = _engine(path, "calibrate")
    runner = engine.runner
    report = runner.kv_scales
    n = report.tokens
    assert n == 256  # the calibration prompt fills the tiny model's whole context
    prompt = calibration_prompt(model.config.vocab_size, n, CALIBRATION_SEED)
    with torch.no_grad():
        cache = model(prompt[None, :], use_cache=True).past_key_values
    for layer in range(model.config.num_hidden_layers):
        keys, values = cache.layers[layer].keys[0], cache.layers[layer].values[0]
        want_k = keys.abs().amax(dim=(1, 2))  # [kv_heads]: after k_norm and RoPE
        want_v = values.abs().amax(dim=(1, 2))
        tol = 1e-4 if layer == 0 else 0.05  # later layers read an FP8 cache
        assert report.k_amax[layer] == pytest.approx(want_k.tolist(), rel=tol)
        assert report.v_amax[layer] == pytest.approx(want_v.tolist(), rel=tol)
        assert max(report.v_amax[layer]) < 0.1  # the values this checkpoint makes small
        # the prompt's stored values peak at 448 / HEADROOM in every head
        kv = runner.kv_cache
        for cache_t in (kv.k[layer], kv.v[layer]):
            stored = cache_t.flatten(0, 1)[4:4 + n].float()  # pages 1.. hold the prompt
            peaks = stored.abs().amax(dim=(0, 2))
            assert peaks.tolist() == pytest.approx([448 / HEADROOM] * peaks.numel(),
                                                   rel=0.07)


def _logprob_drift(engine, model, prompt):
    """Largest |engine - transformers| logprob of the tokens the engine chose."""
    req = engine.add_request(prompt, SamplingParams(max_new_tokens=12, temperature=0.0,
                                                    ignore_eos=True, logprobs=1))
    while engine.busy:
        engine.step()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + req.output])).logits[0]
    lp = logits.log_softmax(-1)[len(prompt) - 1:-1]
    return max(abs(chosen - lp[i, req.output[i]].item())
               for i, (chosen, _) in enumerate(req.logprobs))


def test_calibrated_scales_keep_small_values_that_a_unit_scale_loses(checkpoint):
    path, model = checkpoint
    gen = torch.Generator().manual_seed(11)
    prompt = torch.randint(0, model.config.vocab_size, (40,), generator=gen).tolist()
    calibrated = _logprob_drift(_engine(path, "calibrate"), model, prompt)
    unit = _logprob_drift(_engine(path, "one"), model, prompt)
    # e4m3's 3 mantissa bits alone cost ~0.08 here (the same checkpoint without the 256x
    # shrink drifts as much under either scale); a unit scale loses the small values
    assert calibrated < 0.15, calibrated
    assert unit > 4 * calibrated, (unit, calibrated)


def test_unit_scales_stay_one_and_bf16_caches_have_none(checkpoint):
    path, _ = checkpoint
    kv = _engine(path, "one").runner.kv_cache
    assert all(torch.equal(s, torch.ones(2)) for s in kv.k_scale + kv.v_scale)
    plain = Engine(EngineArgs(model=str(path), device="cpu", page_size=4)).runner
    assert plain.kv_scales is None and plain.kv_cache.k_scale[0] is None
