"""The HTTP process's side of the engine process: submit, abort, and each request's tokens
as an async iterator."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..runtime.sampling import SamplingParams
from ..runtime.step_output import FinishReason, TokenLogprob
from .errors import ApiError
from .messages import (
    AbortRequest,
    AddRequest,
    Finish,
    FreezeGc,
    Ready,
    Stats,
    StepTokens,
)
from .metrics import ServerMetrics
from .openai_format import finish_error

# What a request's queue receives per step: (new tokens, its finish or None, their logprob
# entries). A plain tuple: one is built per request and step on the reader thread.
StreamItem = tuple[list[int], Finish | None, list[TokenLogprob]]


@dataclass(slots=True)
class Stream:
    """One request's tokens as the engine process reports them."""

    prompt_len: int
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


def _deliver(items: list[tuple[Stream, StreamItem]]) -> None:
    for stream, item in items:
        stream.queue.put_nowait(item)


class EngineClient:
    """Sends requests to the engine process; a reader thread routes its replies to the
    waiting request's asyncio queue, one event-loop wake-up per step."""

    def __init__(self, inbox: Any, outbox: Any, info: Ready) -> None:
        self.inbox, self.outbox, self.info = inbox, outbox, info
        self.streams: dict[int, tuple[asyncio.AbstractEventLoop, Stream]] = {}
        self.stats = Stats(waiting=0, running=0, kv_usage=0.0, aborted=0)
        self.metrics = ServerMetrics()
        self.capacity: int | None = None  # running + queued requests allowed; None: no cap
        self.timeout_s: float | None = None  # per-request limit; None: none
        self._rid = itertools.count()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True, name="engine-reader")
        self._reader.start()

    def _read(self) -> None:
        while True:
            msg = self.outbox.get()
            if isinstance(msg, StepTokens):
                self._route(msg)
            elif isinstance(msg, Stats):
                self.stats = msg

    def _route(self, msg: StepTokens) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        finished = msg.finished
        with self._lock:
            for rid, tokens, lps in zip(msg.rids, msg.new_tokens, msg.new_logprobs,
                                        strict=True):
                entry = self.streams.get(rid)
                if entry is not None:
                    item = (tokens, finished.get(rid) if finished else None, lps)
                    by_loop.setdefault(entry[0], []).append((entry[1], item))
        for loop, items in by_loop.items():  # one wake-up per loop and step
            loop.call_soon_threadsafe(_deliver, items)

    def submit(self, prompt: list[int], params: SamplingParams) -> tuple[int, Stream]:
        """Queue a request; ApiError 503 when `capacity` requests are already in flight."""
        rid = next(self._rid)
        stream = Stream(len(prompt))
        with self._lock:  # checked and registered at once: no two requests take one place
            self._refuse_if_full(len(self.streams), 1)
            self.streams[rid] = (asyncio.get_running_loop(), stream)
        self.inbox.put(AddRequest(rid, prompt, params))
        return rid, stream

    def check_capacity(self, n: int) -> None:
        """Refuse (HTTP 503) before a response starts if n more requests do not fit."""
        with self._lock:
            busy = len(self.streams)
        self._refuse_if_full(busy, n)

    def _refuse_if_full(self, busy: int, n: int) -> None:
        if self.capacity is not None and busy + n > self.capacity:
            raise ApiError(f"the server is at capacity ({self.capacity} requests running or "
                           "queued); retry later", status=503, kind="server_busy")

    def done(self, rid: int, aborted: bool) -> None:
        with self._lock:
            self.streams.pop(rid, None)
        if aborted:
            self.inbox.put(AbortRequest(rid))

    async def tokens(self, rid: int, stream: Stream
                     ) -> AsyncIterator[tuple[list[int], FinishReason | None,
                                              list[TokenLogprob]]]:
        """(new tokens, STOP or LENGTH when it finished else None, their logprob entries)
        until the request finishes. A rejected or engine-aborted request raises its
        ApiError; a consumer that stops early (a client gone) aborts the request."""
        finished = False
        m = self.metrics
        start = last = time.perf_counter()
        first = True
        deadline = None if self.timeout_s is None else start + self.timeout_s
        try:
            while True:
                try:
                    if deadline is None:  # the common case: no timer per token
                        tokens, finish, lps = await stream.queue.get()
                    else:
                        tokens, finish, lps = await asyncio.wait_for(
                            stream.queue.get(), max(deadline - time.perf_counter(), 0.0))
                except asyncio.TimeoutError:
                    raise ApiError(f"the request exceeded the {self.timeout_s:g} s request "
                                   "timeout and was aborted", status=504,
                                   kind="timeout") from None
                now = time.perf_counter()
                if tokens:
                    with m.lock:
                        (m.ttft if first else m.itl).observe(now - (start if first else last))
                        # tokens arriving together share the gap since the last arrival
                        for _ in tokens[1:]:
                            m.itl.observe(0.0)
                        m.generation_tokens += len(tokens)
                    first, last = False, now
                if finish is None:
                    yield tokens, None, lps
                    continue
                finished = True  # the engine is done with it: nothing to abort
                with m.lock:
                    m.e2e.observe(now - start)
                    m.requests += 1
                    m.prompt_tokens += stream.prompt_len
                error = finish_error(finish)
                if error is not None:
                    raise error
                yield tokens, finish.reason, lps
                return
        finally:
            self.done(rid, aborted=not finished)

    def freeze_gc(self) -> None:
        self.inbox.put(FreezeGc())
