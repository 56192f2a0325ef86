"""The HTTP process's side of the engine process: submit, abort, and each request's tokens
as an async iterator; and whether the engine is still there.

When the engine process dies (a bug, an OOM kill, a device error), a watcher thread
notices at once: every waiting request fails with HTTP 503, new requests get 503,
`health()` says 503, and after `EXIT_GRACE_S` (long enough for a health probe to see it)
the server is asked to stop (`on_engine_death`) and exits with `ENGINE_DIED_EXIT_CODE`, so
a supervisor restarts it. A server that does not stop by itself within `HARD_EXIT_S` more
is ended with that code regardless.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from ..runtime.sampling import SamplingParams
from ..runtime.step_output import FinishReason, TokenLogprob
from .engine_watch import describe_exit, watch_process
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
# entries). A plain tuple: one is built per request and step on the reader thread. The
# finish is an ApiError when the engine process died under the request.
StreamItem = tuple[list[int], Finish | ApiError | None, list[TokenLogprob]]

ENGINE_DIED_EXIT_CODE = 3
EXIT_GRACE_S = 1.0  # health says 503 this long before the server stops accepting
HARD_EXIT_S = 5.0  # then this long for a clean stop before the process is ended


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
        # Why the engine cannot serve (it died); None while it can.
        self.engine_error: str | None = None
        # Asked (from a thread) to stop the server once the engine died; the server's exit
        # status is then `exit_code`.
        self.on_engine_death: Callable[[], None] | None = None
        self.exit_code = 0
        self.exit_process: Callable[[int], None] = os._exit  # the last resort
        self.metrics.engine_pid = info.pid
        self._rid = itertools.count()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True, name="engine-reader")
        self._reader.start()
        if info.pid:
            watch_process(info.pid, self._engine_exited)

    def _read(self) -> None:
        while True:
            try:
                msg = self.outbox.get()
            except Exception as err:  # a message cut short: the engine died mid-write
                self.engine_failed(f"the engine process's messages could not be read "
                                   f"({err!r})")
                return
            if isinstance(msg, StepTokens):
                self._route(msg)
            elif isinstance(msg, Stats):
                self.stats = msg

    # ---- health --------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self.engine_error is None

    def health(self) -> tuple[int, dict]:
        """(HTTP status, body) for /health: 200 while the engine serves, else 503."""
        if self.engine_error is None:
            return 200, {"status": "ok"}
        return 503, {"status": "unavailable", "error": self.engine_error}

    def _engine_exited(self, code: int | None) -> None:
        # 0: it left its loop on a Stop; None: this process joined it already (shutdown)
        if code:
            self.engine_failed(f"the engine process died ({describe_exit(code)})")

    def engine_failed(self, why: str) -> None:
        """The engine cannot serve any more: fail every waiting request, refuse new ones,
        then stop the server with a non-zero exit code. Runs once, on a watcher thread."""
        reason = f"{why}; this server cannot serve and is exiting"
        with self._lock:
            if self.engine_error is not None:
                return
            self.engine_error = reason
            waiting = list(self.streams.values())
        self.metrics.engine_up = False
        print(f"fuseinfer serve: {reason}", file=sys.stderr, flush=True)
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for loop, stream in waiting:  # an error each: one raised in many tasks would
            # collect all their tracebacks
            error = ApiError(reason, status=503, kind="engine_unavailable")
            by_loop.setdefault(loop, []).append((stream, ([], error, [])))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that event loop has closed: nobody waits there
                pass
        time.sleep(EXIT_GRACE_S)
        self.exit_code = ENGINE_DIED_EXIT_CODE
        if self.on_engine_death is not None:
            try:
                self.on_engine_death()
            except Exception:
                traceback.print_exc()
        time.sleep(HARD_EXIT_S if self.on_engine_death is not None else 0.0)
        self.exit_process(ENGINE_DIED_EXIT_CODE)

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
            self._refuse_if_dead()
            self._refuse_if_full(len(self.streams), 1)
            self.streams[rid] = (asyncio.get_running_loop(), stream)
        self.inbox.put(AddRequest(rid, prompt, params))
        return rid, stream

    def check_capacity(self, n: int) -> None:
        """Refuse (HTTP 503) before a response starts if n more requests do not fit."""
        self._refuse_if_dead()
        with self._lock:
            busy = len(self.streams)
        self._refuse_if_full(busy, n)

    def _refuse_if_dead(self) -> None:
        if self.engine_error is not None:
            raise ApiError(self.engine_error, status=503, kind="engine_unavailable")

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
                if isinstance(finish, ApiError):  # the engine process died under it
                    raise finish
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
