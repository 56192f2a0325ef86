"""Fault isolation and honest health.

Without a server: the engine loop over a stand-in engine that raises (a request that
breaks add_request, a step that raises, an abort that raises, an engine that stays
broken), and the engine client over a real child process that dies.
With a server (the tiny model on the CPU, 127.0.0.1): SIGKILL the engine process under
load; health stops saying ok within 2 s, every in-flight request ends with an error
within 5 s, a new request gets 503 and the server exits non-zero.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
from engine_stand_ins import StandInRequest  # tests/ is on sys.path
from test_server import start_server, stop_server

from fuseinfer.runtime.sampling import SamplingParams
from fuseinfer.runtime.step_output import FinishReason, RequestDelta
from fuseinfer.server import engine_client as engine_client_module
from fuseinfer.server.engine_client import ENGINE_DIED_EXIT_CODE, EngineClient
from fuseinfer.server.engine_process import MAX_FAILED_STEPS, EngineLoop
from fuseinfer.server.engine_watch import describe_exit, wait_for_exit
from fuseinfer.server.errors import ApiError
from fuseinfer.server.messages import AbortRequest, AddRequest, Ready, StepTokens

POISON = 666  # a prompt starting with this id makes the stand-in engine raise


@dataclass
class _FaultyEngine:
    next_rid: int = 0
    fail_steps: int = 0  # the next this many steps raise
    fail_abort: bool = False
    aborted: list[int] = field(default_factory=list)
    running: list[StandInRequest] = field(default_factory=list)

    def add_request(self, prompt, params):
        if prompt[0] == POISON:
            raise RuntimeError("index out of range in the embedding")
        self.next_rid += 1
        req = StandInRequest(self.next_rid)
        self.running.append(req)
        return req

    def step(self):
        if self.fail_steps:
            self.fail_steps -= 1
            raise RuntimeError("device-side failure")
        return [RequestDelta(r.rid, [r.rid * 10], []) for r in self.running]

    def abort(self, req):
        if self.fail_abort:
            raise RuntimeError("abort broke")
        self.aborted.append(req.rid)
        self.running.remove(req)


class _Outbox(list):
    def put(self, msg) -> None:
        self.append(msg)


def _finishes(out: _Outbox) -> dict:
    return {rid: f for msg in out for rid, f in msg.finished.items()}


def test_a_request_that_breaks_add_request_fails_alone():
    engine, out = _FaultyEngine(), _Outbox()
    loop = EngineLoop(engine, out)
    rids = random.Random().sample(range(1000), 3)
    loop.handle(AddRequest(rids[0], [1, 2], SamplingParams()))
    loop.handle(AddRequest(rids[1], [POISON, 2], SamplingParams()))
    loop.handle(AddRequest(rids[2], [3], SamplingParams()))
    (bad,) = _finishes(out).items()
    assert bad[0] == rids[1] and bad[1].reason is FinishReason.ABORT
    assert "internal error" in bad[1].detail and "embedding" in bad[1].detail
    out.clear()
    loop.step()  # the other two carry on
    (msg,) = out
    assert sorted(msg.rids) == sorted([rids[0], rids[2]]) and msg.finished == {}


def test_a_failed_step_fails_the_live_requests_and_the_loop_carries_on():
    engine, out = _FaultyEngine(fail_steps=1), _Outbox()
    loop = EngineLoop(engine, out)
    for rid in (5, 6):
        loop.handle(AddRequest(rid, [1], SamplingParams()))
    loop.step()
    finishes = _finishes(out)
    assert sorted(finishes) == [5, 6]
    assert all(f.reason is FinishReason.ABORT and "device-side failure" in f.detail
               for f in finishes.values())
    assert sorted(engine.aborted) == [1, 2] and loop.live == {} and loop.rid_of == {}
    out.clear()
    loop.handle(AddRequest(7, [1], SamplingParams()))  # a new request is served normally
    loop.step()
    assert out == [StepTokens([7], [[30]], [[]], {})]


def test_an_engine_that_stays_broken_ends_the_process():
    engine, out = _FaultyEngine(fail_steps=100), _Outbox()
    loop = EngineLoop(engine, out)
    loop.handle(AddRequest(1, [1], SamplingParams()))
    for _ in range(MAX_FAILED_STEPS - 1):
        loop.step()
    with pytest.raises(RuntimeError, match="device-side"):
        loop.step()
    assert list(_finishes(out)) == [1]


def test_an_abort_that_raises_does_not_stop_the_loop():
    engine, out = _FaultyEngine(), _Outbox()
    loop = EngineLoop(engine, out)
    loop.handle(AddRequest(1, [1], SamplingParams()))
    loop.handle(AddRequest(2, [1], SamplingParams()))
    engine.fail_abort = True
    assert loop.handle(AbortRequest(1))
    assert 1 not in loop.live and loop.aborted == 1
    engine.fail_abort = False
    loop.step()
    assert 2 in out[-1].rids and 1 not in out[-1].rids


def test_wait_for_exit_reports_the_exit_code_and_the_signal():
    code = random.randrange(1, 100)
    child = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"])
    assert wait_for_exit(child.pid) == code
    assert child.wait() == code  # still waitable: the watcher does not reap it
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child.kill()
    assert wait_for_exit(child.pid) == -signal.SIGKILL
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    child.wait()
    assert wait_for_exit(child.pid) is None  # reaped: nothing left to watch


def _client_over(child: subprocess.Popen, monkeypatch) -> tuple[EngineClient, list, list]:
    import queue

    monkeypatch.setattr(engine_client_module, "EXIT_GRACE_S", 0.05)
    monkeypatch.setattr(engine_client_module, "HARD_EXIT_S", 0.05)
    stopped, exited = [], []
    client = EngineClient(queue.Queue(), queue.Queue(), Ready(64, (1,), 100, child.pid))
    client.on_engine_death = lambda: stopped.append(True)
    client.exit_process = exited.append  # never os._exit the test run
    return client, stopped, exited


def test_engine_death_fails_waiting_requests_refuses_new_ones_and_exits(monkeypatch):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    client, stopped, exited = _client_over(child, monkeypatch)
    assert client.health() == (200, {"status": "ok"}) and "fuseinfer_engine_up 1.0" in \
        client.metrics.render(client.stats)

    async def scenario() -> ApiError:
        rid, stream = client.submit([1, 2, 3], SamplingParams())
        threading.Timer(0.1, child.kill).start()
        async def drain() -> None:
            async for _ in client.tokens(rid, stream):
                pass

        with pytest.raises(ApiError) as err:
            await asyncio.wait_for(drain(), 5)
        with pytest.raises(ApiError) as refused:
            client.submit([1], SamplingParams())
        assert refused.value.status == 503
        with pytest.raises(ApiError):
            client.check_capacity(1)
        return err.value

    err = asyncio.run(scenario())
    assert err.status == 503 and "killed by SIGKILL" in err.message
    status, body = client.health()
    assert status == 503 and "engine process died" in body["error"]
    assert "fuseinfer_engine_up 0.0" in client.metrics.render(client.stats)
    deadline = time.monotonic() + 5
    while not exited and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stopped == [True] and exited == [ENGINE_DIED_EXIT_CODE]
    assert client.exit_code == ENGINE_DIED_EXIT_CODE
    sent = [client.inbox.get_nowait() for _ in range(client.inbox.qsize())]
    assert [type(m) for m in sent] == [AddRequest]  # no abort sent into a dead engine
    child.wait()


def test_an_engine_that_stops_cleanly_is_not_a_death(monkeypatch):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    client, stopped, exited = _client_over(child, monkeypatch)
    child.wait()
    time.sleep(0.3)
    assert client.health()[0] == 200 and stopped == [] and exited == []


# ---- a real server -------------------------------------------------------------------------
def _gauge(base: str, name: str) -> float:
    for line in httpx.get(base + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def _stream_until_end(base: str, started: asyncio.Event, counter: list) -> str:
    """One long stream; returns how it ended: 'error' (an error event, then [DONE]) or
    'closed' (the connection dropped)."""
    body = {"prompt": [random.randrange(1, 300) for _ in range(8)], "max_tokens": 400,
            "stream": True, "ignore_eos": True}
    saw_error = False
    try:
        async with httpx.AsyncClient(timeout=30) as http, \
                http.stream("POST", base + "/v1/completions", json=body) as resp:
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    return "error" if saw_error else "finished"
                event = json.loads(line[6:])
                if "error" in event:
                    saw_error = True
                else:
                    counter[0] += 1
                    if counter[0] >= 8:
                        started.set()
    except httpx.HTTPError:
        return "closed"
    return "error" if saw_error else "closed"


def test_engine_death_under_load(tmp_path):
    base, proc = start_server(tmp_path, "--max-running-requests", "4")
    try:
        pid = int(_gauge(base, "fuseinfer_engine_pid"))
        assert pid > 0 and pid != proc.pid

        async def scenario() -> tuple[list[str], float, float, int]:
            started, counter = asyncio.Event(), [0]
            # 4 running and 4 queued behind them
            tasks = [asyncio.create_task(_stream_until_end(base, started, counter))
                     for _ in range(8)]
            await asyncio.wait_for(started.wait(), 30)
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            ends = await asyncio.wait_for(asyncio.gather(*tasks), 5)
            all_ended = time.monotonic() - killed
            async with httpx.AsyncClient(timeout=5) as http:
                try:
                    late = (await http.post(base + "/v1/completions",
                                            json={"prompt": [1], "max_tokens": 2})).status_code
                except httpx.HTTPError:
                    late = 0  # the server is gone already
                unhealthy_at = None
                while time.monotonic() - killed < 2.0:
                    try:
                        health = await http.get(base + "/health")
                    except httpx.HTTPError:
                        unhealthy_at = time.monotonic() - killed  # it exited
                        break
                    if health.status_code != 200:
                        assert health.status_code == 503
                        unhealthy_at = time.monotonic() - killed
                        break
                    await asyncio.sleep(0.05)
            assert unhealthy_at is not None, "/health still said ok 2 s after the engine died"
            return ends, all_ended, unhealthy_at, late

        ends, all_ended, unhealthy_at, late = asyncio.run(scenario())
        assert set(ends) == {"error"}, ends  # every in-flight and queued request: an error
        assert all_ended < 5.0 and unhealthy_at < 2.0
        assert late in (503, 0)
        assert proc.wait(timeout=15) == ENGINE_DIED_EXIT_CODE
        assert "engine process died (killed by SIGKILL)" in proc.stdout.read()
    finally:
        stop_server(proc)
