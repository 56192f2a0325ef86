"""The engine in its own process, so the HTTP process stays responsive while it works.

Messages in (a multiprocessing queue): ("add", rid, prompt_ids, SamplingParams),
("abort", rid), ("freeze_gc",), ("stop",). Messages out: ("ready", info) once loaded, then
after each step one ("tokens", updates) for all requests with news, each update
(rid, new_token_ids, finish_reason or None, prompt_len, logprobs), and ("stats", dict)
twice a second. One message per step, not per request, keeps the queue's per-message
cost off the step loop. A rejected request comes back at once with no tokens and its
reason.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import traceback
from typing import Any


def engine_main(args: Any, inbox: mp.Queue, outbox: mp.Queue) -> None:
    """Child process entry point: build the engine, then serve the inbox."""
    try:
        from ..runtime.engine import Engine

        engine = Engine(args)
        engine.warmup()  # compile and freeze the GC before the first request, not during it
        outbox.put(("ready", {"max_context": engine.reqs.max_pages * args.page_size,
                              "eos": list(engine.config.eos_token_ids),
                              "vocab_size": engine.config.vocab_size}))
    except Exception:  # report why the server cannot start, then exit
        outbox.put(("failed", traceback.format_exc()))
        return
    live: dict[int, Any] = {}  # rid -> scheduler Request
    sent: dict[int, int] = {}  # rid -> tokens already sent
    last_stats = 0.0
    aborted = 0
    while True:
        timeout = 0.0 if engine.busy else 0.05
        try:
            msg = inbox.get(timeout=timeout) if timeout else inbox.get_nowait()
        except queue.Empty:
            msg = None
        while msg is not None:
            if msg[0] == "stop":
                return
            if msg[0] == "freeze_gc":
                from ..runtime.gc_control import freeze_after_warmup

                freeze_after_warmup()
            if msg[0] == "add":
                _, rid, prompt, params = msg
                req = engine.scheduler.new_request(prompt, params, engine.config.eos_token_ids)
                if req.finished:  # rejected
                    outbox.put(("tokens", [(rid, [], req.finish_reason, len(prompt), None)]))
                else:
                    live[rid], sent[rid] = req, 0
            elif msg[0] == "abort":
                req = live.pop(msg[1], None)
                if req is not None:
                    engine.scheduler.abort(req)
                    sent.pop(msg[1], None)
                    aborted += 1
            try:
                msg = inbox.get_nowait()
            except queue.Empty:
                msg = None
        if engine.busy:
            engine.step()
        updates = []
        for rid in list(live):
            req = live[rid]
            real = req.output
            n = sent[rid]  # placeholders of steps in flight sit at the tail only
            while n < len(real) and real[n] >= 0:
                n += 1
            if n > sent[rid] or req.finished:
                lps = req.logprobs[sent[rid]:n] if req.params.logprobs is not None else None
                updates.append((rid, real[sent[rid]:n], req.finish_reason, len(req.prompt),
                                lps))
                sent[rid] = n
            if req.finished:
                live.pop(rid)
                sent.pop(rid)
        if updates:
            outbox.put(("tokens", updates))
        now = time.monotonic()
        if now - last_stats > 0.5:
            last_stats = now
            s = engine.scheduler
            outbox.put(("stats", {"waiting": len(s.waiting), "running": len(s.running),
                                  "kv_usage": engine.kv.usage(), "aborted": aborted}))


def start_engine_process(args: Any) -> tuple[mp.Process, mp.Queue, mp.Queue, dict]:
    """Start the engine process and wait until it has loaded; raises with its traceback
    if it could not start."""
    ctx = mp.get_context("spawn")  # a fresh interpreter: CUDA must not be forked
    inbox, outbox = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=engine_main, args=(args, inbox, outbox), daemon=True,
                       name="fuseinfer-engine")
    proc.start()
    kind, info = outbox.get()
    if kind == "failed":
        proc.join(timeout=5)
        raise RuntimeError(f"the engine process failed to start:\n{info}")
    return proc, inbox, outbox, info
