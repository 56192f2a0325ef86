"""The scheduler on the CPU with a stand-in model whose next token is a function of the
whole sequence: continuous batching, chunked prefill, prefix reuse, lpm ordering,
retraction under a tiny KV budget (no request lost, same outputs), rejection, stops."""

from __future__ import annotations

import random

import pytest
from scheduler_steps import record_step  # tests/ is on sys.path

from fuseinfer.runtime.kv_pool import PageAllocator, ReqToTokenPool
from fuseinfer.runtime.radix_cache import RadixCache
from fuseinfer.runtime.sampling import SamplingParams
from fuseinfer.runtime.scheduler import Scheduler, SchedulerConfig
from fuseinfer.runtime.step_output import FinishReason

VOCAB = 50


def next_token(seq: list[int]) -> int:
    return (sum(t * (i + 1) for i, t in enumerate(seq)) * 7 + len(seq)) % VOCAB


def make(pages=200, page_size=4, max_pages=64, slots=16, disable_cache=False, **cfg):
    allocator = PageAllocator(pages)
    cache = RadixCache(page_size, allocator.free, disable=disable_cache)
    sched = Scheduler(SchedulerConfig(**cfg), allocator, ReqToTokenPool(slots, max_pages, "cpu"),
                      cache, page_size)
    return sched


def run(sched, max_steps=10_000, on_step=None):
    """Drive the scheduler with the stand-in model, checking the KV invariants each step.
    Returns the steps taken."""
    steps = []
    while sched.has_work and len(steps) < max_steps:
        batch = sched.schedule()
        assert batch is not None, "work left but nothing schedulable"
        tokens = []
        for w in batch.work:
            r = w.req
            assert w.start == r.cached and w.start + w.count <= r.seq_len
            assert len(sched.req_pool.pages[r.slot]) * sched.page_size >= w.start + w.count
            if w.samples:
                tokens.append(next_token(r.tokens))
        steps.append(batch)
        record_step(sched, batch, tokens)
        if on_step:
            on_step(sched)
        used = sched.allocator.capacity - sched.allocator.available
        assert used >= sched.cache.cached_pages
    return steps


def expected(prompt, n, eos=()):
    seq, out = list(prompt), []
    for _ in range(n):
        t = next_token(seq)
        out.append(t)
        seq.append(t)
        if t in eos:
            break
    return out


def test_continuous_batching_and_outputs():
    sched = make()
    rng = random.Random(1)
    reqs = [sched.new_request([rng.randrange(VOCAB) for _ in range(rng.randrange(1, 30))],
                              SamplingParams(max_new_tokens=rng.randrange(1, 20),
                                             ignore_eos=True)) for _ in range(5)]
    late = []

    def arrive(s):
        if len(late) < 3 and s.running:  # requests arriving while others decode
            late.append(s.new_request([1, 2, 3, len(late)], SamplingParams(max_new_tokens=5)))

    steps = run(sched, on_step=arrive)
    for r in reqs + late:
        assert r.finish_reason is FinishReason.LENGTH
        assert r.output == expected(r.prompt, r.params.max_new_tokens)
    assert any(b.mode == "prefill" for b in steps[2:])  # late arrivals joined mid-run
    assert sched.allocator.available + sched.cache.cached_pages == sched.allocator.capacity
    assert sched.req_pool.available == 16


def test_chunked_prefill_splits_long_prompts():
    sched = make(chunked_prefill_size=8, max_prefill_tokens=12)
    long = sched.new_request(list(range(30)), SamplingParams(max_new_tokens=3))
    short = sched.new_request([5, 6], SamplingParams(max_new_tokens=3))
    steps = run(sched)
    chunks = [w.count for b in steps for w in b.work if w.req is long and b.mode == "prefill"]
    assert chunks == [8, 8, 8, 6]
    assert all(sum(w.count for w in b.work) <= 12 for b in steps)
    assert long.output == expected(long.prompt, 3) and short.output == expected([5, 6], 3)


def test_prefix_reuse_skips_cached_pages():
    sched = make()
    first = sched.new_request(list(range(20)), SamplingParams(max_new_tokens=2))
    run(sched)
    again = sched.new_request(list(range(20)) + [7, 7], SamplingParams(max_new_tokens=2))
    steps = run(sched)
    assert again.cached_at_admission == 20  # 5 full pages of 4 from the first request
    assert steps[0].work[0].count == 2
    assert again.output == expected(again.prompt, 2) and first.output == expected(first.prompt, 2)
    off = make(disable_cache=True)
    off.new_request(list(range(20)), SamplingParams(max_new_tokens=2))
    run(off)
    r = off.new_request(list(range(20)) + [7, 7], SamplingParams(max_new_tokens=2))
    run(off)
    assert r.cached_at_admission == 0


def test_lpm_admits_the_longest_cached_prefix_first():
    sched = make(policy="lpm", max_running_requests=1)
    run_first = sched.new_request(list(range(16)), SamplingParams(max_new_tokens=1))
    run(sched)
    a = sched.new_request([9] * 16, SamplingParams(max_new_tokens=1))
    b = sched.new_request(list(range(16)) + [1], SamplingParams(max_new_tokens=1))
    batch = sched.schedule()
    assert [w.req for w in batch.work] == [b] and run_first.finished and not a.finished


def test_retraction_under_a_tiny_kv_budget_loses_nothing():
    # 12 usable pages of 4 tokens: 8 requests of up to 40 tokens cannot all stay resident.
    sched = make(pages=13, page_size=4, max_pages=16)
    rng = random.Random(3)
    reqs = [sched.new_request([rng.randrange(VOCAB) for _ in range(rng.randrange(2, 12))],
                              SamplingParams(max_new_tokens=rng.randrange(10, 28),
                                             ignore_eos=True)) for _ in range(8)]
    run(sched)
    assert sum(r.retractions for r in reqs) > 0
    for r in reqs:
        assert r.finish_reason is FinishReason.LENGTH
        assert r.output == expected(r.prompt, r.params.max_new_tokens)


def test_rejections_and_stops():
    sched = make(pages=5, page_size=4, max_pages=8)
    too_long = sched.new_request(list(range(30)), SamplingParams(max_new_tokens=10))
    too_big = sched.new_request(list(range(10)), SamplingParams(max_new_tokens=10))
    empty = sched.new_request([], SamplingParams())
    for r in (too_long, too_big, empty):
        assert r.finish_reason is FinishReason.REJECTED and r.finished and r.output == []
    assert too_long.finish_detail.startswith("prompt (30) + max_new_tokens (10)")
    assert too_big.finish_detail == "needs 5 KV pages, the pool holds 4"
    assert empty.finish_detail == "empty prompt" and not sched.has_work
    prompt = [3, 1]
    first = expected(prompt, 1)[0]
    stop = sched.new_request(prompt, SamplingParams(max_new_tokens=5), eos_ids=(first,))
    ignored = sched.new_request(prompt, SamplingParams(max_new_tokens=3, ignore_eos=True),
                                eos_ids=(first,))
    by_id = sched.new_request(prompt, SamplingParams(max_new_tokens=5, stop_token_ids=(first,)))
    run(sched)
    assert stop.finish_reason is FinishReason.STOP and stop.output == [first]
    assert ignored.finish_reason is FinishReason.LENGTH and len(ignored.output) == 3
    assert by_id.finish_reason is FinishReason.STOP


def test_abort_frees_everything():
    sched = make()
    r = sched.new_request(list(range(10)), SamplingParams(max_new_tokens=50))
    record_step(sched, sched.schedule(), [1])
    assert r in sched.running
    sched.abort(r)
    assert r.finish_reason is FinishReason.ABORT and not sched.has_work
    assert sched.allocator.available == sched.allocator.capacity


def test_bad_policy():
    with pytest.raises(ValueError, match="policy"):
        make(policy="random")


def test_token_slice_matches_the_sequence():
    from fuseinfer.runtime.scheduler import Request

    r = Request(0, [1, 2, 3], SamplingParams(), output=[4, 5])
    for a in range(6):
        for b in range(a, 6):
            assert r.token_slice(a, b) == r.tokens[a:b]


def run_overlapped(sched, reqs):
    """Drive the scheduler as the overlap loop does: step N+1 is launched before step N's
    tokens are resolved. The stand-in device reads in-flight tokens from a future buffer
    (placeholder -> token), as the engine's sampler does. Checks after every step that no
    placeholder shows in any output or delta; returns the deltas per request."""
    future: dict[int, int] = {}
    marks = iter(range(-1, -10**9, -1))
    deltas: dict[int, list] = {r.rid: [] for r in reqs}
    in_flight = None
    while sched.has_work or in_flight is not None:
        batch = sched.schedule()
        launched = None
        if batch is not None:
            tokens, placeholders = [], []
            for w in batch.work:
                if w.samples:
                    seq = [future.get(t, t) for t in w.req.token_slice(0, w.req.seq_len)]
                    assert all(t >= 0 for t in seq)
                    placeholders.append(next(marks))
                    tokens.append(next_token(seq))
                    future[placeholders[-1]] = tokens[-1]
            sched.launched(batch, placeholders)
            launched = (batch, tokens)
        if in_flight is not None:
            for d in sched.resolve(*in_flight):
                assert all(t >= 0 for t in d.new_tokens)
                deltas[d.rid].append(d)
        in_flight = launched
        for r in reqs:
            assert all(t >= 0 for t in r.output) and all(t >= 0 for t in r.tokens)
    return deltas


@pytest.mark.parametrize("pages", [200, 13])  # 13: retraction with tokens in flight
def test_overlapped_steps_report_real_tokens_only(pages):
    rng = random.Random(5)
    prompts = [[rng.randrange(VOCAB) for _ in range(rng.randrange(2, 12))] for _ in range(8)]
    lengths = [rng.randrange(3, 25) for _ in prompts]
    stops = [expected(p, n)[n // 2] for p, n in zip(prompts, lengths, strict=True)]
    sched = make(pages=pages, page_size=4, max_pages=16)
    reqs = [sched.new_request(p, SamplingParams(max_new_tokens=n, stop_token_ids=(s,)))
            for p, n, s in zip(prompts, lengths, stops, strict=True)]
    deltas = run_overlapped(sched, reqs)
    if pages == 13:
        assert sum(r.retractions for r in reqs) > 0
    for r, n, s in zip(reqs, lengths, stops, strict=True):
        want = expected(r.prompt, n, eos=(s,))
        assert r.output == want
        got = deltas[r.rid]
        assert [t for d in got for t in d.new_tokens] == want
        assert all(not d.finished for d in got[:-1])
        assert got[-1].finish_reason is r.finish_reason
        assert r.finish_reason is (FinishReason.STOP if want[-1] == s else FinishReason.LENGTH)
    assert sched.allocator.available + sched.cache.cached_pages == sched.allocator.capacity


def test_abort_with_a_token_in_flight_drops_it():
    sched = make()
    r = sched.new_request(list(range(6)), SamplingParams(max_new_tokens=9))
    first = sched.schedule()
    sched.launched(first, [-1])
    second = sched.schedule()  # decode on the in-flight token
    sched.launched(second, [-2])
    assert r.output == [] and r.seq_len == 8 and r.token_slice(6, 8) == [-1, -2]
    assert [d.new_tokens for d in sched.resolve(first, [4])] == [[4]]
    sched.abort(r)
    assert sched.resolve(second, [7]) == [] and r.output == [4]
    assert r.finish_reason is FinishReason.ABORT and r.seq_len == 7
