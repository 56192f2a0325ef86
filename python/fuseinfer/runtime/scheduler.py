"""Continuous-batching scheduler: admission, chunked prefill, prefix reuse, retraction.

Each step is either a prefill step (new requests, and the next chunk of a request being
prefilled in pieces, within a token budget) or a decode step (one token for every running
request). Prefill has priority: new requests join as soon as memory allows.

A request's KV covers its first `cached` tokens. A step computes `n` more tokens from
`cached` and, when they reach the end of the sequence, samples the next token. On
admission the radix cache supplies the longest page-aligned cached prefix (locked while
the request runs). When a decode step needs a page and none is free even after evicting
unlocked cache entries, the most recently admitted running requests are retracted: their
pages are freed and they wait again at the front of the queue, output so far kept, to be
prefilled again. A request that could never fit is rejected when it arrives.

Overlap scheduling launches step N+1 before step N's tokens are read back. A token still
in flight is a placeholder id kept privately by the request (the next step's inputs read
it on the device); `Request.output` only ever holds real tokens. `resolve` reports each
step as per-request deltas (`RequestDelta`).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from .kv_pool import PageAllocator, ReqToTokenPool
from .radix_cache import RadixCache
from .request import Request
from .sampling import SamplingParams, outside_vocabulary
from .step_output import FinishReason, RequestDelta, TokenLogprob

__all__ = ["Request", "ScheduledBatch", "Scheduler", "SchedulerConfig", "Work"]


# The new_logprobs of a delta whose request asked for none: one shared empty tuple (a
# delta is built per request per step).
_NO_LOGPROBS: tuple = ()

@dataclass(frozen=True)
class SchedulerConfig:
    max_running_requests: int = 256
    max_prefill_tokens: int = 8192  # token budget of one prefill step
    chunked_prefill_size: int = 4096  # a request's tokens per step; <= 0: no chunking
    policy: str = "fcfs"  # "fcfs" or "lpm" (longest cached prefix first)

    def validate(self) -> None:
        if self.policy not in ("fcfs", "lpm"):
            raise ValueError(f"policy must be fcfs or lpm, got {self.policy!r}")
        if self.max_running_requests < 1 or self.max_prefill_tokens < 1:
            raise ValueError("max_running_requests and max_prefill_tokens must be >= 1")


# Not frozen: one is built per running request per decode step, and a frozen dataclass's
# __init__ costs three times as much (~0.4 us more each, ~0.1 ms a step at batch 256).
# Read-only by convention.
@dataclass(slots=True)
class Work:
    req: Request
    start: int  # first position computed
    count: int  # tokens computed
    samples: bool  # the step reaches the end of the sequence: sample the next token


class ScheduledBatch:
    """A step's work: `mode` "prefill" or "decode", and `work`, its items in order.

    The scheduler's decode batches are kept as two parallel lists instead, `reqs` and
    `starts` (each request computes one token at its start position and samples): a
    decode step builds no per-request objects, and `launched`, `resolve` and
    `step_inputs` read the lists directly. Their `work` is built from them on first
    access. A batch built from a work list has `reqs` and `starts` None. Read-only by
    convention."""

    __slots__ = ("mode", "_work", "reqs", "starts")

    def __init__(self, mode: str, work: list[Work] | None = None, *,
                 reqs: list[Request] | None = None, starts: list[int] | None = None) -> None:
        if (work is None) == (reqs is None) or (reqs is None) != (starts is None):
            raise ValueError("a ScheduledBatch takes either work or reqs and starts")
        self.mode = mode
        self._work = work
        self.reqs = reqs
        self.starts = starts

    @property
    def work(self) -> list[Work]:
        if self._work is None:
            self._work = [Work(r, s, 1, True) for r, s in zip(self.reqs, self.starts,
                                                               strict=True)]
        return self._work

    def __len__(self) -> int:
        """Work items."""
        return len(self._work) if self._work is not None else len(self.reqs)

    def __repr__(self) -> str:
        return f"ScheduledBatch({self.mode!r}, {self.work!r})"


class Scheduler:
    def __init__(self, config: SchedulerConfig, allocator: PageAllocator,
                 req_pool: ReqToTokenPool, cache: RadixCache, page_size: int) -> None:
        config.validate()
        self.config = config
        self.allocator = allocator
        self.req_pool = req_pool
        self.cache = cache
        self.page_size = page_size
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.prefilling: Request | None = None  # admitted, prompt chunks still to come
        self._rid = itertools.count()

    # ---- arrival ------------------------------------------------------------------------
    def new_request(self, prompt: Sequence[int], params: SamplingParams,
                    eos_ids: Sequence[int] = (), vocab_size: int | None = None) -> Request:
        """Queue a request, or return it finished (REJECTED, with the reason) when it can
        never run. With vocab_size, ids outside [0, vocab_size) are refused: a negative id
        would read an in-flight token and a large one index past the embedding."""
        params.validate()
        req = Request(next(self._rid), list(prompt), params, tuple(eos_ids))
        limit = self.max_context
        total = len(req.prompt) + params.max_new_tokens
        pages = -(-total // self.page_size)
        if not req.prompt:
            detail = "empty prompt"
        elif vocab_size is not None and (bad := outside_vocabulary(
                vocab_size, req.prompt, params.stop_token_ids,
                [t for t, _ in params.logit_bias])):
            detail = bad
        elif total > limit:
            detail = (f"prompt ({len(req.prompt)}) + max_new_tokens ({params.max_new_tokens}) "
                      f"exceeds the context limit {limit}")
        elif pages > self.allocator.capacity:
            detail = f"needs {pages} KV pages, the pool holds {self.allocator.capacity}"
        else:
            self.waiting.append(req)
            return req
        req.finish_reason, req.finish_detail = FinishReason.REJECTED, detail
        return req

    @property
    def max_context(self) -> int:
        """Tokens per request at most (prompt + new tokens)."""
        return self.req_pool.max_pages * self.page_size

    def abort(self, req: Request) -> None:
        if req in self.waiting:
            self.waiting.remove(req)
        elif req in self.running or req is self.prefilling:
            self._release(req, keep_in_cache=False)
            if req is self.prefilling:
                self.prefilling = None
            else:
                self.running.remove(req)
        req.drop_in_flight()  # tokens of steps in flight are dropped
        req.finish_reason = req.finish_reason or FinishReason.ABORT

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.prefilling)

    # ---- memory -------------------------------------------------------------------------
    def _alloc_pages(self, n: int) -> list[int] | None:
        if n > self.allocator.available:
            self.cache.evict(n - self.allocator.available)
        return self.allocator.alloc(n)

    def _grow(self, req: Request, tokens: int) -> bool:
        """Give req pages for its first `tokens` tokens; False if memory is short."""
        assert req.slot is not None
        need = -(-tokens // self.page_size) - len(self.req_pool.pages[req.slot])
        if need <= 0:
            return True
        pages = self._alloc_pages(need)
        if pages is None:
            return False
        self.req_pool.append_pages(req.slot, pages)
        return True

    def _release(self, req: Request, keep_in_cache: bool) -> None:
        """Hand the request's pages back: full pages of computed tokens into the radix
        cache (keep_in_cache), the rest to the allocator; unlock its prefix; free its slot."""
        if req.slot is None:
            return
        pages = self.req_pool.pages[req.slot]
        kept = 0
        if keep_in_cache:  # computed tokens are known ones: in-flight ones are not cached
            kept = min(req.cached, len(req.prompt) + len(req.output)) // self.page_size
            self.cache.insert(req.tokens[:kept * self.page_size], pages[:kept])
        own = pages[max(kept, req.prefix_pages):]
        if own:
            self.allocator.free(own)
        if req.prefix_node is not None:
            self.cache.unlock(req.prefix_node)
        self.req_pool.free(req.slot)
        req.slot, req.prefix_node, req.prefix_pages, req.cached = None, None, 0, 0

    def _admit(self, req: Request) -> bool:
        slot = self.req_pool.alloc()
        if slot is None:
            return False
        match = self.cache.match_prefix(req.tokens[:req.seq_len - 1])
        req.slot = slot
        if match.tokens:
            self.cache.lock(match.node)
            req.prefix_node = match.node
            self.req_pool.append_pages(slot, match.pages)
        req.prefix_pages = len(match.pages)
        req.cached = req.cached_at_admission = match.tokens
        return True

    # ---- scheduling ---------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch | None:
        batch = self._schedule_prefill()
        if batch is not None:
            return batch
        return self._schedule_decode()

    def _order_waiting(self) -> None:
        if self.config.policy == "lpm" and len(self.waiting) > 1:
            def matched(r: Request) -> int:
                return self.cache.match_prefix(r.tokens[:r.seq_len - 1]).tokens
            # retracted requests keep their place at the front
            self.waiting = deque(sorted(self.waiting, key=lambda r: (-r.retractions,
                                                                     -matched(r))))

    def _chunk(self, req: Request, budget: int) -> int:
        remaining = req.seq_len - req.cached
        n = min(remaining, budget)
        if self.config.chunked_prefill_size > 0:
            n = min(n, self.config.chunked_prefill_size)
        return n

    def _schedule_prefill(self) -> ScheduledBatch | None:
        budget = self.config.max_prefill_tokens
        work: list[Work] = []
        if self.prefilling is not None:
            req = self.prefilling
            n = self._chunk(req, budget)
            if not self._grow(req, req.cached + n):
                return None  # memory short: decode (which may retract) makes room
            work.append(Work(req, req.cached, n, req.cached + n == req.seq_len))
            budget -= n
        self._order_waiting()
        partial = bool(work) and not work[-1].samples  # one request is prefilled in pieces
        while self.waiting and budget > 0 and not partial:
            if len(self.running) + len(work) >= self.config.max_running_requests:
                break
            req = self.waiting[0]
            if not self._admit(req):
                break
            n = self._chunk(req, budget)
            if not self._grow(req, req.cached + n):
                self._release(req, keep_in_cache=False)
                break
            self.waiting.popleft()
            work.append(Work(req, req.cached, n, req.cached + n == req.seq_len))
            budget -= n
            partial = not work[-1].samples
        if not work:
            return None
        return ScheduledBatch("prefill", work)

    def _schedule_decode(self) -> ScheduledBatch | None:
        while self.running:
            # One pass, the work as two parallel lists (no object per request). A request
            # with all its tokens launched only waits for them (overlap scheduling); one
            # whose pages already hold its next token needs no _grow; every request is
            # grown, even past one that came up short.
            ps, table, short = self.page_size, self.req_pool.pages, False
            reqs: list[Request] = []
            starts: list[int] = []
            for r in self.running:
                generated = len(r.output) + len(r._in_flight)  # r.generated, inlined
                if generated >= r.params.max_new_tokens:
                    continue
                seq_len = len(r.prompt) + generated
                if seq_len > len(table[r.slot]) * ps and not self._grow(r, seq_len):
                    short = True
                elif not short:
                    reqs.append(r)
                    starts.append(r.cached)
            if not short:
                return ScheduledBatch("decode", reqs=reqs, starts=starts) if reqs else None
            self._retract(self.running[-1])
        return None

    def _retract(self, req: Request) -> None:
        self.running.remove(req)
        self._release(req, keep_in_cache=True)
        req.retractions += 1
        self.waiting.appendleft(req)

    # ---- results ------------------------------------------------------------------------
    def launched(self, batch: ScheduledBatch, placeholders: Sequence[int]) -> None:
        """The step is running: advance each request's KV and note a placeholder (a
        negative id) for each token it will sample, so the next step can be scheduled
        before the tokens are known (overlap scheduling)."""
        if batch.reqs is not None:
            self._launched_decode(batch.reqs, batch.starts, placeholders)
            return
        marks = iter(placeholders)
        for w in batch.work:
            req = w.req
            req.cached = w.start + w.count
            if not w.samples:  # a chunk in the middle of the prompt
                self.prefilling = req
                continue
            if req is self.prefilling:
                self.prefilling = None
            req.in_flight(int(next(marks)))
            if batch.mode != "decode" and req not in self.running and not req.finished:
                self.running.append(req)  # a decode batch is all running requests

    def resolve(self, batch: ScheduledBatch, next_tokens: Sequence[int],
                logprobs: Sequence[TokenLogprob | None] | None = None
                ) -> list[RequestDelta]:
        """Append the step's sampled tokens in place of their placeholders and apply the
        stop rules; returns one delta per request that got a token. A request that
        finished at an earlier step (overlap ran one more step for it) ignores its token."""
        if batch.reqs is not None:
            return self._resolve_decode(batch.reqs, next_tokens, logprobs)
        deltas = []
        sampled = iter(next_tokens)
        entries = iter(logprobs) if logprobs is not None else None
        for w in batch.work:
            if not w.samples:
                continue
            req, token = w.req, int(next(sampled))
            entry = next(entries) if entries is not None else None
            if req.finished:
                continue
            req.arrived(token, entry)
            new_lp = [entry] if entry is not None else _NO_LOGPROBS
            if self._stops(req, token, len(req.output)):
                self._finish(req)
            deltas.append(RequestDelta(req.rid, [token], new_lp, req.finish_reason))
        return deltas

    # ---- decode batches (reqs and starts): what launched and resolve do for their work,
    # with the per-request calls inlined (a step has up to max_running_requests of them)
    def _launched_decode(self, reqs: list[Request], starts: list[int],
                         placeholders: Sequence[int]) -> None:
        if len(placeholders) < len(reqs):
            raise ValueError(f"{len(placeholders)} placeholders for {len(reqs)} tokens")
        for req, start, mark in zip(reqs, starts, placeholders, strict=False):
            req.cached = start + 1
            if req is self.prefilling:
                self.prefilling = None
            req._in_flight.append(int(mark))  # req.in_flight(mark)

    def _resolve_decode(self, reqs: list[Request], next_tokens: Sequence[int],
                        logprobs: Sequence[TokenLogprob | None] | None
                        ) -> list[RequestDelta]:
        if len(next_tokens) < len(reqs) or (logprobs is not None
                                            and len(logprobs) < len(reqs)):
            raise ValueError(f"{len(next_tokens)} tokens for {len(reqs)} requests")
        deltas = []
        append = deltas.append
        entries = logprobs if logprobs is not None else itertools.repeat(None)
        for req, token, entry in zip(reqs, next_tokens, entries, strict=False):
            token = int(token)
            if req.finish_reason is not None:  # finished at an earlier step
                continue
            # req.arrived(token, entry), inlined
            in_flight = req._in_flight
            assert in_flight, "a resolved step found no placeholder for its token"
            del in_flight[0]
            output = req.output
            output.append(token)
            if entry is None:
                new_lp = _NO_LOGPROBS
            else:
                req.logprobs.append(entry)
                new_lp = [entry]
            # whether _stops would stop it, inlined (most tokens stop nothing); _stops then
            # sets the reason
            p = req.params
            produced = len(output)
            if (produced > p.min_new_tokens or produced >= p.max_new_tokens) \
                    and (produced >= p.max_new_tokens or token in p.stop_token_ids
                         or (not p.ignore_eos and token in req.eos_ids)) \
                    and self._stops(req, token, produced):
                self._finish(req)
            append(RequestDelta(req.rid, [token], new_lp, req.finish_reason))
        return deltas

    def _finish(self, req: Request) -> None:
        """A request that just stopped leaves the queues and frees its slot (its KV stays
        in the cache)."""
        req.drop_in_flight()  # placeholders of steps scheduled past the stop
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:  # retracted while its token was in flight
            self.waiting.remove(req)
        self._release(req, keep_in_cache=True)

    def _stops(self, req: Request, token: int, produced: int) -> bool:
        p = req.params
        if produced <= p.min_new_tokens and produced < p.max_new_tokens:
            return False  # the sampler masks EOS and stop ids until then
        if not p.ignore_eos and token in req.eos_ids:
            req.finish_reason = FinishReason.STOP
        elif token in p.stop_token_ids:
            req.finish_reason = FinishReason.STOP
        elif produced >= p.max_new_tokens:
            req.finish_reason = FinishReason.LENGTH
        return req.finish_reason is not None

