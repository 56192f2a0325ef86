"""A soak of the real server (the tiny model on the CPU, 127.0.0.1): 200 concurrent
streaming requests, some of whose clients disconnect mid-stream, on a KV pool small
enough that decoding retracts requests. Every request that stays gets exactly its
max_tokens tokens (and, greedy, the same text it gets alone), every disconnect frees its
KV (the pool's usage returns to its idle 0: the radix cache is off, so nothing else holds
pages), and the server stays healthy."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
from test_server import start_server, stop_server

REQUESTS = 200
KV_TOKENS = 256  # 24 tokens a request at most: ~10 requests fit, far from 200


def _gauges(base: str) -> dict[str, float]:
    text = httpx.get(base + "/metrics", timeout=5).text
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line.startswith("fuseinfer_") and "{" not in line}


async def _stream(http: httpx.AsyncClient, base: str, prompt: list[int], max_tokens: int,
                  cut_after: int | None) -> tuple[str, str | None, int | None] | None:
    """(text, finish reason, usage's completion tokens); None when it disconnected."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    text, finish, usage, events = [], None, None, 0
    async with http.stream("POST", base + "/v1/completions", json=body) as resp:
        assert resp.status_code == 200, await resp.aread()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            assert "error" not in event, event
            if event.get("usage"):
                usage = event["usage"]["completion_tokens"]
            for choice in event["choices"]:
                text.append(choice["text"])
                finish = choice["finish_reason"] or finish
                events += 1
                if cut_after is not None and events >= cut_after:
                    return None  # leaving the block closes the connection mid-stream
    return "".join(text), finish, usage


def test_soak_with_disconnects_and_retraction(tmp_path):
    rng = random.Random()
    base, proc = start_server(tmp_path, "--max-total-tokens", str(KV_TOKENS),
                              "--disable-radix-cache")
    try:
        idle = _gauges(base)
        assert idle["fuseinfer_kv_cache_usage"] == 0.0
        jobs = []
        for _ in range(REQUESTS):
            max_tokens = rng.randrange(4, 12)
            cut = rng.randrange(1, max_tokens) if rng.random() < 0.3 else None
            jobs.append(([rng.randrange(1, 384) for _ in range(rng.randrange(4, 12))],
                         max_tokens, cut))

        async def soak() -> list:
            limits = httpx.Limits(max_connections=REQUESTS + 10)
            async with httpx.AsyncClient(timeout=50, limits=limits) as http:
                return await asyncio.wait_for(asyncio.gather(
                    *(_stream(http, base, *job) for job in jobs)), 50)

        results = asyncio.run(soak())
        stayed = [(job, r) for job, r in zip(jobs, results, strict=True) if r is not None]
        assert len(stayed) > REQUESTS // 2
        for (_, max_tokens, _), (_, finish, usage) in stayed:
            assert finish == "length" and usage == max_tokens
        # every disconnect aborted its request and freed its pages
        deadline = time.monotonic() + 10
        while True:
            g = _gauges(base)
            settled = (g["fuseinfer_kv_cache_usage"] == idle["fuseinfer_kv_cache_usage"]
                       and g["fuseinfer_num_requests_running"] == 0
                       and g["fuseinfer_num_requests_waiting"] == 0)
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert settled, g
        assert g["fuseinfer_retractions"] > 0  # the pool was small enough to force it
        assert 0 < g["fuseinfer_requests_aborted"] <= REQUESTS - len(stayed)
        assert httpx.get(base + "/health", timeout=5).json() == {"status": "ok"}
        # retraction and recomputation did not change what a request generates
        for (prompt, max_tokens, _), (text, _, _) in rng.sample(stayed, 8):
            alone = httpx.post(base + "/v1/completions", timeout=30, json={
                "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                "ignore_eos": True}).json()
            assert alone["choices"][0]["text"] == text
    finally:
        assert stop_server(proc) == 0
