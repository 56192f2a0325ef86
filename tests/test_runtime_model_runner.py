"""The model runner's public API on the CPU (tiny random checkpoint): a step's host inputs,
forward and the launch/resolve pair, in-flight tokens read from the future buffer, and the
parallel state it is built over."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from scheduler_steps import record_step  # tests/ is on sys.path
from tiny_checkpoint import COMMON, save_tiny_checkpoint  # tests/ is on sys.path

from fuseinfer.distributed.parallel_state import SINGLE_RANK, ParallelState
from fuseinfer.runtime.engine import Engine, EngineArgs
from fuseinfer.runtime.model_runner import ModelRunner
from fuseinfer.runtime.sampling import SamplingParams


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3")
    save_tiny_checkpoint(path, "qwen3")
    with Engine(EngineArgs(model=str(path), device="cpu", page_size=4,
                           chunked_prefill_size=6)) as eng:
        yield eng


def _prompt(n: int) -> list[int]:
    return torch.randint(0, COMMON["vocab_size"], (n,)).tolist()


def test_step_inputs_of_a_chunked_prefill(engine):
    """A short prompt and the first chunk of a long one: only the short one samples;
    positions, KV slots and lengths follow each request's pages."""
    short, long = _prompt(3), _prompt(9)
    reqs = [engine.add_request(short, SamplingParams(max_new_tokens=2, temperature=0.5)),
            engine.add_request(long, SamplingParams(max_new_tokens=2))]
    batch = engine.scheduler.schedule()
    inputs = engine.inputs_for(batch)
    assert not inputs.decode and inputs.input_ids == short + long[:6]
    assert inputs.positions == list(range(3)) + list(range(6))
    assert inputs.q_lens == [3, 6] and inputs.kv_lens == [3, 6] and inputs.logits_rows == [2, 8]
    assert inputs.sample_rows == [0] and not inputs.samples_all
    assert inputs.rids == [reqs[0].rid] and inputs.steps == [0]
    assert inputs.req_slots == [reqs[0].slot, reqs[1].slot]
    pages = engine.reqs.pages[reqs[1].slot]
    assert inputs.cache_loc[3:] == [pages[p // 4] * 4 + p % 4 for p in range(6)]
    out = engine.runner.forward(inputs)
    assert out.tokens.shape == (1,) and out.logprobs is None and out.wants == (None,)
    record_step(engine.scheduler, batch, out.tokens.tolist())
    assert reqs[0].output == out.tokens.tolist() and reqs[1].output == []
    for r in reqs:
        engine.abort(r)


def test_launch_resolve_reads_tokens_in_flight_from_the_future_buffer(engine):
    """Step N+1 launched on step N's placeholder gives the same token as running the two
    steps one after the other with the real token."""
    prompt = _prompt(5)
    params = SamplingParams(max_new_tokens=3, temperature=0.0, ignore_eos=True, logprobs=2)
    sequential = replace(engine.args, disable_overlap_schedule=True)
    with Engine(sequential) as plain:  # the reference: each step waits for the last
        want = plain.generate([prompt], params)[0]
    req = engine.add_request(prompt, params)
    runner, sched = engine.runner, engine.scheduler
    first = sched.schedule()
    step1 = runner.launch(engine.inputs_for(first))
    sched.launched(first, step1.placeholders)
    second = sched.schedule()
    inputs2 = engine.inputs_for(second)
    assert inputs2.decode and inputs2.input_ids == step1.placeholders  # read on the device
    assert all(t < 0 for t in inputs2.input_ids) and req.output == []
    step2 = runner.launch(inputs2)
    sched.launched(second, step2.placeholders)
    results = [runner.resolve(step1), runner.resolve(step2)]
    assert [r.tokens[0] for r in results] == want.output[:2]
    # the greedy steps stored their tokens in the future buffer themselves (greedy_sample)
    slots = [-1 - s.placeholders[0] for s in (step1, step2)]
    assert runner._future[slots].tolist() == want.output[:2]
    for batch, res in zip((first, second), results, strict=True):
        (chosen, top), = res.logprobs
        assert top[0][0] == res.tokens[0] and len(top) == 2 and chosen == top[0][1]
        sched.resolve(batch, res.tokens, res.logprobs)
    assert req.output == want.output[:2]
    engine.abort(req)


def test_parallel_state_checks_itself_and_a_rank_builds_its_shard(monkeypatch):
    assert SINGLE_RANK.is_single and SINGLE_RANK.is_first and SINGLE_RANK.group is None
    with pytest.raises(ValueError, match="ParallelState.rank"):
        ParallelState(rank=2, world_size=2, group=object())
    with pytest.raises(ValueError, match="ParallelState.group"):
        ParallelState(rank=0, world_size=2)
    with pytest.raises(ValueError, match="ParallelState.world_size"):
        ParallelState(world_size=0)
    two = ParallelState(rank=1, world_size=2, group=object())
    assert not two.is_first and not two.is_single
    with pytest.raises(ValueError, match="runs on rank 0"):
        Engine(EngineArgs(model="tiny", device="cpu"), two)
    # a runner builds its rank's shard: half the heads, its kv heads in the cache (the
    # group is a stand-in: the KV budget agreement is the one collective at build time)
    import fuseinfer.runtime.model_runner as model_runner

    monkeypatch.setattr(model_runner, "min_over_ranks", lambda value, parallel, device: value)
    runner = ModelRunner(EngineArgs(model="tiny", device="cpu", load_format="dummy"), two)
    full = runner.config
    assert runner.model.config.num_heads == full.num_heads // 2
    assert runner.kv_cache.k[0].shape[-2] == max(1, full.num_kv_heads // 2)
    assert runner.model.weights.embed.shape[0] == -(-full.vocab_size // 2)
