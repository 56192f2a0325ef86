"""The decode fast paths against the per-request code they replace, over random schedules.

A decode batch is two parallel lists (`ScheduledBatch.reqs` / `starts`), read directly by
`Scheduler.launched`, `Scheduler.resolve` and `step_inputs`; a batch built from a work list
takes the general per-work-item code. A reference scheduler (the previous decode loop,
building one `Work` per request, so every batch takes the general code) runs the same
workload next to the fast one: overlap scheduling, chunked prefill, radix reuse,
retraction under a small KV budget, min_new_tokens, stop ids and EOS, penalties,
logprobs, aborts. Every step's batch, host inputs and deltas, and every request's state,
must be identical. And the model runner's `sampling_rows`: reused only for the same
requests with the same params objects, equal to a fresh build.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from fuseinfer.runtime.host_inputs import step_inputs
from fuseinfer.runtime.kv_pool import PageAllocator, ReqToTokenPool
from fuseinfer.runtime.radix_cache import RadixCache
from fuseinfer.runtime.sampling import SamplingBatch, SamplingParams
from fuseinfer.runtime.scheduler import ScheduledBatch, Scheduler, SchedulerConfig, Work

VOCAB = 40
EOS = (3,)


class ReferenceScheduler(Scheduler):
    """The decode loop as it was: one Work per request (so launched, resolve and
    step_inputs take their general paths)."""

    def _schedule_decode(self) -> ScheduledBatch | None:
        while self.running:
            ps, table, work, short = self.page_size, self.req_pool.pages, [], False
            for r in self.running:
                generated = r.generated
                if generated >= r.params.max_new_tokens:
                    continue
                seq_len = len(r.prompt) + generated
                if seq_len > len(table[r.slot]) * ps and not self._grow(r, seq_len):
                    short = True
                elif not short:
                    work.append(Work(r, r.cached, 1, True))
            if not short:
                return ScheduledBatch("decode", work) if work else None
            self._retract(self.running[-1])
        return None


def _make(cls, pages: int, page_size: int, chunk: int) -> Scheduler:
    allocator = PageAllocator(pages)
    return cls(SchedulerConfig(max_running_requests=12, max_prefill_tokens=24,
                               chunked_prefill_size=chunk),
               allocator, ReqToTokenPool(13, 32, "cpu"),
               RadixCache(page_size, allocator.free), page_size)


def _params(rng: random.Random) -> SamplingParams:
    max_new = rng.randrange(1, 14)
    return SamplingParams(
        max_new_tokens=max_new, temperature=rng.choice([0.0, 0.7]),
        stop_token_ids=tuple(rng.sample(range(4, VOCAB), rng.randrange(0, 3))),
        ignore_eos=rng.random() < 0.3, min_new_tokens=rng.randrange(0, max_new + 1),
        presence_penalty=rng.choice([0.0, 0.0, 0.5]),
        repetition_penalty=rng.choice([1.0, 1.0, 1.2]),
        logprobs=rng.choice([None, None, 2]))


def _signature(batch: ScheduledBatch | None):
    if batch is None:
        return None
    return batch.mode, [(w.req.rid, w.start, w.count, w.samples) for w in batch.work]


def _state(sched: Scheduler):
    reqs = sorted({*sched.running, *sched.waiting,
                   *([sched.prefilling] if sched.prefilling else [])}, key=lambda r: r.rid)
    return ([r.rid for r in sched.running], [r.rid for r in sched.waiting],
            [(r.rid, r.output, r._in_flight, r.cached, r.slot, r.finish_reason,
              r.retractions, r.logprobs) for r in reqs],
            sorted(sched.req_pool.pages.items()), sched.allocator.available)


@pytest.mark.parametrize("seed", range(12))
def test_decode_fast_paths_match_the_per_request_code(seed):
    rng = random.Random(seed)
    page_size = rng.choice([1, 2, 4])
    pages = rng.randrange(14, 40) * (4 // page_size)
    chunk = rng.choice([0, 5, 8])
    fast = _make(Scheduler, pages, page_size, chunk)
    ref = _make(ReferenceScheduler, pages, page_size, chunk)
    prefix = [rng.randrange(4, VOCAB) for _ in range(8)]
    reqs: dict[int, tuple] = {}
    in_flight: tuple | None = None
    next_mark, decode_steps = 0, 0
    for step in range(160):
        if step < 100 and rng.random() < 0.3:  # arrivals, some sharing a prefix
            prompt = (prefix[:rng.randrange(0, 9)] +
                      [rng.randrange(4, VOCAB) for _ in range(rng.randrange(1, 14))])
            params = _params(rng)
            a = fast.new_request(prompt, params, EOS, VOCAB)
            b = ref.new_request(prompt, params, EOS, VOCAB)
            reqs[a.rid] = (a, b)
        if reqs and rng.random() < 0.03:  # an abort
            a, b = reqs[rng.choice(sorted(reqs))]
            if not a.finished:
                fast.abort(a)
                ref.abort(b)
        batch, rbatch = fast.schedule(), ref.schedule()
        assert _signature(batch) == _signature(rbatch)
        launched = None
        if batch is not None:
            if batch.mode == "decode":
                decode_steps += 1
                assert batch.reqs is not None and rbatch.reqs is None
            assert step_inputs(batch, fast.req_pool, page_size) == \
                step_inputs(rbatch, ref.req_pool, page_size)
            n = sum(w.samples for w in rbatch.work)
            marks = [-(1 + k) for k in range(next_mark, next_mark + n)]
            next_mark += n
            fast.launched(batch, marks)
            ref.launched(rbatch, marks)
            launched = (batch, rbatch, n)
        if in_flight is not None:  # overlap: the previous step's tokens come back now
            fb, rb, n = in_flight
            tokens = [rng.randrange(0, VOCAB) for _ in range(n)]
            lps = None
            if rng.random() < 0.5:
                lps = [rng.choice([None, (-0.5, [(t, -0.5)])]) for t in tokens]
            assert fast.resolve(fb, tokens, lps) == ref.resolve(rb, tokens, lps)
        in_flight = launched
        assert _state(fast) == _state(ref)
        if step >= 100 and not fast.has_work and in_flight is None:
            break
    assert decode_steps > 10
    for a, b in reqs.values():
        assert (a.output, a.finish_reason, a.logprobs) == (b.output, b.finish_reason,
                                                           b.logprobs)


def test_a_decode_batch_builds_its_work_items_on_demand():
    sched = _make(Scheduler, 40, 2, 0)
    reqs = [sched.new_request([5, 6, 7], SamplingParams(max_new_tokens=4)) for _ in range(3)]
    batch = sched.schedule()
    sched.launched(batch, [-1, -2, -3])
    batch = sched.schedule()
    assert batch.mode == "decode" and len(batch) == 3 and batch.starts == [3, 3, 3]
    assert [(w.req, w.start, w.count, w.samples) for w in batch.work] == \
        [(r, 3, 1, True) for r in reqs]
    assert len(ScheduledBatch("prefill", batch.work)) == 3
    with pytest.raises(ValueError):
        ScheduledBatch("decode")
    with pytest.raises(ValueError):
        sched.launched(batch, [-1])  # too few placeholders: nothing changes
    assert [r.cached for r in reqs] == [3, 3, 3]


def _rows(rids, params):
    return SimpleNamespace(rids=list(rids), sampling=list(params))


def test_sampling_rows_are_reused_only_for_the_same_requests_and_params():
    from fuseinfer.runtime.engine_args import EngineArgs
    from fuseinfer.runtime.model_runner import ModelRunner

    runner = ModelRunner(EngineArgs(model="tiny", device="cpu", load_format="dummy",
                                    max_total_tokens=64))
    try:
        vocab = runner.config.vocab_size
        hot = SamplingParams(temperature=0.7, top_p=0.9)
        seeded = SamplingParams(temperature=1.0, top_k=5, seed=11)
        greedy = SamplingParams(temperature=0.0, logprobs=3)
        first = runner.sampling_rows(_rows([1, 2], [hot, seeded]), vocab)
        assert runner.sampling_rows(_rows([1, 2], [hot, seeded]), vocab) is first
        equal = SamplingParams(temperature=0.7, top_p=0.9)  # equal, another object
        cases = [([1, 2], [equal, seeded]), ([2, 1], [seeded, hot]), ([1], [hot]),
                 ([1, 2, 3], [hot, seeded, greedy]), ([3], [greedy]), ([], [])]
        seed = runner.args.seed * 1_000_003
        for rids, params in cases:
            rows = runner.sampling_rows(_rows(rids, params), vocab)
            assert rows is not first and rows.rids == rids
            assert rows.greedy == all(p.greedy for p in params)
            assert rows.wants == tuple(p.logprobs for p in params)
            assert rows.adjusts == any(p.adjusts_logits for p in params)
            if rows.greedy:
                assert rows.batch is None
                continue
            ref = SamplingBatch.build(params, vocab, "cpu", [seed + r for r in rids])
            for name in ("temperature", "top_k", "top_p", "min_p", "seed"):
                assert torch.equal(getattr(rows.batch, name), getattr(ref, name))
            assert (rows.batch.needs_filter, rows.batch.all_greedy) == \
                (ref.needs_filter, ref.all_greedy)
        assert runner.sampling_rows(_rows([3], [greedy]), vocab + 1).batch is None
    finally:
        runner.close()
