"""The scheduler's host work per step: one decode step's bookkeeping (schedule, launched,
resolve; overlap order) at 1, 64, 256 and 1024 running requests, and a prefill step
admitting 64 requests, the last one chunked, behind a cached system prompt."""

from __future__ import annotations

import pytest
from conventions import random_tokens, tag  # tests/host_bench is on sys.path
from steady_state import EOS, PAGE, PARAMS, decode_rounds, decoding, frozen_heap, new_scheduler

SIZES = (1, 64, 256, 1024)


@pytest.mark.parametrize("n", SIZES)
def test_decode_step_bookkeeping(benchmark, rng, n):
    rounds = decode_rounds(n)
    loop = decoding(n, rng, steps=rounds + 2)
    before = [r.seq_len for r in loop.sched.running]
    tag(benchmark, "scheduler.decode_step", requests=n)
    with frozen_heap():
        batch, deltas = benchmark.pedantic(loop.step, rounds=rounds, iterations=1,
                                           warmup_rounds=1)
    assert batch.mode == "decode" and len(batch.work) == n and len(deltas) == n
    steps = len(loop.sched.running[0].output) - 1  # decode tokens recorded (1: prefill's)
    assert steps >= 1 and all(w.count == 1 and w.samples for w in batch.work)
    for r, seq in zip(loop.sched.running, before, strict=True):
        assert r.seq_len == seq + steps and r.cached == r.seq_len - 1  # one in flight
        assert len(loop.sched.req_pool.pages[r.slot]) * PAGE >= r.cached
    assert [d.new_tokens for d in deltas] == [[t] for t in loop.tokens]

SYSTEM = 64  # tokens of the shared system prompt (one page), cached before the step
ADMITTED = 64


def _waiting_scheduler(rng):
    """64 waiting requests behind a cached system prompt: 63 short ones and one long
    one that the token budget chunks."""
    system = random_tokens(rng, SYSTEM)
    sched = new_scheduler(ADMITTED, 4800)
    pages = sched.allocator.alloc(SYSTEM // PAGE)
    sched.cache.insert(system, pages)
    for _ in range(ADMITTED - 1):
        sched.new_request(system + random_tokens(rng, rng.randrange(32, 160)), PARAMS, (EOS,))
    sched.new_request(system + random_tokens(rng, 3000), PARAMS, (EOS,))
    assert len(sched.waiting) == ADMITTED  # none rejected
    return sched


def test_prefill_step_admitting_64(benchmark, rng):
    tokens = random_tokens(rng, ADMITTED)
    placeholders = [-(1 + k) for k in range(ADMITTED)]

    def setup():
        return (_waiting_scheduler(rng),), {}

    def prefill_step(sched):
        batch = sched.schedule()
        samples = sum(w.samples for w in batch.work)
        sched.launched(batch, placeholders[:samples])
        return sched, batch, sched.resolve(batch, tokens[:samples])

    tag(benchmark, "scheduler.prefill_step", requests=ADMITTED)
    sched, batch, deltas = benchmark.pedantic(prefill_step, setup=setup, rounds=40,
                                              iterations=1)
    assert batch.mode == "prefill" and len(batch.work) == ADMITTED
    assert sum(w.count for w in batch.work) == sched.config.max_prefill_tokens
    assert all(w.start == SYSTEM for w in batch.work)  # the system prompt was reused
    assert all(w.samples for w in batch.work[:-1]) and not batch.work[-1].samples
    assert sched.prefilling is batch.work[-1].req and len(deltas) == ADMITTED - 1
    assert len(sched.running) == ADMITTED - 1
