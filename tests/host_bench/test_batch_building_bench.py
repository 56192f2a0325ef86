"""Batch building: a step's host inputs (`step_inputs`: ids, positions, KV slots,
lengths, page-table rows, sampling rows) and their device tensors as the model runner
builds them (`ModelRunner.forward_batch`: the page-table rows, the attention plan), plus
the sampling-params tensors (`SamplingBatch.build`), for a 256-request decode batch and a
mixed prefill batch. And the whole decode step's host work (scheduler bookkeeping + batch
building) at 1, 64, 256 and 1024 running requests, the issue's overlap targets. CPU
tensors; the model itself never runs."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conventions import random_tokens, tag  # tests/host_bench is on sys.path
from steady_state import EOS, PAGE, PARAMS, decode_rounds, decoding, frozen_heap, new_scheduler

from fuseinfer.runtime.engine_args import EngineArgs
from fuseinfer.runtime.host_inputs import step_inputs
from fuseinfer.runtime.model_runner import ModelRunner
from fuseinfer.runtime.sampling import SamplingBatch

MAX_RUNNING = 1024
# the whole decode step's host work: <= 0.4 ms at 256 requests, <= 1.5 ms at 1024
STEP_TARGET_US = {256: 400.0, 1024: 1500.0}


@pytest.fixture(scope="module")
def runner():
    """The bundled tiny model's runner on the CPU (random weights, a small KV cache: only
    its page table and attention planner are used)."""
    args = EngineArgs(model="tiny", device="cpu", load_format="dummy", page_size=PAGE,
                      max_running_requests=MAX_RUNNING, max_total_tokens=4 * PAGE)
    r = ModelRunner(args)
    yield r
    r.close()


@pytest.fixture
def req_pool(runner):
    """The runner's page table, every row handed back after the test."""
    pool = runner.req_pool
    yield pool
    for slot in list(pool.pages):
        pool.free(slot)


def build(runner, batch):
    """A step's host inputs and device tensors, as `ModelRunner.forward` builds them
    before the forward runs (the sampling tensors: the runner's `sampling_rows`, which
    reuses the previous step's while the rows are the same requests)."""
    inputs = step_inputs(batch, runner.req_pool, PAGE)
    fb = runner.forward_batch(inputs)
    sb = runner.sampling_rows(inputs, runner.config.vocab_size).batch
    return inputs, fb, sb, runner._put(inputs.steps)


def _decoding(runner, req_pool, rng, n, steps):
    return decoding(n, rng, steps, req_pool)


def test_decode_batch_256(benchmark, runner, req_pool, rng):
    n = 256
    loop = _decoding(runner, req_pool, rng, n, steps=4)
    batch = loop.sched.schedule()
    tag(benchmark, "batch.decode", requests=n)
    inputs, fb, sb, steps = benchmark(build, runner, batch)
    reqs = [w.req for w in batch.work]
    assert inputs.decode and inputs.samples_all and len(inputs.input_ids) == n
    assert inputs.input_ids == [r.token_slice(r.seq_len - 1, r.seq_len)[0] for r in reqs]
    assert all(t < 0 for t in inputs.input_ids)  # all in flight: read on the device
    assert inputs.positions == [r.seq_len - 1 for r in reqs]
    assert inputs.kv_lens == [r.seq_len for r in reqs]
    assert inputs.req_slots == [r.slot for r in reqs]
    pages = req_pool.pages
    assert inputs.cache_loc == [pages[r.slot][p // PAGE] * PAGE + p % PAGE
                                for r, p in zip(reqs, inputs.positions, strict=True)]
    assert fb.positions.tolist() == inputs.positions and fb.input_ids.shape == (n,)
    assert fb.plan.batch == n and fb.plan.kv_lens.tolist() == inputs.kv_lens
    row = fb.plan.page_table[7].tolist()
    assert row[:len(pages[reqs[7].slot])] == pages[reqs[7].slot]
    assert sb.temperature.shape == (n,) and not sb.all_greedy and sb.needs_filter
    assert steps.tolist() == [r.generated for r in reqs]


def test_mixed_prefill_batch(benchmark, runner, req_pool, rng):
    """A prefill step: the last chunk of a long prompt (its first chunk ran the step
    before) and 32 new prompts."""
    sched = new_scheduler(64, 2048, req_pool, chunked_prefill_size=1024)
    long = sched.new_request(random_tokens(rng, 1700), replace(PARAMS, max_new_tokens=256),
                             (EOS,))
    first = sched.schedule()
    sched.launched(first, [])  # its first 1024 tokens, no sample
    for _ in range(32):
        sched.new_request(random_tokens(rng, rng.randrange(64, 160)), PARAMS, (EOS,))
    batch = sched.schedule()
    tag(benchmark, "batch.prefill_mixed", requests=len(batch.work))
    inputs, fb, sb, steps = benchmark(build, runner, batch)
    assert batch.mode == "prefill" and batch.work[0].req is long
    assert not inputs.decode and inputs.q_lens[0] == 1700 - 1024
    assert len(inputs.input_ids) == sum(inputs.q_lens) == fb.plan.total_q
    assert inputs.positions[:3] == [1024, 1025, 1026]
    assert inputs.input_ids == [t for w in batch.work
                                for t in w.req.tokens[w.start:w.start + w.count]]
    assert inputs.logits_rows[-1] == len(inputs.input_ids) - 1
    assert sb.temperature.shape == (len(inputs.sample_rows),) and steps.tolist() == [0] * 33


def test_sampling_params_256(benchmark, rng):
    n = 256
    params = [PARAMS] * n
    seeds = random_tokens(rng, n)
    tag(benchmark, "batch.sampling_params", requests=n)
    sb = benchmark(SamplingBatch.build, params, 32_000, "cpu", seeds)
    assert sb.seed.tolist() == seeds and sb.top_p.shape == (n,) and sb.needs_filter


@pytest.mark.parametrize("n", (1, 64, 256, 1024))
def test_decode_step_host(benchmark, runner, req_pool, rng, n):
    """The whole decode step's host work, in the engine's order: schedule, build the
    batch, mark it launched, record the previous step's tokens."""
    rounds = decode_rounds(n)
    loop = _decoding(runner, req_pool, rng, n, steps=rounds + 2)
    built = []

    def build_step(batch):
        built[:] = build(runner, batch)

    tag(benchmark, "step.decode_host", requests=n, target_us=STEP_TARGET_US.get(n))
    with frozen_heap():
        batch, deltas = benchmark.pedantic(loop.step, (build_step,), rounds=rounds,
                                           iterations=1, warmup_rounds=1)
    inputs = built[0]
    assert len(batch.work) == len(deltas) == len(inputs.input_ids) == n
    assert inputs.positions == [w.start for w in batch.work]
    assert inputs.kv_lens == [w.req.cached for w in batch.work]  # launched: computed
