"""Schedulers in a realistic state for the host benchmarks, built without a model: the
scheduler's steps are recorded with made-up tokens (the host bookkeeping is the same
whatever the tokens are).

`decoding(n, ...)` gives n running requests in the steady state of overlap scheduling:
every request has one token in flight (the step launched last, `DecodeLoop.in_flight`),
and `DecodeLoop.step()` is one decode step's host work as the engine does it: schedule the
next step, mark it launched, record the previous step's tokens.
"""

from __future__ import annotations

import contextlib
import gc
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from conventions import random_tokens  # tests/host_bench is on sys.path
from scheduler_steps import record_step  # tests/ is on sys.path

from fuseinfer.runtime.kv_pool import PageAllocator, ReqToTokenPool
from fuseinfer.runtime.radix_cache import RadixCache
from fuseinfer.runtime.sampling import SamplingParams
from fuseinfer.runtime.scheduler import ScheduledBatch, Scheduler, SchedulerConfig

PAGE = 64  # EngineArgs' default page size
PROMPT = (96, 224)  # prompt lengths drawn from this range
EOS = 2
# the sampling of a typical chat request; no stop fires while benchmarks run
PARAMS = SamplingParams(max_new_tokens=1536, temperature=0.7, top_p=0.9, ignore_eos=True)


def new_scheduler(n: int, tokens_per_request: int, req_pool: ReqToTokenPool | None = None,
                  **config) -> Scheduler:
    """A scheduler for up to n requests, with pages for `tokens_per_request` tokens each
    (no retraction while measuring) and a context that admits PARAMS' max_new_tokens."""
    max_pages = -(-max(tokens_per_request, PROMPT[1] + PARAMS.max_new_tokens) // PAGE)
    allocator = PageAllocator(n * -(-tokens_per_request // PAGE) + max_pages + 2)
    if req_pool is None:
        req_pool = ReqToTokenPool(n + 1, max_pages, "cpu")
    cfg = {"max_running_requests": max(n, 1), "max_prefill_tokens": 8192,
           "chunked_prefill_size": 4096, **config}
    return Scheduler(SchedulerConfig(**cfg), allocator, req_pool,
                     RadixCache(PAGE, allocator.free), PAGE)


def prefill_all(sched: Scheduler, rng: random.Random) -> None:
    """Run prefill steps (recording made-up tokens) until every request is running."""
    while sched.waiting or sched.prefilling is not None:
        batch = sched.schedule()
        assert batch is not None and batch.mode == "prefill"
        record_step(sched, batch, random_tokens(rng, sum(w.samples for w in batch.work)))


@dataclass
class DecodeLoop:
    sched: Scheduler
    in_flight: ScheduledBatch  # the step launched last, tokens not yet recorded
    tokens: list[int]  # what each step "samples" (one per request, never a stop)
    placeholders: list[int]

    def step(self, between: Callable[[ScheduledBatch], object] | None = None
             ) -> tuple[ScheduledBatch, list]:
        """One decode step: schedule, (`between`: the batch building, when given), mark
        it launched, record the previous step's tokens. Returns the batch and the deltas."""
        batch = self.sched.schedule()
        if between is not None:
            between(batch)
        n = len(batch)  # (a decode batch's work items are not built: len counts them)
        self.sched.launched(batch, self.placeholders[:n])
        deltas = self.sched.resolve(self.in_flight, self.tokens[:len(self.in_flight)])
        self.in_flight = batch
        return batch, deltas


def decoding(n: int, rng: random.Random, steps: int,
             req_pool: ReqToTokenPool | None = None) -> DecodeLoop:
    """n running requests, each with one token in flight; room for `steps` more decode
    steps."""
    sched = new_scheduler(n, PROMPT[1] + steps + 8, req_pool)
    for _ in range(n):
        sched.new_request(random_tokens(rng, rng.randrange(*PROMPT)), PARAMS, (EOS,))
    prefill_all(sched, rng)
    assert len(sched.running) == n
    batch = sched.schedule()
    assert batch is not None and batch.mode == "decode"
    placeholders = [-(1 + k) for k in range(n)]
    sched.launched(batch, placeholders)
    tokens = [t if t != EOS else EOS + 1 for t in random_tokens(rng, n)]
    return DecodeLoop(sched, batch, tokens, placeholders)


def decode_rounds(n: int) -> int:
    """Measured rounds of a decode step at n requests: more for small (fast) steps, at
    least 60 for the largest; bounded so the requests stay within their pages."""
    return max(60, min(1000, 64_000 // max(n, 1)))


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """What a serving engine does after warm-up (EngineArgs.gc_freeze, on for `serve`):
    the long-lived objects (requests, pools) move to the permanent generation, so a
    collection while measuring does not walk a heap the size of the batch."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
