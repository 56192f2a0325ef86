"""Penalties, logit bias and min_new_tokens on the GPU, with CUDA graphs and overlap
scheduling: every sampled token is the argmax of the per-row Python reference applied to
the step's own raw logits (captured as the model produced them), the histories survive
retraction and radix-cache hits, and launching a step never waits for the GPU."""

from __future__ import annotations

import random

import pytest
import torch
from scheduler_steps import run_launches_without_syncs  # tests/ is on sys.path
from test_runtime_logit_adjust import _requests, reference_adjust
from tiny_checkpoint import COMMON, save_tiny_checkpoint, tiny_model

from fuseinfer.runtime.engine import Engine, EngineArgs
from fuseinfer.runtime.logit_adjust import HistoryReset, LogitAdjustments, TokenHistory
from fuseinfer.runtime.sampling import SamplingParams

pytestmark = pytest.mark.gpu

TIE = 1e-2  # bf16 logits: a choice within this of the reference maximum is a tie


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3_adjust_gpu")
    hf = tiny_model("qwen3", tie=False, lm_head_scale=4.0)
    hf.config.eos_token_id = 7
    save_tiny_checkpoint(path, "qwen3", model=hf)
    return path


def test_device_adjustments_match_the_reference():
    rng = random.Random(4)
    vocab, rows = 1000, 12
    params = [SamplingParams(max_new_tokens=30, presence_penalty=rng.uniform(-2, 2),
                             frequency_penalty=rng.uniform(-2, 2),
                             repetition_penalty=rng.uniform(0.5, 3),
                             logit_bias=tuple((t, rng.uniform(-100, 100))
                                              for t in rng.sample(range(vocab), 5)),
                             min_new_tokens=rng.randrange(0, 10), stop_token_ids=(11,))
              for _ in range(rows)]
    prompts = [[rng.randrange(vocab) for _ in range(rng.randrange(1, 50))] for _ in params]
    outputs = [[rng.randrange(vocab) for _ in range(rng.randrange(0, 40))] for _ in params]
    slots = rng.sample(range(64), rows)
    cuda = torch.device("cuda")
    history = TokenHistory(64, vocab, cuda)
    resets = [HistoryReset(s, p, o) for s, p, o in zip(slots, prompts, outputs, strict=True)]
    history.reset(resets, torch.tensor([t for o in outputs for t in o], device=cuda))
    masked = [(7, 11) if len(o) < p.min_new_tokens else ()
              for p, o in zip(params, outputs, strict=True)]
    logits = torch.randn(rows, vocab, device=cuda, dtype=torch.bfloat16) * 5
    got = LogitAdjustments.build(params, slots, masked, cuda).apply(logits, history).cpu()
    for i in range(rows):
        want = reference_adjust(logits[i].double().tolist(), prompts[i], outputs[i],
                                params[i], (7,))
        torch.testing.assert_close(got[i].double(), torch.tensor(want, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-3)


def _capture_logits(engine: Engine) -> list[tuple[object, torch.Tensor]]:
    """Record each step's inputs and raw logits (cloned on the device, no sync)."""
    seen: list[tuple[object, torch.Tensor]] = []
    runner = engine.runner
    raw = runner.logits

    def logits(inputs):
        out = raw(inputs)
        seen.append((inputs, out.float().clone()))
        return out

    runner.logits = logits
    return seen


@pytest.mark.parametrize("args", [
    dict(),
    dict(disable_cuda_graph=True),
    dict(disable_overlap_schedule=True),
    dict(max_total_tokens=96, page_size=4),  # retraction
    dict(chunked_prefill_size=8, max_prefill_tokens=16),
])
def test_each_sampled_token_is_the_reference_choice(checkpoint, args):
    engine = Engine(EngineArgs(model=str(checkpoint), device="cuda", max_running_requests=6,
                               cuda_graph_max_bs=8, **({"max_total_tokens": 4096} | args)))
    eos = tuple(engine.config.eos_token_ids)
    prompts, params = _requests(11, 12)
    engine.generate(prompts[:2], params[0])  # warm-up
    seen = _capture_logits(engine)
    reqs = [engine.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
    by_rid = {r.rid: r for r in reqs}
    while engine.busy:
        engine.step()
    checked = 0
    for inputs, logits in seen:
        rows = logits[inputs.sample_rows].double().cpu()
        for i, rid in enumerate(inputs.rids):
            req = by_rid[rid]
            k = inputs.steps[i]
            if k >= len(req.output):  # sampled past the request's end (overlap)
                continue
            scores = reference_adjust(rows[i].tolist(), req.prompt, req.output[:k],
                                      req.params, eos)
            assert scores[req.output[k]] >= max(scores) - TIE, (rid, k)
            checked += 1
    assert checked == sum(len(r.output) for r in reqs)
    if "max_total_tokens" in args and args["max_total_tokens"] < 4096:
        assert sum(r.retractions for r in reqs) > 0


def test_adjusted_steps_never_wait_for_the_gpu(checkpoint):
    engine = Engine(EngineArgs(model=str(checkpoint), device="cuda", cuda_graph_max_bs=8,
                               max_total_tokens=4096))
    prompts, params = _requests(12, 6)
    engine.generate(prompts, params)  # warm-up: kernels, pinned pools, the history buffers
    reqs = [engine.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
    run_launches_without_syncs(engine)
    assert all(r.finished for r in reqs)
    assert COMMON["vocab_size"] == engine.config.vocab_size
