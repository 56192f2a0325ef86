"""The engine-process messages: every kind survives a real multiprocessing queue, and the
engine loop turns the engine's deltas into per-step messages under the HTTP process's
request ids (a fake engine stands in for the real one: these tests are about the loop)."""

from __future__ import annotations

import multiprocessing as mp
import random
from dataclasses import dataclass, field
from types import SimpleNamespace

from engine_stand_ins import StandInRequest  # tests/ is on sys.path

from fuseinfer.runtime.sampling import SamplingParams
from fuseinfer.runtime.step_output import FinishReason, RequestDelta
from fuseinfer.server.engine_process import EngineLoop
from fuseinfer.server.messages import (
    AbortRequest,
    AddRequest,
    Failed,
    Finish,
    FreezeGc,
    Ready,
    Stats,
    StepTokens,
    Stop,
)


def _random_messages(rng: random.Random) -> list:
    rids = rng.sample(range(1000), 5)
    tokens = [[rng.randrange(50000) for _ in range(rng.randrange(0, 4))] for _ in rids]
    lps = [[(-rng.random(), [(rng.randrange(50000), -rng.random())]) for _ in t]
           for t in tokens]
    return [
        AddRequest(rng.randrange(1000), [rng.randrange(50000) for _ in range(7)],
                   SamplingParams(max_new_tokens=rng.randrange(1, 99), temperature=rng.random(),
                                  seed=rng.randrange(2**40), stop_token_ids=(3, 4),
                                  logprobs=2)),
        AbortRequest(rng.randrange(1000)), FreezeGc(), Stop(),
        Ready(rng.randrange(1, 9999), (2, rng.randrange(100)), rng.randrange(1, 10**6)),
        Failed("Traceback ...\nValueError: nope"),
        StepTokens(rids, tokens, lps, {rids[0]: Finish(FinishReason.STOP),
                                       rids[1]: Finish(FinishReason.REJECTED, "too long")}),
        Stats(rng.randrange(9), rng.randrange(9), rng.random(), rng.randrange(9)),
    ]


def test_every_message_survives_a_process_queue():
    msgs = _random_messages(random.Random(7))
    q = mp.get_context("spawn").Queue()
    for m in msgs:
        q.put(m)
    got = [q.get(timeout=10) for _ in msgs]
    assert got == msgs and [type(g) for g in got] == [type(m) for m in msgs]
    finish = got[6].finished
    assert all(type(f.reason) is FinishReason for f in finish.values())
    q.close()


@dataclass
class _FakeEngine:
    """add_request rejects empty prompts; engine rids are not the HTTP rids."""

    next_rid: int = 100
    aborted: list[int] = field(default_factory=list)

    def add_request(self, prompt, params):
        params.validate()
        self.next_rid += 3
        if not prompt:
            return StandInRequest(self.next_rid, FinishReason.REJECTED, "empty prompt")
        return StandInRequest(self.next_rid)

    def abort(self, req):
        self.aborted.append(req.rid)

    def stats(self):
        return SimpleNamespace(waiting=4, running=5, kv_usage=0.25)  # EngineStats' fields


class _Outbox(list):
    def put(self, msg) -> None:
        self.append(msg)


def test_engine_loop_routes_deltas_under_http_rids():
    engine, out = _FakeEngine(), _Outbox()
    loop = EngineLoop(engine, out)
    params = SamplingParams(max_new_tokens=4)
    for rid in (11, 12, 13):
        assert loop.handle(AddRequest(rid, [1, 2, 3], params))
    engine_rid = {http: eng for eng, http in loop.rid_of.items()}
    assert sorted(engine_rid) == [11, 12, 13] and all(e > 100 for e in engine_rid.values())
    assert out == []  # nothing to say until a step reports

    deltas = [RequestDelta(engine_rid[12], [7, 8], [(-0.5, [])] * 2),
              RequestDelta(engine_rid[11], [9], [], FinishReason.LENGTH),
              RequestDelta(9999, [5], [])]  # a request this loop does not know: dropped
    loop.report(deltas)
    (msg,) = out
    assert msg == StepTokens([12, 11], [[7, 8], [9]], [[(-0.5, [])] * 2, []],
                             {11: Finish(FinishReason.LENGTH)})
    assert 11 not in loop.live and engine_rid[11] not in loop.rid_of  # finished: forgotten

    assert loop.handle(AbortRequest(13))
    assert engine.aborted == [engine_rid[13]]
    assert loop.handle(AbortRequest(11))  # finished already: nothing to abort
    assert engine.aborted == [engine_rid[13]]
    out.clear()
    loop.report([RequestDelta(engine_rid[13], [4], [], FinishReason.ABORT)])
    assert out == []  # an aborted request's late delta does not reach the HTTP process
    loop.report([])
    assert out == []  # a step with no news sends nothing

    assert loop.stats() == Stats(4, 5, 0.25, aborted=1)
    assert not loop.handle(Stop())


def test_engine_loop_reports_rejections_at_once():
    engine, out = _FakeEngine(), _Outbox()
    loop = EngineLoop(engine, out)
    loop.handle(AddRequest(5, [], SamplingParams()))
    loop.handle(AddRequest(6, [1], SamplingParams(top_p=0.0)))  # the engine's ValueError
    assert out[0] == StepTokens([5], [[]], [[]],
                                {5: Finish(FinishReason.REJECTED, "empty prompt")})
    (rejected,) = out[1].finished.values()
    assert out[1].rids == [6] and rejected.reason is FinishReason.REJECTED
    assert "top_p" in rejected.detail
    assert loop.live == {} and loop.rid_of == {}


def test_freeze_gc_freezes_the_engine_process(monkeypatch):
    import fuseinfer.runtime.gc_control as gc_control

    calls = []
    monkeypatch.setattr(gc_control, "freeze_after_warmup", lambda: calls.append(1))
    assert EngineLoop(_FakeEngine(), _Outbox()).handle(FreezeGc())  # and keeps running
    assert calls == [1]
