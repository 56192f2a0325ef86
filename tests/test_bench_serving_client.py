"""The serving benchmark's stream client against hand-made responses: chunked and
unchunked bodies, an error status, and a stream cut off before [DONE] (a lost request)."""

from __future__ import annotations

import asyncio

import pytest

from fuseinfer.bench.e2e.serving import _one

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
