"""`fuseinfer serve` as a subprocess on 127.0.0.1 with the tiny model on the CPU, driven by
the official openai client and by raw HTTP: completions and chat (streaming or not),
batched prompts, chat content as text parts, /generate, models, every bad input -> 400
with an OpenAI-style body, an engine rejection as an error (never a finish reason), 64
concurrent streams, and SIGTERM shutdown (on a server of its own)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

REPO = Path(__file__).resolve().parents[1]
NO_EOS = {"ignore_eos": True}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cache: Path, *extra: str) -> tuple[str, subprocess.Popen]:
    """`fuseinfer serve` with the tiny model on the CPU; returns once /health answers."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"), CUDA_VISIBLE_DEVICES="",
               FUSEINFER_CACHE_DIR=str(cache))
    proc = subprocess.Popen([sys.executable, "-m", "fuseinfer.cli", "serve", "--port",
                             str(port), "--device", "cpu", "--page-size", "4", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return base, proc
        except httpx.HTTPError:
            time.sleep(0.3)
        if proc.poll() is not None:
            pytest.fail(f"server exited early:\n{proc.stdout.read()}")
    proc.kill()
    pytest.fail("server did not come up in 120 s")


def stop_server(proc: subprocess.Popen) -> int:
    """SIGTERM (the server stops its engine process too); SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base, proc = start_server(tmp_path_factory.mktemp("cache"))
    yield base
    stop_server(proc)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="none")


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    model = httpx.get(server + "/v1/models").json()["data"][0]
    # what bench serving draws its token ids below; the tiny model's vocabulary
    assert model["vocab_size"] == 384 and model["max_model_len"] >= 256
    health = httpx.get(server + "/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}


def test_completions(client):
    out = client.completions.create(model="tiny", prompt="Hello", max_tokens=7,
                                    temperature=0, extra_body=NO_EOS)
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 7
    assert out.usage.prompt_tokens > 0 and isinstance(out.choices[0].text, str)
    again = client.completions.create(model="tiny", prompt="Hello", max_tokens=7,
                                      temperature=0, extra_body=NO_EOS)
    assert again.choices[0].text == out.choices[0].text  # greedy is deterministic
    chunks = list(client.completions.create(model="tiny", prompt="Hello", max_tokens=7,
                                            temperature=0, stream=True, extra_body=NO_EOS))
    assert "".join(c.choices[0].text for c in chunks) == out.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    ids = client.completions.create(model="tiny", prompt=[5, 6, 7], max_tokens=3,
                                    extra_body=NO_EOS)
    assert ids.usage.prompt_tokens == 3 and ids.usage.completion_tokens == 3


def test_chat(client):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    out = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=5,
                                         temperature=0, extra_body=NO_EOS)
    assert out.choices[0].message.role == "assistant"
    assert out.usage.completion_tokens == 5
    stream = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=5,
                                            temperature=0, stream=True, extra_body=NO_EOS)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == out.choices[0].message.content


def test_chat_content_as_text_parts(client):
    def chat(content) -> str:
        return client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": content}], max_tokens=6,
            temperature=0, extra_body=NO_EOS).choices[0].message.content

    assert chat([{"type": "text", "text": "hi there"}]) == chat("hi there")
    parts = [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]
    assert chat(parts) == chat("hi\nthere")  # parts are joined by newlines


def test_batched_prompts(client):
    """A list of prompts gives n choices per prompt, prompt-major, each what the prompt
    gets alone (seeded: choice i of each prompt uses seed + i)."""
    prompts = ["Hello", "World wide"]
    kw = dict(model="tiny", max_tokens=5, n=2, temperature=1.0, seed=11, extra_body=NO_EOS)
    alone = [client.completions.create(prompt=p, **kw) for p in prompts]
    batch = client.completions.create(prompt=prompts, **kw)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert [c.text for c in batch.choices] == [c.text for a in alone for c in a.choices]
    assert batch.usage.completion_tokens == 20
    assert batch.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)
    chunks = list(client.completions.create(prompt=prompts, stream=True, **kw))
    for c in batch.choices:
        mine = [k.choices[0] for k in chunks if k.choices[0].index == c.index]
        assert "".join(k.text for k in mine) == c.text
        assert [k.finish_reason for k in mine if k.finish_reason] == ["length"]

    ids = [[5, 6, 7], [9, 10], [11]]
    greedy = dict(model="tiny", max_tokens=3, temperature=0, extra_body=NO_EOS)
    tokens = client.completions.create(prompt=ids, **greedy)
    assert tokens.usage.prompt_tokens == 6 and tokens.usage.completion_tokens == 9
    assert [c.text for c in tokens.choices] == [
        client.completions.create(prompt=p, **greedy).choices[0].text for p in ids]


def test_generate_native(server):
    r = httpx.post(server + "/generate", json={"input_ids": [1, 2, 3],
                                                  "sampling_params": {"max_tokens": 4,
                                                                      "ignore_eos": True}})
    assert r.status_code == 200
    body = r.json()
    assert len(body["output_ids"]) == 4 and body["finish_reason"] == "length"


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", b"{not json", None),
    ("/v1/completions", {"model": "gpt-9", "prompt": "x"}, "model"),
    ("/v1/completions", {"max_tokens": 3}, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "three"}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": -0.5}, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, "top_p"),
    ("/v1/completions", {"prompt": "x", "top_p": 1.5}, "top_p"),
    ("/v1/completions", {"prompt": "word " * 3000, "max_tokens": 4}, "prompt"),
    ("/v1/completions", {"prompt": 12}, "prompt"),
    ("/v1/chat/completions", {"messages": "hi"}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}]},
     "messages"),
    ("/v1/completions", {"prompt": ["x", ""]}, "prompt"),
    ("/v1/completions", {"prompt": [[1, 2], []]}, "prompt"),
    ("/v1/completions", {"prompt": ["x", 3]}, "prompt"),
    ("/v1/completions", {"prompt": "x", "logprobs": 21}, "logprobs"),
    ("/generate", {"input_ids": [1, 2], "sampling_params": {"max_tokens": 0}},
     "sampling_params.max_tokens"),
])
def test_bad_requests_get_400(server, path, body, param):
    url = server + path
    r = httpx.post(url, content=body) if isinstance(body, bytes) else httpx.post(url, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"] and err["param"] == param
    ok = httpx.post(server + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert ok.status_code == 200  # the server is unaffected


def test_64_concurrent_streams(server):
    async def one(c: openai.AsyncOpenAI, i: int) -> tuple[int, int]:
        """(finish chunks, tokens streamed): logprobs=0 makes each chunk list its tokens."""
        stream = await c.completions.create(model="tiny", prompt=f"request {i}",
                                            max_tokens=6 + i % 5, stream=True, logprobs=0,
                                            extra_body=NO_EOS)
        finishes = tokens = 0
        async for chunk in stream:
            choice = chunk.choices[0]
            finishes += 1 if choice.finish_reason else 0
            tokens += len(choice.logprobs.tokens) if choice.logprobs else 0
        return finishes, tokens

    async def main() -> list[tuple[int, int]]:
        c = openai.AsyncOpenAI(base_url=server + "/v1", api_key="none")
        return await asyncio.gather(*(one(c, i) for i in range(64)))

    assert asyncio.run(main()) == [(1, 6 + i % 5) for i in range(64)]
    counts = []
    for i in range(8):  # token counts through the non-streaming path
        r = httpx.post(server + "/v1/completions",
                       json={"prompt": f"request {i}", "max_tokens": 6 + i % 5, **NO_EOS})
        counts.append(r.json()["usage"]["completion_tokens"])
    assert counts == [6 + i % 5 for i in range(8)]


def test_metrics_and_freeze_gc(server, client):
    client.completions.create(model="tiny", prompt="metrics", max_tokens=4, extra_body=NO_EOS)
    time.sleep(0.6)  # the engine reports its gauges twice a second
    text = httpx.get(server + "/metrics").text
    for name in ("fuseinfer_num_requests_waiting", "fuseinfer_num_requests_running",
                 "fuseinfer_kv_cache_usage", "fuseinfer_generation_tokens_total",
                 "fuseinfer_time_to_first_token_seconds_count",
                 "fuseinfer_inter_token_latency_seconds_bucket"):
        assert name in text
    line = next(x for x in text.splitlines() if x.startswith("fuseinfer_requests_total "))
    assert int(line.split()[1]) >= 1
    assert httpx.post(server + "/freeze_gc").json() == {"status": "ok"}


def test_disconnect_aborts_the_request(server):
    def gauge(name: str) -> float:
        text = httpx.get(server + "/metrics").text
        return float(next(x for x in text.splitlines() if x.startswith(name + " ")).split()[1])

    before = gauge("fuseinfer_requests_aborted")
    body = {"prompt": "a long one", "max_tokens": 1500, "stream": True, **NO_EOS}
    with httpx.stream("POST", server + "/v1/completions", json=body) as r:
        next(r.iter_lines())  # the first event arrived: the request is running
    deadline = time.time() + 10
    while time.time() < deadline and gauge("fuseinfer_requests_aborted") == before:
        time.sleep(0.2)
    assert gauge("fuseinfer_requests_aborted") == before + 1
    while time.time() < deadline and gauge("fuseinfer_num_requests_running") > 0:
        time.sleep(0.2)
    assert gauge("fuseinfer_num_requests_running") == 0


def test_stop_strings(client):
    full = client.completions.create(model="tiny", prompt="Hello", max_tokens=24,
                                     temperature=0, extra_body=NO_EOS).choices[0].text
    stop = full[3:5]  # a string the greedy output contains
    assert len(stop) == 2
    want = full[:full.index(stop)]
    out = client.completions.create(model="tiny", prompt="Hello", max_tokens=24,
                                    temperature=0, stop=[stop], extra_body=NO_EOS)
    assert out.choices[0].text == want and out.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="tiny", prompt="Hello", max_tokens=24,
                                         temperature=0, stop=stop, stream=True,
                                         extra_body=NO_EOS)
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == "stop"
    bad = httpx.post(str(client.base_url) + "completions",
                     json={"prompt": "x", "stop": ["a", "b", "c", "d", "e"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "stop"


def test_n_choices(client):
    out = client.completions.create(model="tiny", prompt="Hello", max_tokens=5, n=3,
                                    temperature=1.0, seed=5, extra_body=NO_EOS)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert out.usage.completion_tokens == 15
    again = client.completions.create(model="tiny", prompt="Hello", max_tokens=5, n=3,
                                      temperature=1.0, seed=5, extra_body=NO_EOS)
    assert [c.text for c in again.choices] == [c.text for c in out.choices]  # seeded
    chunks = list(client.completions.create(model="tiny", prompt="Hello", max_tokens=5, n=3,
                                            temperature=1.0, seed=5, stream=True,
                                            extra_body=NO_EOS))
    for i in range(3):
        text = "".join(c.choices[0].text for c in chunks if c.choices[0].index == i)
        assert text == out.choices[i].text
    greedy = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, n=2,
        temperature=0, extra_body=NO_EOS)
    assert greedy.choices[0].message.content == greedy.choices[1].message.content
    bad = httpx.post(str(client.base_url) + "completions", json={"prompt": "x", "n": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "n"


def test_bench_serving(server, tmp_path):
    out = tmp_path / "serving.json"
    proc = subprocess.run(
        [sys.executable, "-m", "fuseinfer.cli", "bench", "serving", "--base-url", server,
         "--num-prompts", "12", "--random-input", "16", "--random-output", "8",
         "--vocab-size", "384", "--max-concurrency", "4", "--request-rate", "50",
         "--json", str(out)],
        env=dict(os.environ, PYTHONPATH=str(REPO / "python")), capture_output=True,
        text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(out.read_text())
    assert summary["completed"] == 12 and summary["failed"] == 0
    assert summary["output_tokens"] == 96 and summary["input_tokens"] == 192
    for key in ("ttft_ms_p50", "ttft_ms_p99", "itl_ms_p50", "itl_ms_p90", "e2e_ms_p99"):
        assert summary[key] is not None and summary[key] >= 0
    assert summary["ttft_ms_p50"] <= summary["e2e_ms_p50"]
    assert "output_tok_per_s" in proc.stdout


def test_non_streaming_disconnect_aborts(server):
    def aborted() -> float:
        text = httpx.get(server + "/metrics").text
        line = next(x for x in text.splitlines() if x.startswith("fuseinfer_requests_aborted "))
        return float(line.split()[1])

    before = aborted()
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(server + "/v1/completions",
                   json={"prompt": "x", "max_tokens": 2000, **NO_EOS}, timeout=0.5)
    deadline = time.time() + 10
    while time.time() < deadline and aborted() == before:
        time.sleep(0.2)
    assert aborted() == before + 1


def test_logprobs(client):
    out = client.completions.create(model="tiny", prompt="Hello", max_tokens=4, logprobs=2,
                                    temperature=0, extra_body=NO_EOS)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == 4 and len(lp.token_logprobs) == 4
    assert "".join(lp.tokens) == out.choices[0].text
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert chosen <= 0 and len(top) <= 2
        assert abs(max(top.values()) - chosen) < 1e-5  # greedy picks the top token
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
        temperature=0, logprobs=True, top_logprobs=2, extra_body=NO_EOS)
    content = chat.choices[0].logprobs.content
    assert len(content) == 3 and all(len(c.top_logprobs) == 2 for c in content)
    assert "".join(c.token for c in content) == chat.choices[0].message.content
    chunks = list(client.completions.create(model="tiny", prompt="Hello", max_tokens=4,
                                            logprobs=0, temperature=0, stream=True,
                                            extra_body=NO_EOS))
    tokens = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert tokens == lp.tokens
    none = client.completions.create(model="tiny", prompt="Hello", max_tokens=2)
    assert none.choices[0].logprobs is None


def test_sigterm_shuts_down_cleanly(tmp_path):
    """Its own server: SIGTERM lets the request in flight finish, then exits 0."""
    base, proc = start_server(tmp_path)
    try:
        body = {"prompt": "x", "max_tokens": 300, "stream": True, **NO_EOS}
        with httpx.stream("POST", base + "/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            next(lines)  # running
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert sum('"finish_reason": "length"' in line for line in rest) == 1
        assert proc.wait(timeout=60) == 0
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    """One request at a time, none queued, 2 s per request."""
    base, proc = start_server(tmp_path_factory.mktemp("cache"), "--max-running-requests", "1",
                              "--max-queued-requests", "0", "--request-timeout", "2")
    yield base
    assert stop_server(proc) == 0


def test_queue_limit_and_request_timeout(small_server):
    # warm up first: the first step of a fresh engine is slower than the timeout allows
    assert httpx.post(small_server + "/v1/completions",
                      json={"prompt": "w", "max_tokens": 2}).status_code == 200
    long = {"prompt": "a", "max_tokens": 2000, "stream": True, **NO_EOS}
    with httpx.stream("POST", small_server + "/v1/completions", json=long, timeout=30) as r:
        lines = r.iter_lines()  # keep it: a dropped iterator closes the response
        next(lines)  # running: the one slot is taken
        busy = httpx.post(small_server + "/v1/completions", json={"prompt": "b"})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["type"] == "server_busy"
        rest = "".join(lines)
    assert '"type": "timeout"' in rest  # the stream ends with the timeout error event
    slow = httpx.post(small_server + "/v1/completions",
                      json={"prompt": "c", "max_tokens": 2000, **NO_EOS}, timeout=30)
    assert slow.status_code == 504 and slow.json()["error"]["type"] == "timeout"
    quick = httpx.post(small_server + "/v1/completions", json={"prompt": "d", "max_tokens": 2})
    assert quick.status_code == 200  # the aborted requests freed their slot


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory):
    """A KV pool of 64 tokens: a request within the context but larger than the pool passes
    the server's checks and is rejected by the engine."""
    base, proc = start_server(tmp_path_factory.mktemp("cache"), "--max-total-tokens", "64")
    yield base
    assert stop_server(proc) == 0


def test_engine_rejection_is_an_error_not_a_finish_reason(tight_server):
    too_big = {"prompt": list(range(1, 11)), "max_tokens": 100, **NO_EOS}
    r = httpx.post(tight_server + "/v1/completions", json=too_big)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "rejected" in err["message"]
    with httpx.stream("POST", tight_server + "/v1/completions",
                      json={**too_big, "stream": True}) as s:
        assert s.status_code == 200  # the response started before the engine answered
        lines = [line for line in s.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    assert [e["error"]["type"] for e in events] == ["invalid_request_error"]
    native = httpx.post(tight_server + "/generate",
                        json={"input_ids": list(range(1, 11)),
                              "sampling_params": {"max_tokens": 100}})
    assert native.status_code == 400 and "rejected" in native.json()["error"]["message"]
    ok = httpx.post(tight_server + "/v1/completions",
                    json={"prompt": [1, 2, 3], "max_tokens": 4, **NO_EOS})
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("ids", [[100000], [-1, 2], [3, 2**70]])
def test_token_ids_outside_the_vocabulary_are_refused(server, ids):
    """Ids the model has no embedding for (or negative ones, which the engine would read
    as tokens in flight) are refused with a 400; the engine keeps serving."""
    for path, body in (("/v1/completions", {"prompt": ids, "max_tokens": 2}),
                       ("/generate", {"input_ids": ids, "sampling_params": {"max_tokens": 2}})):
        r = httpx.post(server + path, json=body)
        assert r.status_code == 400, r.text
        assert "outside the vocabulary" in r.json()["error"]["message"]
    ok = httpx.post(server + "/v1/completions", json={"prompt": [1, 2], "max_tokens": 2})
    assert ok.status_code == 200 and len(ok.json()["choices"][0]["text"]) >= 0
    assert httpx.get(server + "/health").status_code == 200


def test_serve_on_two_ranks_answers_as_one_rank(server, tmp_path):
    """`serve --tp 2` on the CPU: the engine process is rank 0 and starts rank 1; greedy
    completions (one streamed) equal the single-rank server's, and SIGTERM stops both."""
    base, proc = start_server(tmp_path, "--tp", "2")
    try:
        two = openai.OpenAI(base_url=base + "/v1", api_key="none")
        one = openai.OpenAI(base_url=server + "/v1", api_key="none")
        for prompt in ("Hello", "the sky is blue and"):
            want = one.completions.create(model="tiny", prompt=prompt, max_tokens=9,
                                          temperature=0, extra_body=NO_EOS).choices[0].text
            got = two.completions.create(model="tiny", prompt=prompt, max_tokens=9,
                                         temperature=0, extra_body=NO_EOS).choices[0].text
            assert got == want
        chunks = two.completions.create(model="tiny", prompt="Hello", max_tokens=9,
                                        temperature=0, stream=True, extra_body=NO_EOS)
        assert "".join(c.choices[0].text for c in chunks) == \
            one.completions.create(model="tiny", prompt="Hello", max_tokens=9,
                                   temperature=0, extra_body=NO_EOS).choices[0].text
    finally:
        assert stop_server(proc) == 0
