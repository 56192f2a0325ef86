"""The gates in front of every handler, on an in-process app (uvicorn on 127.0.0.1 in a
thread) over a stand-in engine client that echoes a fixed token: the API key (401 with an
OpenAI-style body, /health open) and the request body size limit (413 before any parsing,
by Content-Length and for chunked bodies). Also token ids outside the vocabulary, which
the request layer refuses before the engine sees them, and /generate's abort when its
client goes away. Last, `fuseinfer serve --api-key --max-request-bytes` end to end."""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import uvicorn
from test_server import start_server, stop_server

from fuseinfer.runtime.sampling import SamplingParams
from fuseinfer.runtime.step_output import FinishReason
from fuseinfer.server.app import create_app
from fuseinfer.server.messages import Ready

VOCAB = 384
TOKEN = 7  # what the stand-in engine generates
LIMIT = 4096


class EchoEngineClient:
    """The parts of EngineClient the generating routes use: every request gets TOKEN
    max_new_tokens times, `delay_s` apart, then finishes with `length`. A request whose
    reader stops early is recorded in `aborted`, as EngineClient would abort it."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.info = Ready(max_context=256, eos_token_ids=(), vocab_size=VOCAB)
        self.submitted: list[list[int]] = []
        self.aborted: list[int] = []
        self.delay_s = delay_s
        self._params: dict[int, SamplingParams] = {}

    def check_capacity(self, n: int) -> None:
        pass

    def health(self) -> tuple[int, dict]:
        return 200, {"status": "ok"}

    def submit(self, prompt: list[int], params: SamplingParams) -> tuple[int, None]:
        rid = len(self.submitted)
        self.submitted.append(prompt)
        self._params[rid] = params
        return rid, None

    async def tokens(self, rid: int, stream: None) -> AsyncIterator[tuple]:
        n = self._params[rid].max_new_tokens
        finished = False
        try:
            for i in range(n):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                finished = i == n - 1
                yield [TOKEN], FinishReason.LENGTH if finished else None, []
        finally:
            if not finished:
                self.aborted.append(rid)


def _serve(app) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the test server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


KEY = secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def keyed():
    engine = EchoEngineClient()
    yield from (
        (base, engine)
        for base in _serve(create_app(engine, "echo", None, api_key=KEY,
                                      max_request_bytes=LIMIT)))


def _completion(n_tokens: int) -> dict:
    return {"prompt": [random.randrange(VOCAB) for _ in range(5)], "max_tokens": n_tokens}


def _is_error(r: httpx.Response, status: int, code: str | None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    assert error["code"] == code


@pytest.mark.parametrize("header", [None, "", f"Bearer {KEY[:-1]}", f"Bearer {KEY}x",
                                    f"bearer {KEY}", KEY, f"Basic {KEY}", f"Bearer {KEY.upper()}"])
def test_requests_without_the_key_get_401(keyed, header):
    base, engine = keyed
    headers = {} if header is None else {"Authorization": header}
    before = len(engine.submitted)
    for method, path, body in [("GET", "/v1/models", None), ("GET", "/metrics", None),
                               ("POST", "/v1/completions", _completion(3)),
                               ("POST", "/generate", {"input_ids": [1]}),
                               ("POST", "/freeze_gc", None)]:
        r = httpx.request(method, base + path, json=body, headers=headers, timeout=10)
        _is_error(r, 401, "invalid_api_key")
        assert r.headers["www-authenticate"] == "Bearer"
    assert len(engine.submitted) == before  # nothing reached the engine


def test_the_key_opens_every_endpoint_and_health_needs_none(keyed):
    base, engine = keyed
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(base + "/health", timeout=10).status_code == 200
    assert httpx.get(base + "/v1/models", headers=auth, timeout=10).json()["data"][0]["id"] \
        == "echo"
    n = random.randrange(2, 9)
    body = _completion(n)
    r = httpx.post(base + "/v1/completions", json=body, headers=auth, timeout=10)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == n
    assert engine.submitted[-1] == body["prompt"]
    r = httpx.post(base + "/generate", headers=auth, timeout=10, json={
        "input_ids": [3, 4], "sampling_params": {"max_new_tokens": n}})
    assert r.json()["output_ids"] == [TOKEN] * n


def test_a_bad_key_is_refused_before_the_body_is_read(keyed):
    base, _ = keyed
    # malformed and oversized: the key is checked first
    r = httpx.post(base + "/v1/completions", content=b"{" * (LIMIT * 2), timeout=10)
    _is_error(r, 401, "invalid_api_key")


def test_create_app_refuses_an_empty_key_or_limit():
    with pytest.raises(ValueError):
        create_app(EchoEngineClient(), "echo", None, api_key="")
    with pytest.raises(ValueError):
        create_app(EchoEngineClient(), "echo", None, max_request_bytes=0)


@pytest.fixture(scope="module")
def limited():
    engine = EchoEngineClient()
    yield from ((base, engine) for base in _serve(
        create_app(engine, "echo", None, max_request_bytes=LIMIT)))


def _body_of_size(size: int) -> bytes:
    """A valid completion body of exactly `size` bytes (padded inside the `user` string)."""
    body = {"prompt": [1, 2], "max_tokens": 2, "user": ""}
    pad = size - len(json.dumps(body).encode())
    body["user"] = "u" * pad
    raw = json.dumps(body).encode()
    assert len(raw) == size
    return raw


def test_a_body_at_the_limit_is_served_one_byte_more_is_413(limited):
    base, engine = limited
    url = base + "/v1/completions"
    headers = {"content-type": "application/json"}
    r = httpx.post(url, content=_body_of_size(LIMIT), headers=headers, timeout=10)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    before = len(engine.submitted)
    r = httpx.post(url, content=_body_of_size(LIMIT + 1), headers=headers, timeout=10)
    _is_error(r, 413, "request_too_large")
    # not parsed: malformed JSON over the limit is a 413, not a 400
    r = httpx.post(url, content=b"[" * (LIMIT + random.randrange(1, 10**6)), timeout=10)
    _is_error(r, 413, "request_too_large")
    assert len(engine.submitted) == before


def test_chunked_bodies_are_limited_as_they_arrive(limited):
    base, engine = limited

    def chunks(raw: bytes, size: int) -> Iterator[bytes]:
        for i in range(0, len(raw), size):
            yield raw[i:i + size]

    url = base + "/v1/completions"
    r = httpx.post(url, content=chunks(_body_of_size(LIMIT), 1000), timeout=10)
    assert "content-length" not in r.request.headers and r.status_code == 200
    before = len(engine.submitted)
    r = httpx.post(url, content=chunks(_body_of_size(LIMIT + 1), 1000), timeout=10)
    _is_error(r, 413, "request_too_large")
    # a large chunked upload is cut off at the limit, not read to its end
    r = httpx.post(url, content=chunks(b"x" * (16 * LIMIT), LIMIT // 2), timeout=10)
    _is_error(r, 413, "request_too_large")
    assert len(engine.submitted) == before
    assert httpx.get(base + "/health", timeout=10).status_code == 200



@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", {"prompt": [1, VOCAB]}, "prompt"),
    ("/v1/completions", {"prompt": [[1], [-1]]}, "prompt"),
    ("/v1/completions", {"prompt": [1], "stop_token_ids": [VOCAB + 5]}, "stop_token_ids"),
    ("/generate", {"input_ids": [2**70]}, "input_ids"),
    ("/generate", {"input_ids": [1], "sampling_params": {"stop_token_ids": [-3]}},
     "sampling_params.stop_token_ids"),
    ("/generate", {"input_ids": [1], "text": "x"}, "text"),
])
def test_token_ids_outside_the_vocabulary_never_reach_the_engine(limited, path, body, param):
    base, engine = limited
    before = len(engine.submitted)
    r = httpx.post(base + path, json=body, timeout=10)
    _is_error(r, 400, None)
    assert r.json()["error"]["param"] == param
    assert len(engine.submitted) == before
    ok = httpx.post(base + "/generate", json={"input_ids": [VOCAB - 1]}, timeout=10)
    assert ok.status_code == 200 and engine.submitted[-1] == [VOCAB - 1]


def test_generate_is_aborted_when_its_client_goes_away():
    engine = EchoEngineClient(delay_s=0.02)
    for base in _serve(create_app(engine, "echo", None)):
        r = httpx.post(base + "/generate", timeout=10, json={
            "input_ids": [1], "sampling_params": {"max_new_tokens": 3}})
        assert r.json()["output_ids"] == [TOKEN] * 3 and engine.aborted == []
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes
            httpx.post(base + "/generate", timeout=0.5, json={
                "input_ids": [2], "sampling_params": {"max_new_tokens": 250}})
        deadline = time.time() + 5  # 250 tokens would take 5 s; the abort comes sooner
        while not engine.aborted and time.time() < deadline:
            time.sleep(0.05)
        assert engine.aborted == [1] and engine.submitted[1] == [2]


def test_serve_options_reach_the_real_server(tmp_path):
    # `--api-key=KEY`: a urlsafe key may start with '-', which argparse would read as an option
    base, proc = start_server(tmp_path, f"--api-key={KEY}", "--max-request-bytes", str(LIMIT))
    try:
        auth = {"Authorization": f"Bearer {KEY}"}
        body = {"prompt": "hi", "max_tokens": 2, "ignore_eos": True}
        assert httpx.get(base + "/health", timeout=10).status_code == 200
        _is_error(httpx.post(base + "/v1/completions", json=body, timeout=10), 401,
                  "invalid_api_key")
        r = httpx.post(base + "/v1/completions", json=body, headers=auth, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
        r = httpx.post(base + "/v1/completions", headers=auth, timeout=10,
                       content=_body_of_size(LIMIT + 1))
        _is_error(r, 413, "request_too_large")
    finally:
        assert stop_server(proc) == 0
