"""Penalties, logit bias and min_new_tokens: the batched device code against a per-row
Python reference, and the engine end to end against a reference decode loop (the
transformers model with the reference adjustments, and transformers' own repetition
penalty), with retraction and chunked prefill in the way."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from tiny_checkpoint import COMMON, save_tiny_checkpoint, tiny_model  # tests/ is on sys.path

from fuseinfer.runtime.engine import Engine, EngineArgs
from fuseinfer.runtime.logit_adjust import HistoryReset, LogitAdjustments, TokenHistory
from fuseinfer.runtime.sampling import InvalidSamplingParam, SamplingParams
from fuseinfer.runtime.step_output import FinishReason

VOCAB = 40


def reference_adjust(logits: list[float], prompt: list[int], output: list[int],
                     p: SamplingParams, eos: tuple[int, ...]) -> list[float]:
    """One row, element by element, in float64, as the parameters are documented."""
    counts = Counter(output)
    seen = set(prompt) | set(output)
    out = []
    for t, x in enumerate(logits):
        x += sum(b for i, b in p.logit_bias if i == t)
        if t in seen:
            x = x / p.repetition_penalty if x > 0 else x * p.repetition_penalty
        x -= p.frequency_penalty * counts[t] + p.presence_penalty * (counts[t] > 0)
        stops = set(p.stop_token_ids) | (set() if p.ignore_eos else set(eos))
        if len(output) < p.min_new_tokens and t in stops:
            x = float("-inf")
        out.append(x)
    return out


def random_params(rng: random.Random, max_new: int = 20) -> SamplingParams:
    kind = rng.randrange(5)
    return SamplingParams(
        max_new_tokens=max_new,
        presence_penalty=rng.uniform(-2, 2) if kind in (1, 4) else 0.0,
        frequency_penalty=rng.uniform(-2, 2) if kind in (1, 4) else 0.0,
        repetition_penalty=rng.uniform(0.5, 2.0) if kind in (2, 4) else 1.0,
        logit_bias=tuple((t, rng.uniform(-100, 100)) for t in rng.sample(range(VOCAB), 3))
        if kind in (3, 4) else (),
        min_new_tokens=rng.randrange(0, 8) if kind == 4 else 0,
        stop_token_ids=(rng.randrange(VOCAB),) if kind == 4 else ())


def test_adjustments_match_the_reference_row_by_row():
    rng = random.Random(0)
    rows = 9
    params = [random_params(rng) for _ in range(rows)]
    params[0] = SamplingParams()  # a row with no adjustment stays bit for bit
    prompts = [[rng.randrange(VOCAB) for _ in range(rng.randrange(1, 12))] for _ in range(rows)]
    outputs = [[rng.randrange(VOCAB) for _ in range(rng.randrange(0, 10))] for _ in range(rows)]
    eos = (3, 7)
    slots = rng.sample(range(1, 16), rows)
    history = TokenHistory(16, VOCAB, torch.device("cpu"))
    history.reset([HistoryReset(s, [9] * 5, [1, 1, 2]) for s in range(16)],  # stale rows
                  torch.tensor([1, 1, 2] * 16))
    # rebuild from the first half of each output, then add the rest one token per step
    pen = [i for i in range(rows) if params[i].penalized]
    half = [o[:len(o) // 2] for o in outputs]
    resets = [HistoryReset(slots[i], prompts[i] if params[i].repetition_penalty != 1.0
                           else [], half[i]) for i in pen]
    history.reset(resets, torch.tensor([t for r in resets for t in r.output],
                                       dtype=torch.int64))
    for k in range(max(len(o) for o in outputs)):
        grow = [i for i in pen if len(half[i]) <= k < len(outputs[i])]
        if grow:
            history.add(torch.tensor([slots[i] for i in grow]),
                        torch.tensor([outputs[i][k] for i in grow]))
    logits = torch.randn(rows, VOCAB) * 4
    masked = [tuple(sorted(set(p.stop_token_ids) | set(eos))) if len(o) < p.min_new_tokens
              else () for p, o in zip(params, outputs, strict=True)]
    adjust = LogitAdjustments.build(params, slots, masked, torch.device("cpu"))
    got = adjust.apply(logits, history)
    assert torch.equal(got[0], logits[0])
    for i in range(rows):
        want = torch.tensor(reference_adjust(logits[i].double().tolist(), prompts[i],
                                             outputs[i], params[i], eos), dtype=torch.float64)
        torch.testing.assert_close(got[i].double(), want, rtol=1e-5, atol=1e-4)
    assert any(torch.isinf(got[i]).any() for i in range(rows))  # min_new_tokens masked some


def test_no_adjustment_builds_nothing():
    assert LogitAdjustments.build([SamplingParams()] * 3, [1, 2, 3], [()] * 3,
                                  torch.device("cpu")) is None


@pytest.mark.parametrize("field, value", [
    ("presence_penalty", 2.5), ("frequency_penalty", -2.01), ("repetition_penalty", 0.0),
    ("repetition_penalty", float("nan")), ("min_new_tokens", 21), ("min_new_tokens", -1),
    ("logit_bias", ((3, 100.5),)), ("logit_bias", ((-1, 1.0),)),
    ("logit_bias", tuple((t, 1.0) for t in range(1025))),
])
def test_out_of_range_values_are_refused(field, value):
    with pytest.raises(InvalidSamplingParam) as err:
        SamplingParams(max_new_tokens=20, **{field: value}).validate()
    assert err.value.field == field


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3_adjust")
    hf = tiny_model("qwen3", tie=False, lm_head_scale=4.0)
    hf.config.eos_token_id = 7  # so that EOS, ignore_eos and min_new_tokens matter
    save_tiny_checkpoint(path, "qwen3", model=hf)
    return path, hf


def reference_generate(hf, prompt: list[int], p: SamplingParams, eos: tuple[int, ...]
                       ) -> list[int]:
    """Greedy decoding with the transformers model and the reference adjustments."""
    out: list[int] = []
    with torch.no_grad():
        while len(out) < p.max_new_tokens:
            logits = hf(torch.tensor([prompt + out])).logits[0, -1].double().tolist()
            scores = reference_adjust(logits, prompt, out, p, eos)
            token = max(range(len(scores)), key=scores.__getitem__)
            out.append(token)
            if len(out) > p.min_new_tokens and (token in p.stop_token_ids or
                                                (not p.ignore_eos and token in eos)):
                break
    return out


def _requests(seed: int, n: int) -> tuple[list[list[int]], list[SamplingParams]]:
    rng = random.Random(seed)
    prompts, params = [], []
    shared = [rng.randrange(COMMON["vocab_size"]) for _ in range(9)]  # radix cache hits
    for i in range(n):
        own = [rng.randrange(COMMON["vocab_size"]) for _ in range(rng.randrange(3, 20))]
        prompts.append(shared + own if i % 2 else own)
        bias = tuple((t, rng.choice([-100.0, 3.0, 5.0]))
                     for t in rng.sample(range(COMMON["vocab_size"]), 4))
        params.append(SamplingParams(
            max_new_tokens=12, temperature=0.0, ignore_eos=i % 3 != 0,
            presence_penalty=rng.choice([0.0, 1.5, -0.5]),
            frequency_penalty=rng.choice([0.0, 0.8, 2.0]),
            logit_bias=bias if i % 2 else (),
            min_new_tokens=rng.choice([0, 4]),
            stop_token_ids=(prompts[-1][0],) if i % 4 == 1 else ()))
    return prompts, params


@pytest.mark.parametrize("args", [
    dict(page_size=4),
    dict(page_size=4, chunked_prefill_size=5, max_prefill_tokens=8, disable_radix_cache=True),
    dict(page_size=4, max_total_tokens=48),  # retraction: histories are rebuilt
])
def test_engine_penalties_match_the_reference_decode(checkpoint, args):
    path, hf = checkpoint
    prompts, params = _requests(1, 8)
    engine = Engine(EngineArgs(model=str(path), device="cpu", max_running_requests=4, **args))
    eos = tuple(engine.config.eos_token_ids)
    assert eos == (7,)
    got = [engine.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
    gen = torch.Generator().manual_seed(3)
    while engine.busy:
        engine.step()
        _poison_free_slots(engine, gen)
    want = [reference_generate(hf, p, sp, eos) for p, sp in zip(prompts, params, strict=True)]
    assert [r.output for r in got] == want
    plain = engine.generate(prompts, SamplingParams(max_new_tokens=12, temperature=0.0,
                                                    ignore_eos=True))
    assert [o.output for o in plain] != want  # the adjustments changed something
    if "max_total_tokens" in args:
        assert sum(r.retractions for r in got) > 0


def _poison_free_slots(engine: Engine, gen: torch.Generator) -> None:
    """Garbage in the history of every slot no request holds: a request admitted again
    (after a retraction, maybe into another slot) must rebuild its own."""
    history = engine.runner.history
    if history.counts is None:
        return
    s = engine.scheduler
    held = {r.slot for r in s.running} | ({s.prefilling.slot} if s.prefilling else set())
    for slot in set(range(history.num_slots)) - held:
        history.counts[slot] = torch.randint(0, 5, (history.vocab_size,), generator=gen,
                                             dtype=torch.int32)
        history.in_prompt[slot] = torch.rand(history.vocab_size, generator=gen) < 0.5


def test_engine_repetition_penalty_matches_transformers(checkpoint):
    path, hf = checkpoint
    rng = random.Random(2)
    prompts = [[rng.randrange(COMMON["vocab_size"]) for _ in range(n)] for n in (5, 17, 9)]
    engine = Engine(EngineArgs(model=str(path), device="cpu", page_size=4))
    params = SamplingParams(max_new_tokens=16, temperature=0.0, ignore_eos=True,
                            repetition_penalty=1.8)
    outs = engine.generate(prompts, params)
    with torch.no_grad():
        for p, o in zip(prompts, outs, strict=True):
            ref = hf.generate(torch.tensor([p]), max_new_tokens=16, min_new_tokens=16,
                              do_sample=False, repetition_penalty=1.8)
            assert o.output == ref[0, len(p):].tolist()


def test_min_new_tokens_holds_off_eos(checkpoint):
    """A bias that makes EOS the greedy choice: the request ends right after
    min_new_tokens tokens, with EOS as its last."""
    path, _ = checkpoint
    engine = Engine(EngineArgs(model=str(path), device="cpu", page_size=4))
    (eos,) = engine.config.eos_token_ids
    for k in (0, 3, 7):
        params = SamplingParams(max_new_tokens=20, temperature=0.0, min_new_tokens=k,
                                logit_bias=((eos, 100.0),))
        out = engine.generate([[5, 9, 11, 2]], params)[0]
        assert out.finish_reason is FinishReason.STOP
        assert len(out.output) == k + 1 and out.output[-1] == eos
        assert eos not in out.output[:-1]


def test_token_ids_outside_the_vocabulary_are_rejected(checkpoint):
    path, _ = checkpoint
    engine = Engine(EngineArgs(model=str(path), device="cpu", page_size=4))
    for params in (SamplingParams(logit_bias=((COMMON["vocab_size"], 1.0),)),
                   SamplingParams(stop_token_ids=(COMMON["vocab_size"] + 5,))):
        req = engine.add_request([1, 2, 3], params)
        assert req.finish_reason is FinishReason.REJECTED
        assert "outside the vocabulary" in req.finish_detail
