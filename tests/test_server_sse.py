"""The hand-encoded SSE chunks parse as the JSON OpenAI clients expect, whatever the text
(quotes, newlines, control characters, non-ASCII), for chat and completions."""

from __future__ import annotations

import json
import random

import pytest

from fuseinfer.server.sse import DONE, ChunkEncoder, error_event

ALPHABET = 'ab "\\\n\t\x00\x1fé漢🙂</script>{}[],:'


def _event(line: str) -> dict:
    assert line.startswith("data: ") and line.endswith("\n\n") and "\n" not in line[:-2]
    return json.loads(line[len("data: "):])


@pytest.mark.parametrize("chat", [False, True])
def test_choice_chunks_parse_as_openai_chunks(chat):
    rng = random.Random(3 + chat)
    cid = f"id-{rng.randrange(10**6)}"
    created = rng.randrange(2**31)
    enc = ChunkEncoder(cid, created, 'model "x"', chat)
    for _ in range(200):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 12)))
        index = rng.randrange(64)
        finish = rng.choice([None, "stop", "length"])
        lps = rng.choice([None, {"tokens": [text], "token_logprobs": [-rng.random()]}])
        line = enc.choice(index, text, finish, "null" if lps is None else json.dumps(lps))
        want_choice = {"index": index, "logprobs": lps, "finish_reason": finish}
        want_choice |= {"delta": {"content": text}} if chat else {"text": text}
        assert _event(line) == {
            "id": cid, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created, "model": 'model "x"', "choices": [want_choice]}


def test_usage_error_and_done_events():
    enc = ChunkEncoder("c1", 5, "m", chat=False)
    usage = _event(enc.usage(prompt_tokens=17, completion_tokens=4))
    assert usage["choices"] == [] and usage["id"] == "c1"
    assert usage["usage"] == {"prompt_tokens": 17, "completion_tokens": 4, "total_tokens": 21}
    body = {"error": {"message": 'the "x"\nfailed', "type": "timeout", "param": None,
                      "code": None}}
    assert _event(error_event(body)) == body
    assert DONE == "data: [DONE]\n\n"


def test_unknown_finish_reasons_are_refused():
    enc = ChunkEncoder("c", 0, "m", chat=True)
    for bad in ("abort", "rejected", "rejected: too long"):
        with pytest.raises(KeyError):
            enc.choice(0, "", bad)
