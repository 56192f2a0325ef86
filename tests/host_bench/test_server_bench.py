"""The server's host work per token and per engine step, without an engine or HTTP.

Per token of one stream, on a stream already N tokens long (N = 64 and 1024; `requests` is
N, so the 64 -> 1024 growth ratio is near 1/16 when the cost does not grow with N); a
measured call takes the stream's next TOKENS tokens one at a time (`units`), so that the
per-token cost is not one token's:
- `server.detokenize`: the incremental detokenizer (the bundled tiny model's byte-level
  BPE tokenizer) turning one more token into text;
- `server.stop_scan`: one token through `text_streams.pieces` with four stop strings,
  its text from a table (so the stop-string scan and the generator are what is timed);
- `server.sse_chunk`: one streaming event (`ChunkEncoder.choice`);
- `server.per_token`: all of it, as the completions route does it: the real detokenizer,
  the stop strings, the finish reason and the event (target 10 µs).
The async generators are stepped by hand (`send(None)`): nothing they await suspends.

Per engine step, `server.engine_round` for 64, 256 and 1024 streams with one new token
each: the engine process's `report` builds the step's `StepTokens`, it is pickled as the
process queue does and unpickled, and the HTTP side's `_route` puts each stream's tokens
in its queue (target 1 ms at 256 streams). The pipe between the processes is not timed.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import queue
import random
from multiprocessing.reduction import ForkingPickler

import pytest
from conventions import SEED, tag  # tests/host_bench is on sys.path
from engine_stand_ins import StandInRequest  # tests/ is on sys.path

from fuseinfer.models.tiny_model import tiny_model_path
from fuseinfer.runtime.sampling import SamplingParams
from fuseinfer.runtime.step_output import RequestDelta
from fuseinfer.runtime.tokenizer import IncrementalDetokenizer, TextTokenizer
from fuseinfer.server.engine_client import EngineClient, Stream
from fuseinfer.server.engine_process import EngineLoop
from fuseinfer.server.messages import Ready
from fuseinfer.server.openai_format import openai_finish_reason
from fuseinfer.server.sse import ChunkEncoder
from fuseinfer.server.text_streams import Generation, pieces

LENGTHS = (64, 1024)  # tokens already in the stream
STREAMS = (64, 256, 1024)
STOPS = ["\n\nUser:", "<|im_end|>", "###", "</answer>"]  # none of them in the text
TOKENS = 16  # tokens per measured call of a per-token benchmark
ROUNDS = 200  # measured rounds of a per-token benchmark (each on a fresh stream)
PER_TOKEN_TARGET_US = 10.0
ROUND_TARGET_US = 1000.0
WORDS = ("the model streams tokens to every client while the scheduler batches requests; "
         "naïve café déjà-vu Größe 你好 世界 数据 🙂 🚀 — “quoted” text, numbers 3.14159 "
         "and code: def f(x): return x * 2\n").split(" ")


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer(tiny_model_path())


@pytest.fixture(scope="module")
def stream_ids(tokenizer) -> list[int]:
    """A long generated text's token ids: words (multi-byte ones included, which the tiny
    vocabulary splits across tokens) in a seeded order."""
    rng = random.Random(SEED)
    text = " ".join(rng.choice(WORDS) for _ in range(900))
    ids = tokenizer.encode(text)
    assert len(ids) > LENGTHS[-1] + TOKENS and not any(s in text for s in STOPS)
    return ids


@pytest.fixture(scope="module")
def reference_texts(tokenizer, stream_ids) -> list[str]:
    """Each token's new text the slow, obviously right way: decode the whole stream each
    time, holding back a trailing incomplete character."""
    out, sent = [], 0
    for n in range(1, LENGTHS[-1] + TOKENS + 1):
        text = tokenizer.decode(stream_ids[:n])
        if text.endswith("\ufffd"):
            out.append("")
            continue
        out.append(text[sent:])
        sent = len(text)
    return out


def _step(agen):
    """The next item of an async generator that never suspends, without an event loop."""
    coro = agen.__anext__()
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the generator waited for something")


def _close(agen) -> None:
    try:
        agen.aclose().send(None)
    except StopIteration:
        pass


class _ScriptedClient:
    """EngineClient's submit/tokens for `pieces`: one token per step, never finishing."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def submit(self, prompt, params):
        return 0, None

    async def tokens(self, rid, stream):
        for t in self.ids:
            yield [t], None, []


class _TableTokenizer:
    """Decodes each id to a fixed short string: text for `pieces` at almost no cost."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(f"w{i % 97} " for i in ids)


def _new_shown(before: str, after: str) -> str:
    """What a stream with STOPS shows when its text grows from `before` to `after`: text
    that could start a stop string (up to 9 characters) is held back."""
    hold = max(map(len, STOPS)) - 1
    return after[:max(len(after) - hold, 0)][max(len(before) - hold, 0):]


def _stream_at(tokenizer, ids: list[int], n: int, client=None):
    """`pieces` of one choice with STOPS, already past its first n tokens (read from
    `client`, by default a _ScriptedClient of `ids`)."""
    gen = Generation(0, [1, 2, 3], SamplingParams(max_new_tokens=4096))
    agen = pieces(client or _ScriptedClient(ids), tokenizer, gen, STOPS)
    for _ in range(n):
        _step(agen)
    return agen


# ---- per token ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", LENGTHS)
def test_detokenize_one_token(benchmark, tokenizer, stream_ids, reference_texts, n):
    tag(benchmark, "server.detokenize", n, units=TOKENS, stream_tokens=n)
    primed = IncrementalDetokenizer(tokenizer)
    for t in stream_ids[:n]:
        primed.add(t)
    got = []

    def setup():  # a copy of the primed detokenizer (its lists copied, not shared)
        detok = object.__new__(IncrementalDetokenizer)
        detok.__dict__.update({k: list(v) if isinstance(v, list) else v
                               for k, v in vars(primed).items()})
        return (detok,), {}

    def add(detok):
        got.append([detok.add(t) for t in stream_ids[n:n + TOKENS]])

    benchmark.pedantic(add, setup=setup, rounds=ROUNDS, warmup_rounds=5)
    assert all(g == reference_texts[n:n + TOKENS] for g in got)


@pytest.mark.parametrize("n", LENGTHS)
def test_stop_scan_one_token(benchmark, n):
    tag(benchmark, "server.stop_scan", n, units=TOKENS, stream_tokens=n, stops=len(STOPS))
    ids = list(range(n + TOKENS))
    got = []

    def setup():
        return (_stream_at(_TableTokenizer(), ids, n),), {}

    def tokens(agen):
        got.append([_step(agen) for _ in range(TOKENS)])

    benchmark.pedantic(tokens, setup=setup, teardown=_close, rounds=ROUNDS,
                       warmup_rounds=5)
    table = _TableTokenizer()
    expected = [(_new_shown(table.decode(ids[:k]), table.decode(ids[:k + 1])), 1, None, [])
                for k in range(n, n + TOKENS)]
    assert all(g == expected for g in got)


@pytest.mark.parametrize("n", LENGTHS)
def test_sse_chunk_one_token(benchmark, reference_texts, n):
    tag(benchmark, "server.sse_chunk", n, stream_tokens=n)
    encoder = ChunkEncoder("chatcmpl-0123456789abcdef01234567", 1_767_225_600, "tiny", True)
    text = reference_texts[n]
    event = benchmark(encoder.choice, 0, text, None)
    assert event.startswith("data: {") and event.endswith("}\n\n")
    body = json.loads(event[len("data: "):])
    assert body["choices"][0]["delta"]["content"] == text


class _QueuedClient:
    """The real EngineClient.tokens over a stream whose queue holds the engine's items for
    every token already (so reading one never waits): what `pieces` reads per token."""

    def __init__(self, client: EngineClient, ids: list[int]) -> None:
        self.client, self.ids = client, ids

    def submit(self, prompt, params):
        stream = Stream(len(prompt), asyncio.Queue())
        for t in self.ids:
            stream.queue.put_nowait(([t], None, []))
        return 0, stream

    def tokens(self, rid, stream):
        return self.client.tokens(rid, stream)


@pytest.mark.parametrize("n", LENGTHS)
def test_per_token_path(benchmark, client, tokenizer, stream_ids, reference_texts, n):
    """One token of a streaming chat completion with stop strings, from the engine
    client's queue to the event: read (with the latency metrics), detokenized, stop strings
    scanned, encoded."""
    tag(benchmark, "server.per_token", n, units=TOKENS, target_us=PER_TOKEN_TARGET_US,
        stream_tokens=n, stops=len(STOPS))
    encoder = ChunkEncoder("chatcmpl-0123456789abcdef01234567", 1_767_225_600, "tiny", True)
    source = _QueuedClient(client, stream_ids[:n + TOKENS])
    events = []

    def setup():
        return (_stream_at(tokenizer, stream_ids, n, source),), {}

    def tokens(agen):
        for _ in range(TOKENS):
            text, _, finish, _ = _step(agen)
            events.append(encoder.choice(0, text, openai_finish_reason(finish), "null"))

    benchmark.pedantic(tokens, setup=setup, teardown=_close, rounds=ROUNDS // 2,
                       warmup_rounds=2)
    expected = [encoder.choice(0, _new_shown("".join(reference_texts[:k]),
                                             "".join(reference_texts[:k + 1])), None)
                for k in range(n, n + TOKENS)]
    assert events == expected * (len(events) // TOKENS) and events

def test_detokenizer_matches_a_whole_decode(tokenizer, stream_ids, reference_texts):
    """Over the whole stream, token by token: the same text as decoding everything."""
    detok = IncrementalDetokenizer(tokenizer)
    assert [detok.add(t) for t in stream_ids[:len(reference_texts)]] == reference_texts


def test_pieces_show_the_text_less_what_could_start_a_stop(tokenizer, stream_ids,
                                                           reference_texts):
    agen = _stream_at(tokenizer, stream_ids, 0)
    shown = "".join(_step(agen)[0] for _ in reference_texts)
    _close(agen)
    text = "".join(reference_texts)
    hold = max(map(len, STOPS)) - 1
    assert shown == text[:len(text) - hold]


# ---- per engine step ---------------------------------------------------------------------
class _Outbox(list):
    put = list.append


class _SameThreadLoop:
    """The event loop's call_soon_threadsafe, run at once (the queues need no loop)."""

    def call_soon_threadsafe(self, fn, *args):
        fn(*args)


@pytest.fixture(scope="module")
def client():
    # its reader thread waits on an outbox nothing is put in; the rounds call _route
    return EngineClient(queue.Queue(), queue.Queue(), Ready(4096, (2,), 384))


@pytest.mark.parametrize("n", STREAMS)
def test_engine_message_round(benchmark, client, n):
    tag(benchmark, "server.engine_round", n, target_us=ROUND_TARGET_US if n == 256 else None,
        streams=n)
    outbox = _Outbox()
    engine_loop = EngineLoop(None, outbox)
    rng = random.Random(SEED)
    loop = _SameThreadLoop()
    streams = []
    client.streams.clear()
    for k in range(n):  # engine rid 1000 + k is HTTP rid k
        engine_loop.live[k] = StandInRequest(1000 + k)
        engine_loop.rid_of[1000 + k] = k
        streams.append(Stream(prompt_len=rng.randrange(96, 224), queue=asyncio.Queue()))
        client.streams[k] = (loop, streams[-1])
    deltas = [RequestDelta(1000 + k, [rng.randrange(3, 384)], []) for k in range(n)]

    def round_():
        engine_loop.report(deltas)  # engine process: one message for the step
        data = ForkingPickler.dumps(outbox.pop())  # what the process queue sends
        client._route(pickle.loads(data))  # HTTP process: each stream's tokens to its queue

    def drain():  # what each stream's consumer does
        for s in streams:
            s.queue.get_nowait()

    benchmark.pedantic(round_, teardown=drain, rounds=ROUNDS, warmup_rounds=5)
    assert not outbox and not engine_loop.aborted
    round_()
    got = [s.queue.get_nowait() for s in streams]
    assert got == [(d.new_tokens, None, []) for d in deltas]
    client.streams.clear()
