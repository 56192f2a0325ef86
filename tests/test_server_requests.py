"""The server's request side without a server: the request models (the forms OpenAI clients
send, and the field each bad input is reported under), the sampling range checks reported
in the request's own names, the choices of a batched request, and finish reasons in
OpenAI's terms."""

from __future__ import annotations

import json
import random

import pytest

from fuseinfer.runtime.sampling import SamplingParams
from fuseinfer.runtime.step_output import FinishReason
from fuseinfer.server.completion_service import CompletionJob
from fuseinfer.server.errors import ApiError
from fuseinfer.server.messages import Finish
from fuseinfer.server.openai_format import finish_error, format_logprobs, openai_finish_reason
from fuseinfer.server.request_models import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerateRequest,
    GenerateSamplingFields,
    parse_body,
)


def _parse(model, body):
    return parse_body(model, json.dumps(body).encode())


def test_chat_content_as_text_parts():
    rng = random.Random(1)
    words = ["".join(rng.choice("abcxyz é") for _ in range(rng.randrange(1, 9)))
             for _ in range(3)]
    parts = [{"type": "text", "text": w} for w in words]
    req = _parse(ChatCompletionRequest, {"messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": parts, "name": "ann"}]})
    assert [m.content for m in req.messages] == ["be brief", "\n".join(words)]
    # keys the server does not use reach the chat template as sent
    assert req.messages[1].model_dump() == {"role": "user", "content": "\n".join(words),
                                            "name": "ann"}


@pytest.mark.parametrize("content", [
    [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
    [{"type": "text"}], [{"type": "text", "text": 5}], ["hi"], 7, None])
def test_chat_content_other_than_text_is_refused(content):
    with pytest.raises(ApiError) as err:
        _parse(ChatCompletionRequest, {"messages": [{"role": "user", "content": content}]})
    assert err.value.param == "messages" and err.value.status == 400


def test_prompt_forms():
    rng = random.Random(2)
    ids = [rng.randrange(384) for _ in range(rng.randrange(1, 9))]
    more = [rng.randrange(384) for _ in range(rng.randrange(1, 9))]
    for prompt, want in [("hi", ["hi"]), (ids, [ids]), (["a", "b c"], ["a", "b c"]),
                         ([ids, more], [ids, more])]:
        assert _parse(CompletionRequest, {"prompt": prompt}).prompt == want


@pytest.mark.parametrize("prompt", [12, [], [[]], [1, "a"], [[1], "a"], [True, 2],
                                    [[1.5]], {"text": "x"}, None])
def test_bad_prompts_name_the_prompt(prompt):
    with pytest.raises(ApiError) as err:
        _parse(CompletionRequest, {"prompt": prompt})
    assert err.value.param == "prompt" and err.value.status == 400


@pytest.mark.parametrize("model, body, param", [
    (CompletionRequest, {"prompt": "x", "max_tokens": "3"}, "max_tokens"),
    (CompletionRequest, {"prompt": "x", "max_tokens": 2.0}, "max_tokens"),
    (CompletionRequest, {"prompt": "x", "temperature": True}, "temperature"),
    (CompletionRequest, {"prompt": "x", "n": 17}, "n"),
    (CompletionRequest, {"prompt": "x", "stop": [1]}, "stop"),
    (CompletionRequest, {"prompt": "x", "stop_token_ids": "2"}, "stop_token_ids"),
    (CompletionRequest, {"prompt": "x", "stream_options": {"include_usage": "yes"}},
     "stream_options"),
    (ChatCompletionRequest, {"messages": []}, "messages"),
    (ChatCompletionRequest, {"messages": [{"content": "x"}]}, "messages"),
    (GenerateRequest, {"input_ids": [1], "sampling_params": {"top_k": "2"}},
     "sampling_params.top_k"),
    (GenerateRequest, {"input_ids": "abc"}, "input_ids"),
    (CompletionRequest, [1, 2], None),
])
def test_bad_types_name_their_field(model, body, param):
    with pytest.raises(ApiError) as err:
        _parse(model, body)
    assert err.value.param == param and err.value.message
    assert err.value.body()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("model, body, param", [
    (CompletionRequest, {"prompt": "x", "stream": "yes"}, "stream"),
    (CompletionRequest, {"prompt": "x", "stream": 1}, "stream"),
    (CompletionRequest, {"prompt": "x", "ignore_eos": "true"}, "ignore_eos"),
    (CompletionRequest, {"prompt": "x", "max_tokens": True}, "max_tokens"),
    (CompletionRequest, {"prompt": "x", "seed": False}, "seed"),
    (CompletionRequest, {"prompt": "x", "top_p": True}, "top_p"),
    (CompletionRequest, {"prompt": "x", "logprobs": 1.0}, "logprobs"),
    (CompletionRequest, {"prompt": "x", "stream_options": 3}, "stream_options"),
    (CompletionRequest, {"prompt": "x", "stream_options": [True]}, "stream_options"),
    (CompletionRequest, {"prompt": "x", "stop_token_ids": [True]}, "stop_token_ids"),
    (CompletionRequest, {"prompt": "x", "stop_token_ids": [2.0]}, "stop_token_ids"),
    (CompletionRequest, {"prompt": [[1, 2], [False]]}, "prompt"),
    (ChatCompletionRequest, {"messages": [{"role": "u", "content": "x"}], "logprobs": 1},
     "logprobs"),
    (ChatCompletionRequest, {"messages": [{"role": "u", "content": "x"}], "n": 2.0}, "n"),
    (GenerateRequest, {"input_ids": [1], "sampling_params": [1]}, "sampling_params"),
    (GenerateRequest, {"input_ids": [1], "sampling_params": "greedy"}, "sampling_params"),
    (GenerateRequest, {"input_ids": [1, True]}, "input_ids"),
    (GenerateRequest, {"input_ids": [1, 2.0]}, "input_ids"),
    (GenerateRequest, {"input_ids": [1], "sampling_params": {"ignore_eos": "no"}},
     "sampling_params.ignore_eos"),
])
def test_strict_types_name_their_field(model, body, param):
    with pytest.raises(ApiError) as err:
        _parse(model, body)
    assert err.value.param == param and err.value.status == 400


@pytest.mark.parametrize("raw, param", [
    (b'{"prompt": "x", "temperature": NaN}', "temperature"),
    (b'{"prompt": "x", "top_p": Infinity}', "top_p"),
    (b'{"prompt": "x", "min_p": -Infinity}', "min_p"),
])
def test_non_finite_numbers_are_refused(raw, param):
    with pytest.raises(ApiError) as err:
        parse_body(CompletionRequest, raw)
    assert err.value.param == param


@pytest.mark.parametrize("model, field, value", [
    (CompletionRequest, "presence_penalty", 0.5), (CompletionRequest, "frequency_penalty", -1),
    (CompletionRequest, "repetition_penalty", 1.2), (CompletionRequest, "logit_bias", {"5": 3}),
    (CompletionRequest, "min_tokens", 4), (CompletionRequest, "echo", True),
    (CompletionRequest, "best_of", 3), (CompletionRequest, "suffix", "end"),
    (CompletionRequest, "presence_penalty", False),  # not a number, so not the neutral 0
    (ChatCompletionRequest, "tools", [{"type": "function"}]),
    (ChatCompletionRequest, "tool_choice", "auto"),
    (ChatCompletionRequest, "response_format", {"type": "json_object"}),
    (ChatCompletionRequest, "frequency_penalty", 0.1),
    (ChatCompletionRequest, "modalities", ["text", "audio"]),
    (ChatCompletionRequest, "audio", {"voice": "x"}),
])
def test_unimplemented_openai_fields_are_refused_by_name(model, field, value):
    base = {"prompt": "x"} if model is CompletionRequest else \
        {"messages": [{"role": "u", "content": "x"}]}
    with pytest.raises(ApiError) as err:
        _parse(model, {**base, field: value})
    assert err.value.param == field and "unsupported" in err.value.message


@pytest.mark.parametrize("model, neutral", [
    (CompletionRequest, {"prompt": "x", "presence_penalty": 0.0, "frequency_penalty": 0,
                         "repetition_penalty": 1.0, "echo": False, "best_of": 1,
                         "suffix": None, "min_tokens": 0}),
    (ChatCompletionRequest, {"messages": [{"role": "u", "content": "x"}], "tools": [],
                             "tool_choice": "none", "response_format": {"type": "text"},
                             "modalities": ["text"], "user": "u", "store": False}),
])
def test_unimplemented_fields_at_their_neutral_values_are_accepted(model, neutral):
    rng = random.Random(7)
    max_tokens = rng.randrange(1, 99)
    req = _parse(model, {**neutral, "max_tokens": max_tokens})
    assert req.sampling_params(16) == SamplingParams(max_new_tokens=max_tokens)


def test_generate_takes_the_runtime_names_and_refuses_unknown_keys():
    rng = random.Random(8)
    n = rng.randrange(1, 99)
    for fields in ({"max_new_tokens": n}, {"max_tokens": n}, {"max_new_tokens": n,
                                                             "max_tokens": n}):
        req = _parse(GenerateRequest, {"input_ids": [1], "sampling_params": fields})
        assert req.sampling_params.sampling_params(128).max_new_tokens == n
    assert GenerateSamplingFields().sampling_params(128).max_new_tokens == 128
    req = _parse(GenerateRequest, {"input_ids": [1], "sampling_params": {
        "max_new_tokens": n, "max_tokens": n + 1}})
    with pytest.raises(ApiError) as err:
        req.sampling_params.sampling_params(128, prefix="sampling_params.")
    assert err.value.param == "sampling_params.max_tokens"
    for body, param in [({"input_ids": [1], "prompt": "x"}, "prompt"),
                        ({"input_ids": [1], "sampling_params": {"presence_penalty": 0}},
                         "sampling_params.presence_penalty"),
                        ({"input_ids": [1], "sampling_params": {"logprobs": 2}},
                         "sampling_params.logprobs")]:
        with pytest.raises(ApiError) as err:
            _parse(GenerateRequest, body)
        assert err.value.param == param and "not a known field" in err.value.message


def test_max_tokens_under_two_names_must_agree():
    rng = random.Random(9)
    a = rng.randrange(1, 50)
    req = _parse(CompletionRequest, {"prompt": "x", "max_tokens": a,
                                     "max_completion_tokens": a + rng.randrange(1, 9)})
    with pytest.raises(ApiError) as err:
        req.sampling_params(16)
    assert err.value.param == "max_completion_tokens"
    same = _parse(CompletionRequest, {"prompt": "x", "max_tokens": a,
                                      "max_completion_tokens": a})
    assert same.sampling_params(16).max_new_tokens == a


def test_nulls_and_unknown_fields_mean_not_given():
    req = _parse(CompletionRequest, {"prompt": "x", "max_tokens": None, "temperature": None,
                                     "n": None, "stop": None, "presence_penalty": 0,
                                     "logit_bias": {}, "user": "u", "metadata": {"a": 1}})
    params = req.sampling_params(16)
    assert params == SamplingParams(max_new_tokens=16)
    assert req.choices_per_prompt == 1 and req.stop == []


@pytest.mark.parametrize("body, param", [
    ({"max_tokens": 0}, "max_tokens"), ({"max_completion_tokens": -2}, "max_completion_tokens"),
    ({"temperature": -0.5}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"min_p": 1.1}, "min_p"), ({"top_k": -3}, "top_k"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
])
def test_ranges_are_checked_by_sampling_params_under_the_request_names(body, param):
    req = _parse(ChatCompletionRequest, {"messages": [{"role": "u", "content": "x"}], **body})
    with pytest.raises(ApiError) as err:
        req.sampling_params(16, req.logprobs_k, logprobs_name="top_logprobs")
    assert err.value.param == param and f"'{param}'" in err.value.message


def test_sampling_fields_reach_the_params():
    rng = random.Random(4)
    body = {"max_tokens": rng.randrange(1, 99), "temperature": rng.random(),
            "top_p": rng.uniform(0.1, 1), "top_k": rng.randrange(1, 50), "min_p": rng.random(),
            "seed": rng.randrange(2**40), "stop_token_ids": [rng.randrange(384)],
            "ignore_eos": True, "logprobs": rng.randrange(0, 21)}
    req = _parse(CompletionRequest, {"prompt": "x", **body})
    assert req.sampling_params(16, req.logprobs) == SamplingParams(
        max_new_tokens=body["max_tokens"], temperature=body["temperature"],
        top_p=body["top_p"], top_k=body["top_k"], min_p=body["min_p"], seed=body["seed"],
        stop_token_ids=tuple(body["stop_token_ids"]), ignore_eos=True,
        logprobs=body["logprobs"])
    chat = _parse(ChatCompletionRequest, {"messages": [{"role": "u", "content": "x"}],
                                          "max_completion_tokens": 9, "logprobs": True})
    assert chat.sampling_params(16, chat.logprobs_k).max_new_tokens == 9
    assert chat.logprobs_k == 0


def test_batched_choices_are_indexed_prompt_major_and_seeded_per_choice():
    rng = random.Random(5)
    prompts = [[rng.randrange(384) for _ in range(rng.randrange(1, 6))] for _ in range(3)]
    seed = rng.randrange(2**40)
    job = CompletionJob(chat=False, prompts=prompts, params=SamplingParams(seed=seed), n=4,
                        stops=[], stream=False, include_usage=False)
    gens = job.generations()
    assert [g.index for g in gens] == list(range(12))
    for g in gens:
        assert g.prompt is prompts[g.index // 4]
        assert g.params.seed == seed + g.index % 4  # the seed it gets when sent alone
    assert job.prompt_tokens == sum(map(len, prompts))
    unseeded = CompletionJob(chat=False, prompts=prompts[:1], params=SamplingParams(), n=2,
                             stops=[], stream=True, include_usage=False)
    assert [g.params.seed for g in unseeded.generations()] == [None, None]


def test_finish_reasons_in_openai_terms():
    known = {"stop", "length"}  # what OpenAI clients know of the reasons we produce
    for reason in FinishReason:
        error = finish_error(Finish(reason, "why"))
        if error is None:
            got = openai_finish_reason(reason)
            assert got in known and type(got) is str
        else:
            with pytest.raises(ValueError):
                openai_finish_reason(reason)
    assert openai_finish_reason(FinishReason.STOP) == "stop"
    assert openai_finish_reason(FinishReason.LENGTH) == "length"
    assert openai_finish_reason(None) is None
    rejected = finish_error(Finish(FinishReason.REJECTED, "needs 9 KV pages, the pool holds 4"))
    assert rejected.status == 400 and rejected.kind == "invalid_request_error"
    assert "needs 9 KV pages" in rejected.message
    aborted = finish_error(Finish(FinishReason.ABORT))
    assert aborted.status == 500 and aborted.kind == "server_error"


def test_logprobs_formats():
    rng = random.Random(6)
    items = [(t, (-rng.random(), [(u, -rng.random()) for u in rng.sample(range(9), 2)]))
             for t in rng.sample(range(9), 4)]
    text = {i: "tok" + "x" * i for i in range(9)}.__getitem__
    legacy = format_logprobs(items, chat=False, token_text=text, offset=3)
    assert legacy["tokens"] == [text(t) for t, _ in items]
    assert legacy["token_logprobs"] == [lp for _, (lp, _) in items]
    assert legacy["top_logprobs"] == [{text(u): v for u, v in top} for _, (_, top) in items]
    lengths = [len(text(t)) for t, _ in items]
    assert legacy["text_offset"] == [3 + sum(lengths[:i]) for i in range(4)]
    chat = format_logprobs(items, chat=True, token_text=text)["content"]
    assert [c["token"] for c in chat] == legacy["tokens"]
    assert chat[0]["bytes"] == list(text(items[0][0]).encode())
    assert [len(c["top_logprobs"]) for c in chat] == [2] * 4


def test_text_too_large_for_the_context_is_refused_before_tokenizing():
    from types import SimpleNamespace

    from fuseinfer.models.bundled import resolve_model
    from fuseinfer.runtime.tokenizer import TextTokenizer
    from fuseinfer.server.completion_service import CompletionService
    from fuseinfer.server.messages import Ready
    from fuseinfer.server.text_budget import max_prompt_bytes, utf8_size

    tokenizer = TextTokenizer(resolve_model(None))
    rng = random.Random(10)
    per_token = max_prompt_bytes(tokenizer, 1)
    alphabet = "abc XYZ é你🙂\n\t.,"
    for _ in range(50):  # the bound holds: no token covers more than `per_token` bytes
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 400)))
        assert len(tokenizer.encode(text)) * per_token >= utf8_size(text)
    context = rng.randrange(16, 64)
    client = SimpleNamespace(info=Ready(context, (), tokenizer.vocab_size))
    service = CompletionService(client, "tiny", tokenizer)
    assert service.max_prompt_bytes == per_token * context
    fits = "ab " * rng.randrange(1, 5)
    assert service.prompt_ids(fits, "prompt") == tokenizer.encode(fits)
    with pytest.raises(ApiError) as err:
        service.prompt_ids("x" * (service.max_prompt_bytes + 1), "prompt")
    assert err.value.param == "prompt" and "cannot fit" in err.value.message
