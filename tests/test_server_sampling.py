"""Logit adjustments and echo end to end: the real server (tiny model, CPU) with greedy
requests, whose outputs the adjustments must change in a way the test can predict:
- a +100 `logit_bias` makes every token the biased one (and -100 bans the greedy one);
  logprobs stay the model's own;
- `min_tokens` holds back a biased stop token until token `min_tokens + 1`, and a stop
  string until the `min_tokens`-th token;
- presence and frequency penalties turn a repeat into another token, on a prompt where the
  margin between the two is measured first (from the model's own logprobs) and the biases
  are set so that only the penalty can flip it; a repetition penalty changes some output;
- `echo` puts the prompt before the completion, streaming or not."""

from __future__ import annotations

import json
import random

import httpx
import pytest
from test_server import start_server, stop_server

from fuseinfer.models.bundled import resolve_model
from fuseinfer.runtime.tokenizer import TextTokenizer

VOCAB = 384
GREEDY = {"temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base, proc = start_server(tmp_path_factory.mktemp("cache"))
    with httpx.Client(base_url=base, timeout=60) as http:
        yield http
    stop_server(proc)


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer(resolve_model(None))


def _generate(http: httpx.Client, ids: list[int], **sampling) -> dict:
    r = http.post("/generate", json={"input_ids": ids, "sampling_params": sampling})
    assert r.status_code == 200, r.text
    return r.json()


def _complete(http: httpx.Client, **body) -> dict:
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _stream_texts(http: httpx.Client, **body) -> tuple[list[str], str | None]:
    """A streamed completion's chunk texts and its finish reason."""
    r = http.post("/v1/completions", json={**body, "stream": True})
    assert r.status_code == 200, r.text
    lines = [line for line in r.text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    choices = [json.loads(line[len("data: "):])["choices"][0] for line in lines[:-1]]
    return [c["text"] for c in choices], choices[-1]["finish_reason"]


def _prompt(rng: random.Random) -> list[int]:
    return [rng.randrange(10, VOCAB) for _ in range(rng.randrange(3, 9))]


def test_a_full_bias_makes_every_greedy_token_the_biased_one(server):
    rng = random.Random(31)
    for _ in range(3):
        prompt, n = _prompt(rng), rng.randrange(4, 10)
        plain = _generate(server, prompt, max_new_tokens=n, **GREEDY)["output_ids"]
        forced = rng.choice([t for t in range(10, VOCAB) if t != plain[0]])
        out = _generate(server, prompt, max_new_tokens=n, logit_bias={str(forced): 100},
                        **GREEDY)
        assert out["output_ids"] == [forced] * n
        banned = _generate(server, prompt, max_new_tokens=n,
                           logit_bias={str(plain[0]): -100}, **GREEDY)["output_ids"]
        assert banned[0] != plain[0] and plain[0] not in banned
        # the OpenAI endpoint maps the same field; logprobs stay the model's own: the
        # forced token was not the model's choice at the first step
        body = dict(prompt=prompt, max_tokens=n, logit_bias={str(forced): 100}, logprobs=1,
                    **GREEDY)
        lp = _complete(server, **body)["choices"][0]["logprobs"]
        assert lp["token_logprobs"][0] < max(lp["top_logprobs"][0].values()) - 1e-6
        assert len(lp["token_logprobs"]) == n


def test_min_tokens_holds_back_a_biased_stop_token(server):
    """Stop token X with a +100 bias: greedy would pick it first. EOS and X cannot be
    sampled while the output has fewer than min_tokens tokens, so tokens 1..M are others
    and token M + 1 is X, which stops the request (the stop token is part of the output)."""
    rng = random.Random(32)
    for _ in range(3):
        prompt = _prompt(rng)
        stop = rng.randrange(10, VOCAB)
        m = rng.randrange(2, 12)
        fields = dict(stop_token_ids=[stop], logit_bias={str(stop): 100}, temperature=0)
        assert _generate(server, prompt, max_new_tokens=m + 5, **fields)["output_ids"] == \
            [stop]  # without min_tokens: the first token
        out = _generate(server, prompt, max_new_tokens=m + 5, min_new_tokens=m, **fields)
        assert len(out["output_ids"]) == m + 1 and out["finish_reason"] == "stop"
        assert out["output_ids"][-1] == stop and stop not in out["output_ids"][:m]
        same = _complete(server, prompt=prompt, max_tokens=m + 5, min_tokens=m, **fields)
        assert same["usage"]["completion_tokens"] == m + 1
        assert same["choices"][0]["finish_reason"] == "stop"
        # at max_tokens == min_tokens the stop token never comes: the output is all others
        full = _generate(server, prompt, max_new_tokens=m, min_new_tokens=m, **fields)
        assert len(full["output_ids"]) == m and stop not in full["output_ids"]
        assert full["finish_reason"] == "length"


def test_min_tokens_holds_back_an_early_stop_string(server, tokenizer):
    """Every token forced to X, whose text t is one letter, and stop string t: without
    min_tokens the first token ends the choice with no text; with min_tokens M it ends at
    the M-th token, its text cut off: t * (M - 1)."""
    rng = random.Random(33)
    letters = [i for i in range(VOCAB) if len(tokenizer.decode([i])) == 1
               and tokenizer.decode([i]).isascii() and tokenizer.decode([i]).isalpha()]
    for _ in range(3):
        forced = rng.choice(letters)
        text = tokenizer.decode([forced])
        m = rng.randrange(2, 10)
        body = dict(prompt=_prompt(rng), max_tokens=m + 6, stop=[text],
                    logit_bias={str(forced): 100}, **GREEDY)
        early = _complete(server, **body)["choices"][0]
        assert early["text"] == "" and early["finish_reason"] == "stop"
        out = _complete(server, **body, min_tokens=m)
        assert out["choices"][0]["text"] == text * (m - 1)
        assert out["choices"][0]["finish_reason"] == "stop"
        assert out["usage"]["completion_tokens"] >= m
        chunks, finish = _stream_texts(server, **body, min_tokens=m)
        assert "".join(chunks) == text * (m - 1) and finish == "stop"


def _forced_logprob(http: httpx.Client, prompt: list[int], token: int) -> float:
    """The model's own log-probability of `token` after `prompt` (forced by the bias)."""
    lp = _complete(http, prompt=prompt, max_tokens=1, logit_bias={str(token): 100},
                   logprobs=0, **GREEDY)["choices"][0]["logprobs"]
    assert lp["tokens"] is not None and len(lp["token_logprobs"]) == 1
    return lp["token_logprobs"][0]


@pytest.mark.parametrize("frequency, presence", [(2, 0), (0, 2), (2, 2), (1.5, 0.75)])
def test_penalties_turn_a_repeat_into_another_token(server, frequency, presence):
    """Two tokens, A (the greedy first token) and C, both biased near +100 so that nothing
    else competes. Their logit gaps are measured after the prompt (d1 = C - A) and after
    prompt + A (d2), and the bias gap (A over C) is put in the middle of the window where
    A wins both steps without a penalty, while at step 2 A, already in the output once,
    loses to C once its logit is lowered by frequency + presence."""
    rng = random.Random(34 + int(frequency * 10) + int(presence * 100))
    penalty = frequency + presence
    for _ in range(20):  # prompts until one has a candidate C whose window is wide enough
        prompt = _prompt(rng)
        a = _generate(server, prompt, max_new_tokens=1, **GREEDY)["output_ids"][0]
        a1, a2 = _forced_logprob(server, prompt, a), _forced_logprob(server, prompt + [a], a)
        best = None
        for c in rng.sample([t for t in range(10, VOCAB) if t != a], 6):
            d1 = _forced_logprob(server, prompt, c) - a1
            d2 = _forced_logprob(server, prompt + [a], c) - a2
            low, high = max(d1, d2), d2 + penalty  # the bias gap must lie in (low, high)
            if high - low >= 1.0 and (best is None or high - low > best[2] - best[1]):
                best = (c, low, high, d2)
        if best is not None:
            break
    else:
        pytest.fail("no prompt gave a window of width 1 for the bias gap")
    c, low, high, d2 = best
    gap = (low + high) / 2
    bias = {str(a): 100.0 if gap >= 0 else 100.0 + gap,
            str(c): 100.0 - gap if gap >= 0 else 100.0}
    plain = _generate(server, prompt, max_new_tokens=2, logit_bias=bias, **GREEDY)
    assert plain["output_ids"] == [a, a]
    penalized = _generate(server, prompt, max_new_tokens=2, logit_bias=bias,
                          frequency_penalty=frequency, presence_penalty=presence, **GREEDY)
    assert penalized["output_ids"] == [a, c]
    # the OpenAI endpoint gives the same tokens, with the model's own logprobs (C's after
    # prompt + A, as measured), not the penalized ones
    lp = _complete(server, prompt=prompt, max_tokens=2, logit_bias=bias,
                   frequency_penalty=frequency, presence_penalty=presence, logprobs=0,
                   **GREEDY)["choices"][0]["logprobs"]["token_logprobs"]
    assert abs(lp[0] - a1) < 1e-3 and abs(lp[1] - (a2 + d2)) < 1e-3


def test_repetition_penalty_reaches_the_sampler(server):
    """1 changes nothing; 10 divides (or multiplies) the logit of every token seen, which
    must change some greedy output over a few prompts (the tiny model repeats itself).
    The exact outcome depends on the logits' signs, which logprobs do not show, so this
    checks that the field reaches the sampler; the runtime's tests check its arithmetic."""
    rng = random.Random(35)
    changed = 0
    for _ in range(6):
        prompt, n = _prompt(rng), 12
        plain = _generate(server, prompt, max_new_tokens=n, **GREEDY)["output_ids"]
        neutral = _generate(server, prompt, max_new_tokens=n, repetition_penalty=1.0,
                            **GREEDY)["output_ids"]
        assert neutral == plain
        strong = _generate(server, prompt, max_new_tokens=n, repetition_penalty=10.0,
                           **GREEDY)["output_ids"]
        assert len(strong) == n
        changed += strong != plain
    assert changed >= 1
    r = server.post("/generate", json={"input_ids": [1, 2], "sampling_params": {
        "repetition_penalty": 0}})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "sampling_params.repetition_penalty"


def test_echo_puts_the_prompt_first(server, tokenizer):
    rng = random.Random(36)
    words = ["quick", " scheduler", " any", "is", " for", "KV"]
    text = "".join(rng.choice(words) for _ in range(rng.randrange(2, 6)))
    ids = _prompt(rng)
    n = rng.randrange(2, 8)
    for prompt, shown in ((text, text), (ids, tokenizer.decode(ids))):
        plain = _complete(server, prompt=prompt, max_tokens=n, **GREEDY)
        echoed = _complete(server, prompt=prompt, max_tokens=n, echo=True, **GREEDY)
        assert echoed["choices"][0]["text"] == shown + plain["choices"][0]["text"]
        assert echoed["usage"] == plain["usage"]
        chunks, finish = _stream_texts(server, prompt=prompt, max_tokens=n, echo=True,
                                       **GREEDY)
        assert chunks[0].startswith(shown) and finish == "length"
        assert "".join(chunks) == shown + plain["choices"][0]["text"]
    r = server.post("/v1/completions", json={"prompt": text, "echo": True, "logprobs": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "echo"
