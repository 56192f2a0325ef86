"""Fuzzed request bodies against the real server (tiny model, CPU, a 48-token context so
that every accepted request is short): random types, missing and extra fields, extreme
numbers, unicode, huge strings and malformed JSON. Every answer is a 2xx, or a 4xx with an
OpenAI-style error body, never a 5xx; afterwards a normal request still completes."""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import pytest
from test_server import start_server, stop_server

CONTEXT = 48
BASES: dict[str, dict] = {
    "/v1/completions": {"prompt": "hello", "max_tokens": 4},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    "/generate": {"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 4}},
}
FIELDS = ["prompt", "messages", "input_ids", "text", "sampling_params", "max_tokens",
          "max_completion_tokens", "max_new_tokens", "temperature", "top_p", "top_k", "min_p",
          "seed", "stop", "stop_token_ids", "ignore_eos", "n", "stream", "stream_options",
          "logprobs", "top_logprobs", "model", "presence_penalty", "frequency_penalty",
          "repetition_penalty", "logit_bias", "min_tokens", "min_new_tokens", "echo",
          "tools", "user", "ünïcödé", "", "x" * 300]
# the fields each endpoint knows, picked more often than the rest
OWN_FIELDS = {
    "/v1/completions": ["prompt", "max_tokens", "n", "stream", "logprobs", "stop", "seed",
                        "echo"],
    "/v1/chat/completions": ["messages", "max_tokens", "n", "stream", "top_logprobs", "stop"],
    "/generate": ["input_ids", "text", "sampling_params"],
}
SAMPLING_FIELDS = ["max_new_tokens", "max_tokens", "temperature", "top_p", "top_k", "min_p",
                   "seed", "stop_token_ids", "ignore_eos", "presence_penalty",
                   "frequency_penalty", "repetition_penalty", "logit_bias", "min_tokens",
                   "min_new_tokens"]
REQUESTS_PER_ENDPOINT = 100


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return rng.choice([0, 1, -1, 3, 2**31, 2**63, 2**70, -2**70, 10**40])
    if kind == 1:
        return rng.choice([0.0, -0.0, 0.5, 1.5, 1e308, -1e308, 5e-324, 1e-300])
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return rng.choice(["", "yes", "3", "héllo 你好 🙂 \u202e", "\x00\x01", "<|im_end|>",
                           "a" * rng.randrange(1, 300_000)])
    if kind == 4:
        return [rng.randrange(-5, 500) for _ in range(rng.randrange(0, 6))]
    if kind == 5:  # a text part, an empty object, or a logit_bias-like map
        return rng.choice([{"type": "text", "text": "x"}, {}, {
            rng.choice([str(rng.randrange(-5, 500)), "07", "1.5", "x"]):
            rng.choice([rng.uniform(-150, 150), 100, -100, True, "3", None])
            for _ in range(rng.randrange(1, 4))}])
    if kind == 6:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    if kind == 7:
        return {rng.choice(FIELDS): _value(rng, depth + 1) for _ in range(rng.randrange(0, 4))}
    return [{"role": _value(rng, depth + 1), "content": _value(rng, depth + 1)}]


def _mutated(rng: random.Random, path: str) -> dict:
    body = json.loads(json.dumps(BASES[path]))
    for _ in range(rng.randrange(1, 4)):
        native = path == "/generate"  # its sampling fields sit in `sampling_params`
        target, names = body, OWN_FIELDS[path] + ([] if native else SAMPLING_FIELDS)
        if rng.random() < (0.6 if native else 0.3) and \
                isinstance(body.get("sampling_params"), dict):
            target, names = body["sampling_params"], SAMPLING_FIELDS
        elif rng.random() < 0.2 and isinstance(body.get("messages"), list) and \
                body["messages"] and isinstance(body["messages"][0], dict):
            target = body["messages"][0]
        if target and rng.random() < 0.25:
            del target[rng.choice(sorted(target))]
        else:
            target[rng.choice(names if rng.random() < 0.6 else FIELDS)] = _value(rng)
    return body


def _malformed(rng: random.Random, path: str) -> bytes:
    text = json.dumps(BASES[path])
    return rng.choice([
        text[:rng.randrange(len(text))].encode(), b"", b"null", b"[1, 2]", b'"x"', b"NaN",
        b"\xff\xfe\x00garbage", text.encode() + b"}", b"[" * 5000 + b"]" * 5000,
        b'{"prompt": "\\ud800", "max_tokens": 2}', b'{"a": ' * 3000 + b"1" + b"}" * 3000,
        bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))])


def _check_answer(path: str, raw: bytes, r: httpx.Response) -> None:
    where = f"{path} {raw[:200]!r} -> {r.status_code} {r.text[:300]!r}"
    assert r.status_code < 500, where
    if r.status_code >= 400:
        error = r.json()["error"]
        assert isinstance(error["message"], str) and error["message"], where
        assert error["type"] == "invalid_request_error", where
        return
    assert r.status_code == 200, where
    if r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.endswith("data: [DONE]\n\n"), where
        assert '"error"' not in r.text, where
    else:
        answer = r.json()
        assert "output_ids" in answer or answer["choices"], where


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base, proc = start_server(tmp_path_factory.mktemp("cache"), "--max-context-len",
                              str(CONTEXT))
    yield base
    stop_server(proc)


def test_fuzzed_bodies_never_get_a_5xx(server):
    rng = random.Random(20261130)
    accepted = refused = 0
    with httpx.Client(base_url=server, timeout=30) as http:
        for path in BASES:
            for _ in range(REQUESTS_PER_ENDPOINT):
                raw = _malformed(rng, path) if rng.random() < 0.15 else \
                    json.dumps(_mutated(rng, path)).encode()
                r = http.post(path, content=raw, headers={"content-type": "application/json"})
                _check_answer(path, raw, r)
                accepted += r.status_code == 200
                refused += r.status_code >= 400
        # the mix reaches both sides of the checks
        assert accepted >= 20 and refused >= 100, (accepted, refused)
        assert http.get("/health").status_code == 200
        r = http.post("/generate", json={"input_ids": [5, 6, 7], "sampling_params": {
            "max_new_tokens": 6, "ignore_eos": True}})
        assert r.status_code == 200 and len(r.json()["output_ids"]) == 6
        r = http.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
            "ignore_eos": True})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
