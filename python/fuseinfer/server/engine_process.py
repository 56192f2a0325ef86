"""The engine in its own process, so the HTTP process stays responsive while it works.

It reads `messages.ToEngine` from its inbox and answers on its outbox: `Ready` once
loaded (after a warm-up that compiles and freezes the GC), then after each step one
`StepTokens` with the step's deltas for every request (one message per step, not per
request, keeps the queue's per-message cost off the step loop), and `Stats` twice a
second. A request the engine rejects comes back at once, finished with
`FinishReason.REJECTED` and its reason.

Faults stay with the request that caused them: an exception while adding or aborting one
request fails that request alone (`FinishReason.ABORT` with the error, which the HTTP side
answers with a 500), and an exception from a step fails the requests the engine holds and
the loop carries on. Only an engine that keeps failing with nothing left to fail ends the
process, with a non-zero exit code, which the HTTP side notices at once.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

from ..runtime.engine_args import EngineArgs
from ..runtime.step_output import FinishReason, RequestDelta
from .messages import (
    AbortRequest,
    AddRequest,
    Failed,
    Finish,
    FreezeGc,
    FromEngine,
    Ready,
    Stats,
    StepTokens,
    Stop,
)

STATS_PERIOD_S = 0.5
# Consecutive failed steps after which the engine counts as wedged (a step that fails again
# once every request was failed): the process exits and the HTTP side reports it dead.
MAX_FAILED_STEPS = 3


def _log_error(what: str) -> None:
    print(f"fuseinfer engine: {what}\n{traceback.format_exc()}", file=sys.stderr, flush=True)


class EngineLoop:
    """The engine process's state: which engine request each HTTP request id is."""

    def __init__(self, engine: Any, outbox: Any) -> None:
        self.engine, self.outbox = engine, outbox
        self.live: dict[int, Any] = {}  # HTTP rid -> the engine's Request
        self.rid_of: dict[int, int] = {}  # engine rid -> HTTP rid
        self.aborted = 0
        self.retractions = 0  # of requests that have left the engine
        self.failed_steps = 0  # consecutive steps that raised

    def handle(self, msg: Any) -> bool:
        """Apply one inbox message; False when it says stop."""
        if isinstance(msg, AddRequest):
            self._add(msg)
        elif isinstance(msg, AbortRequest):
            req = self.live.pop(msg.rid, None)
            if req is not None:  # else it finished already: nothing to free
                self.rid_of.pop(req.rid, None)
                self.aborted += 1
                self._forget(req)
                try:
                    self.engine.abort(req)
                except Exception:  # its client is gone: nobody to tell, keep serving others
                    _log_error(f"aborting request {msg.rid} failed")
        elif isinstance(msg, FreezeGc):
            from ..runtime.gc_control import freeze_after_warmup

            freeze_after_warmup()
        elif isinstance(msg, Stop):
            return False
        return True

    def _add(self, msg: AddRequest) -> None:
        try:
            req = self.engine.add_request(msg.prompt, msg.params)
        except ValueError as err:  # parameters the HTTP process should have refused
            self.outbox.put(_finished(msg.rid, Finish(FinishReason.REJECTED, str(err))))
            return
        except Exception as err:  # a bug this request triggers: it fails, the others go on
            _log_error(f"adding request {msg.rid} failed")
            self.outbox.put(_finished(msg.rid, Finish(FinishReason.ABORT,
                                                      f"internal error: {err!r}")))
            return
        if req.finished:  # rejected: it never entered the engine
            self.outbox.put(_finished(msg.rid, Finish(req.finish_reason, req.finish_detail)))
            return
        self.live[msg.rid] = req
        self.rid_of[req.rid] = msg.rid

    def report(self, deltas: Sequence[RequestDelta]) -> None:
        """Send one step's deltas, under HTTP request ids; an aborted request's are dropped."""
        rids: list[int] = []
        tokens: list[list[int]] = []
        logprobs: list[list] = []
        finished: dict[int, Finish] = {}
        rid_of = self.rid_of
        for d in deltas:
            rid = rid_of.get(d.rid)
            if rid is None:
                continue
            rids.append(rid)
            tokens.append(d.new_tokens)
            logprobs.append(d.new_logprobs)
            if d.finish_reason is not None:
                finished[rid] = Finish(d.finish_reason, d.finish_detail)
                del rid_of[d.rid]
                self._forget(self.live.pop(rid))
        if rids:
            self.outbox.put(StepTokens(rids, tokens, logprobs, finished))

    def step(self) -> None:
        """One engine step, its deltas reported. A step that raises fails every request the
        engine holds (which of them the step touched is unknown) and frees them; raises when
        steps keep failing with nothing left to fail (the engine is wedged)."""
        try:
            deltas = self.engine.step()
        except Exception as err:
            self.failed_steps += 1
            _log_error("a step failed; failing the requests it may have touched")
            if self.failed_steps >= MAX_FAILED_STEPS and not self.live:
                raise
            self.fail_all(f"internal error in an engine step: {err!r}")
            return
        self.failed_steps = 0
        self.report(deltas)

    def fail_all(self, reason: str) -> None:
        """Finish every live request with ABORT and `reason`, freeing it in the engine."""
        if not self.live:
            return
        finish = Finish(FinishReason.ABORT, reason)
        rids = list(self.live)
        for req in self.live.values():
            self.engine.abort(req)  # raises when the engine is beyond repair: the process ends
            self._forget(req)
        self.live.clear()
        self.rid_of.clear()
        self.outbox.put(StepTokens(rids, [[] for _ in rids], [[] for _ in rids],
                                   dict.fromkeys(rids, finish)))

    def _forget(self, req: Any) -> None:
        # once per request, when it leaves: no per-step cost
        self.retractions += getattr(req, "retractions", 0)

    def stats(self) -> Stats:
        s = self.engine.stats()
        return Stats(s.waiting, s.running, s.kv_usage, self.aborted, self.retractions)


def _finished(rid: int, finish: Finish) -> StepTokens:
    return StepTokens([rid], [[]], [[]], {rid: finish})


def engine_main(args: EngineArgs, inbox: mp.Queue, outbox: mp.Queue) -> None:
    """Child process entry point: build the engine, then serve the inbox."""
    try:
        from ..runtime.engine import Engine

        engine = Engine(args)
        engine.warmup()  # compile and freeze the GC before the first request, not during it
        outbox.put(Ready(engine.max_context, tuple(engine.config.eos_token_ids),
                         engine.config.vocab_size, os.getpid()))
    except Exception:  # report why the server cannot start, then exit
        outbox.put(Failed(traceback.format_exc()))
        return
    loop = EngineLoop(engine, outbox)
    parent = mp.parent_process()
    last_stats = 0.0
    with engine:
        while True:
            try:  # an idle engine waits for work; a busy one only drains what is there
                msg = inbox.get_nowait() if engine.busy else inbox.get(timeout=0.05)
            except queue.Empty:
                msg = None
            while msg is not None:
                if not loop.handle(msg):
                    return
                try:
                    msg = inbox.get_nowait()
                except queue.Empty:
                    msg = None
            if engine.busy:
                loop.step()
            now = time.monotonic()
            if now - last_stats > STATS_PERIOD_S:
                last_stats = now
                if parent is not None and not parent.is_alive():
                    return  # the HTTP process died without a Stop (SIGKILL): nobody listens
                outbox.put(loop.stats())


def start_engine_process(args: EngineArgs) -> tuple[mp.Process, mp.Queue, mp.Queue, Ready]:
    """Start the engine process and wait until it has loaded; raises with its traceback
    if it could not start."""
    ctx = mp.get_context("spawn")  # a fresh interpreter: CUDA must not be forked
    inbox, outbox = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=engine_main, args=(args, inbox, outbox), daemon=True,
                       name="fuseinfer-engine")
    proc.start()
    first: FromEngine = outbox.get()
    if isinstance(first, Failed):
        proc.join(timeout=5)
        raise RuntimeError(f"the engine process failed to start:\n{first.error}")
    if not isinstance(first, Ready):
        raise RuntimeError(f"the engine process sent {type(first).__name__} before Ready")
    return proc, inbox, outbox, first
