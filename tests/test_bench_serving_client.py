"""The serving benchmark's stream client against hand-made responses: chunked and
unchunked bodies, an error status, and a stream cut off before [DONE] (a lost request);
the whole run against servers that hang, refuse, die or report no vocabulary size."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import socket
import time

import pytest

from fuseinfer.bench.e2e.serving import (
    FALLBACK_VOCAB,
    _one,
    make_requests,
    run_benchmark,
    run_command,
    server_model,
)

EVENTS = [b'data: {"choices": [{"text": "a"}]}\n\n', b'data: {"choices": [{"text": "b"}]}\n\n',
          b"data: [DONE]\n\n"]


def _chunked(parts: list[bytes]) -> bytes:
    # split one event across two chunks too: lines must be reassembled
    out = b""
    for p in parts:
        for piece in (p[:7], p[7:]):
            out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n\r\n"


async def _serve(response: bytes) -> tuple[asyncio.AbstractServer, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _run(response: bytes):
    async def go():
        server, port = await _serve(response)
        async with server:
            return await _one("127.0.0.1", port, "/v1/completions", "m", [1, 2, 3], 2)
    return asyncio.run(go())


@pytest.mark.parametrize("chunked", [False, True])
def test_counts_tokens_of_a_complete_stream(chunked):
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    body = _chunked(EVENTS) if chunked else b"".join(EVENTS)
    head += b"transfer-encoding: chunked\r\n\r\n" if chunked else b"\r\n"
    res = _run(head + body)
    assert res.ok and res.output_tokens == 2 and len(res.itls) == 1 and not res.error


def test_a_stream_cut_before_done_is_lost():
    res = _run(b"HTTP/1.0 200 OK\r\n\r\n" + EVENTS[0])
    assert not res.ok and res.output_tokens == 1 and "without [DONE]" in res.error


def test_an_error_status_is_reported():
    res = _run(b"HTTP/1.0 503 Service Unavailable\r\n\r\n{\"error\": {\"message\": \"busy\"}}")
    assert not res.ok and res.error.startswith("HTTP 503") and "busy" in res.error


# ---- the whole run: timeouts, refused connections, a server that dies, the vocabulary ----

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _requests(n: int) -> list[tuple[list[int], int]]:
    return make_requests("random", n, 4, 2, 300, seed=random.randrange(1 << 30))


def test_a_hung_request_times_out_and_counts_as_failed():
    async def go():
        async def handle(reader, writer):  # answers 200 and one event, then never more
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.0 200 OK\r\n\r\n" + EVENTS[0])
            await writer.drain()
            await asyncio.sleep(30)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            start = time.monotonic()
            summary = await run_benchmark(f"http://127.0.0.1:{port}", _requests(3), math.inf,
                                          None, "m", progress=False, request_timeout=0.5)
            return summary, time.monotonic() - start

    summary, took = asyncio.run(go())
    assert took < 5
    assert summary["completed"] == 0 and summary["failed"] == 3 == summary["timed_out"]
    assert "request-timeout" in summary["errors"][0]


def test_refused_connections_end_the_run_with_failures():
    port = _free_port()  # nothing listens there
    summary = asyncio.run(run_benchmark(f"http://127.0.0.1:{port}", _requests(4), 50.0, 2, "m",
                                        progress=False, request_timeout=5))
    assert summary["failed"] == 4 and summary["completed"] == 0 and summary["timed_out"] == 0
    assert summary["ttft_ms_p50"] is None and summary["output_tokens"] == 0


def test_a_server_that_dies_mid_run_leaves_a_complete_table():
    """The first two requests are served; then the server closes, and the rest fail."""
    async def go():
        served = 0
        stop = asyncio.Event()

        async def handle(reader, writer):
            nonlocal served
            await reader.readuntil(b"\r\n\r\n")
            served += 1
            if served <= 2:
                writer.write(b"HTTP/1.0 200 OK\r\n\r\n" + b"".join(EVENTS))
            else:
                stop.set()  # a connection cut without an answer: the process died
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        async def kill_when_told():
            await stop.wait()
            server.close()

        killer = asyncio.create_task(kill_when_told())
        summary = await run_benchmark(f"http://127.0.0.1:{port}", _requests(6), math.inf, 1,
                                      "m", progress=False, request_timeout=5)
        killer.cancel()
        return summary

    summary = asyncio.run(go())
    assert summary["completed"] == 2 and summary["failed"] == 4
    assert summary["output_tokens"] == 4 and summary["ttft_ms_p50"] is not None


class _ModelsServer:
    """GET /v1/models with a given body, on a thread (urllib reads it synchronously)."""

    def __init__(self, body: dict) -> None:
        import http.server
        import threading

        payload = json.dumps(body).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the stdlib's name)
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_model_and_vocabulary_come_from_the_server():
    vocab = random.randrange(300, 5000)
    body = {"data": [{"id": "first", "vocab_size": vocab}, {"id": "second", "vocab_size": 99}]}
    with _ModelsServer(body) as srv:
        assert server_model(srv.base, None) == ("first", vocab)
        assert server_model(srv.base, "second") == ("second", 99)
        assert server_model(srv.base, "other") == ("other", None)
    with _ModelsServer({"data": [{"id": "m", "vocab_size": True}]}) as srv:
        assert server_model(srv.base, None) == ("m", None)  # a bool is not a size
    assert server_model(f"http://127.0.0.1:{_free_port()}", None) == ("default", None)


def test_run_without_a_reported_vocabulary_warns_and_stays_small(capsys):
    """No vocab_size on /v1/models: ids stay below FALLBACK_VOCAB, the run still ends with
    its table (every completion fails here: the stub serves /v1/models only)."""
    args = argparse.Namespace(
        model=None, dataset="random", num_prompts=3, random_input=5, random_output=2,
        vocab_size=None, request_timeout=5.0, api_key=None, seed=random.randrange(1000), json=None,
        record=False, continue_run=False, request_rate=math.inf, max_concurrency=None)
    with _ModelsServer({"data": [{"id": "tiny"}]}) as srv:
        args.base_url = srv.base
        assert run_command(args) == 1
    out, err = capsys.readouterr()
    assert "reports no vocab_size" in err and f"below {FALLBACK_VOCAB}" in err
    table = dict(line.split(None, 1) for line in out.splitlines())
    assert table["vocab_size"] == str(FALLBACK_VOCAB) and table["failed"] == "3"


def test_requests_draw_ids_below_the_vocabulary():
    vocab = random.randrange(20, 400)
    reqs = make_requests("sharegpt-like", 20, 0, 0, vocab, seed=random.randrange(1 << 30))
    ids = [t for prompt, _ in reqs for t in prompt]
    assert ids and max(ids) < vocab and min(ids) >= 10


def test_the_api_key_is_sent_with_every_request():
    key = os.urandom(8).hex()
    heads: list[bytes] = []

    async def go(api_key):
        async def handle(reader, writer):
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.0 200 OK\r\n\r\n" + b"".join(EVENTS))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await run_benchmark(f"http://127.0.0.1:{port}", _requests(2), math.inf,
                                       None, "m", progress=False, api_key=api_key)

    assert asyncio.run(go(key))["completed"] == 2
    assert len(heads) == 2 and all(f"Authorization: Bearer {key}\r\n".encode() in h
                                   for h in heads)
    heads.clear()
    assert asyncio.run(go(None))["completed"] == 2
    assert heads and not any(b"Authorization" in h for h in heads)
