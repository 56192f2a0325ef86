"""The text side of `min_tokens` and `echo`, without a model: stop strings against scripted
engine tokens (a match never ends a choice before its `min_new_tokens`-th token, however
the tokens are split into steps), and `echo` through the in-process app over a stand-in
engine (the prompt text before each choice's, streaming or not; token ids shown as text
when there is no tokenizer; usage unchanged)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator

import httpx
import pytest
from test_server_auth import TOKEN, EchoEngineClient, _serve

from fuseinfer.runtime.sampling import SamplingParams
from fuseinfer.runtime.step_output import FinishReason
from fuseinfer.server.app import create_app
from fuseinfer.server.text_streams import Generation, pieces, with_echo


class CharTokenizer:
    """Token id i is the string vocab[i] (one to three characters)."""

    def __init__(self, vocab: list[str]) -> None:
        self.vocab = vocab

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.vocab[t] for t in ids)


class ScriptedClient:
    """The engine client as `pieces` uses it: the tokens arrive in the given steps, the last
    with finish LENGTH."""

    def __init__(self, steps: list[list[int]]) -> None:
        self.steps = steps
        self.params: SamplingParams | None = None

    def submit(self, prompt: list[int], params: SamplingParams) -> tuple[int, None]:
        self.params = params
        return 0, None

    async def tokens(self, rid: int, stream: None) -> AsyncIterator[tuple]:
        for i, step in enumerate(self.steps):
            yield step, FinishReason.LENGTH if i == len(self.steps) - 1 else None, []


def _run_pieces(steps: list[list[int]], tokenizer: CharTokenizer, stop: str, min_tokens: int
                ) -> tuple[str, int, FinishReason | None]:
    """(text, tokens counted, finish) of one choice."""
    async def main():
        client = ScriptedClient(steps)
        params = SamplingParams(max_new_tokens=sum(map(len, steps)), min_new_tokens=min_tokens)
        out = [p async for p in pieces(client, tokenizer, Generation(0, [1], params), [stop])]
        return "".join(p[0] for p in out), sum(p[1] for p in out), out[-1][2]

    return asyncio.run(main())


def _random_steps(rng: random.Random, tokens: list[int]) -> list[list[int]]:
    """The tokens cut into steps of 1 to 4 (a reader that falls behind gets several)."""
    steps, at = [], 0
    while at < len(tokens):
        size = rng.randrange(1, 5) if rng.random() < 0.5 else 1
        steps.append(tokens[at:at + size])
        at += size
    return steps


@pytest.mark.parametrize("trial", range(60))
def test_stop_strings_never_end_a_choice_before_min_tokens(trial):
    rng = random.Random(1000 + trial)
    vocab = ["".join(rng.choice("ab") for _ in range(rng.randrange(1, 4))) for _ in range(12)]
    tokenizer = CharTokenizer(vocab)
    tokens = [rng.randrange(len(vocab)) for _ in range(rng.randrange(8, 40))]
    texts = [vocab[t] for t in tokens]
    full = "".join(texts)
    stop = "".join(rng.choice("ab") for _ in range(rng.randrange(1, 5)))
    min_tokens = rng.randrange(0, len(tokens) + 1)
    steps = _random_steps(rng, tokens)
    text, count, finish = _run_pieces(steps, tokenizer, stop, min_tokens)

    # a match must end past the text of the first min_tokens - 1 tokens
    shielded = len("".join(texts[:max(min_tokens - 1, 0)]))
    at = full.find(stop, max(shielded - len(stop) + 1, 0))
    if at < 0:
        assert (text, count, finish) == (full, len(tokens), FinishReason.LENGTH)
        return
    assert text == full[:at] and finish is FinishReason.STOP
    # the choice ended in the step of the token that completed the match
    ends = [len("".join(texts[:k + 1])) for k in range(len(tokens))]
    last = next(k for k, end in enumerate(ends) if end >= at + len(stop))
    assert last + 1 >= min_tokens  # never before the min_tokens-th token
    through, step_ends = 0, []
    for s in steps:
        through += len(s)
        step_ends.append(through)
    assert count == next(e for e in step_ends if e > last)


def test_an_early_stop_string_waits_for_min_tokens():
    """One token repeated, whose text is the stop string: without min_tokens the first
    token ends the choice; with it, the min_tokens-th does (its text cut off)."""
    rng = random.Random(17)
    # distinct letters: no match can start inside a copy of the word
    word = "".join(rng.sample("xyz", rng.randrange(1, 4)))
    tokenizer = CharTokenizer([word])
    n = rng.randrange(10, 30)
    steps = _random_steps(rng, [0] * n)
    assert _run_pieces(steps, tokenizer, word, 0)[::2] == ("", FinishReason.STOP)
    assert _run_pieces(steps, tokenizer, word, 1)[::2] == ("", FinishReason.STOP)
    m = rng.randrange(2, n)
    text, count, finish = _run_pieces(steps, tokenizer, word, m)
    assert text == word * (m - 1) and finish is FinishReason.STOP and count >= m


def test_with_echo_puts_the_prompt_before_each_choices_first_piece():
    rng = random.Random(18)
    prompts = {i: "".join(rng.choice("pq r") for _ in range(rng.randrange(1, 8)))
               for i in range(3)}
    source = [(i, f"<{i}.{k}>", 1, None, []) for k in range(3) for i in range(3)]

    async def main() -> list[tuple]:
        async def gen():
            for piece in source:
                yield piece
        return [p async for p in with_echo(gen(), prompts.__getitem__)]

    out = asyncio.run(main())
    assert [p[2:] for p in out] == [p[2:] for p in source]  # counts and finishes as they were
    for i in range(3):
        assert "".join(p[1] for p in out if p[0] == i) == prompts[i] + "".join(
            f"<{i}.{k}>" for k in range(3))


@pytest.fixture(scope="module")
def plain_app():
    """The app over the stand-in engine (every token is TOKEN), with no tokenizer."""
    engine = EchoEngineClient()
    for base in _serve(create_app(engine, "echo", None)):
        yield base, engine


def _events(r: httpx.Response) -> list[dict]:
    lines = [line for line in r.text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[len("data: "):]) for line in lines[:-1]]


def test_echo_of_token_ids_without_a_tokenizer(plain_app):
    base, _ = plain_app
    rng = random.Random(19)
    prompts = [[rng.randrange(384) for _ in range(rng.randrange(1, 6))] for _ in range(2)]
    n, max_tokens = rng.randrange(1, 4), rng.randrange(1, 5)
    body = {"prompt": prompts, "n": n, "max_tokens": max_tokens, "echo": True}
    whole = httpx.post(base + "/v1/completions", json=body, timeout=10).json()
    # without a tokenizer an id's text is its number (as in logprobs); the completion's
    # own text is empty
    want = ["".join(map(str, p)) for p in prompts for _ in range(n)]
    assert [c["text"] for c in whole["choices"]] == want
    assert whole["usage"] == {"prompt_tokens": sum(map(len, prompts)),
                              "completion_tokens": 2 * n * max_tokens,
                              "total_tokens": sum(map(len, prompts)) + 2 * n * max_tokens}
    stream = httpx.post(base + "/v1/completions", json={**body, "stream": True}, timeout=10)
    events = _events(stream)
    for i, text in enumerate(want):
        mine = [e["choices"][0]["text"] for e in events if e["choices"][0]["index"] == i]
        assert mine[0] == text and "".join(mine[1:]) == ""  # the first chunk carries it
    plain = httpx.post(base + "/v1/completions", json={**body, "echo": False}, timeout=10)
    assert [c["text"] for c in plain.json()["choices"]] == [""] * (2 * n)


def test_echo_with_logprobs_is_refused_over_http(plain_app):
    base, engine = plain_app
    before = len(engine.submitted)
    r = httpx.post(base + "/v1/completions", timeout=10,
                   json={"prompt": [1, 2], "echo": True, "logprobs": 1})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "echo" and "unsupported" in error["message"]
    assert len(engine.submitted) == before


@pytest.fixture(scope="module")
def text_app():
    """The app over the stand-in engine with the tiny model's tokenizer."""
    from fuseinfer.models.bundled import resolve_model
    from fuseinfer.runtime.tokenizer import TextTokenizer

    tokenizer = TextTokenizer(resolve_model(None))
    for base in _serve(create_app(EchoEngineClient(), "echo", tokenizer)):
        yield base, tokenizer


def test_echo_of_text_and_of_token_ids(text_app):
    base, tokenizer = text_app
    rng = random.Random(20)
    words = ["quick", " scheduler", "is", " any", "é", " 你好", "\n"]
    text = "".join(rng.choice(words) for _ in range(rng.randrange(2, 6)))
    ids = tokenizer.encode("".join(rng.choice(words) for _ in range(rng.randrange(2, 6))))
    max_tokens = rng.randrange(1, 6)
    completion = tokenizer.decode([TOKEN] * max_tokens)
    body = {"prompt": [text, tokenizer.decode(ids)], "max_tokens": max_tokens, "echo": True}
    for prompt, echoed in ((text, text), (ids, tokenizer.decode(ids))):
        one = {"prompt": prompt, "max_tokens": max_tokens, "echo": True}
        whole = httpx.post(base + "/v1/completions", json=one, timeout=10).json()
        assert whole["choices"][0]["text"] == echoed + completion
        assert whole["usage"]["completion_tokens"] == max_tokens
        events = _events(httpx.post(base + "/v1/completions", json={**one, "stream": True},
                                    timeout=10))
        assert events[0]["choices"][0]["text"].startswith(echoed)
        assert "".join(e["choices"][0]["text"] for e in events) == echoed + completion
    batch = httpx.post(base + "/v1/completions", json=body, timeout=10).json()
    assert [c["text"] for c in batch["choices"]] == [p + completion for p in body["prompt"]]
