"""The server's request side without a server: the request models (the forms OpenAI clients
send, and the field each bad input is reported under), the sampling range checks reported
in the request's own names, the logit adjustments (penalties, `logit_bias`, `min_tokens`)
and `echo`, the choices of a batched request, and finish reasons in OpenAI's terms."""

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
    (CompletionRequest, "best_of", 3), (CompletionRequest, "suffix", "end"),
    (CompletionRequest, "best_of", True),  # not a number, so not the neutral 1
    (ChatCompletionRequest, "tools", [{"type": "function"}]),
    (ChatCompletionRequest, "tool_choice", "auto"),
    (ChatCompletionRequest, "response_format", {"type": "json_object"}),
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
                         "suffix": None, "min_tokens": 0, "logit_bias": {}}),
    (ChatCompletionRequest, {"messages": [{"role": "u", "content": "x"}], "tools": [],
                             "tool_choice": "none", "response_format": {"type": "text"},
                             "modalities": ["text"], "user": "u", "store": False,
                             "presence_penalty": 0, "frequency_penalty": 0.0,
                             "repetition_penalty": 1, "logit_bias": None, "min_tokens": None}),
    (GenerateSamplingFields, {"presence_penalty": 0, "frequency_penalty": 0,
                              "repetition_penalty": 1, "logit_bias": {},
                              "min_new_tokens": 0, "min_tokens": 0}),
])
def test_neutral_values_are_accepted_and_change_nothing(model, neutral):
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
                        ({"input_ids": [1], "sampling_params": {"best_of": 1}},
                         "sampling_params.best_of"),
                        ({"input_ids": [1], "sampling_params": {"echo": False}},
                         "sampling_params.echo"),
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


# ---- logit adjustments, min_tokens and echo ----------------------------------------------
CHAT_BASE = {"messages": [{"role": "u", "content": "x"}]}


def _adjustments(rng: random.Random) -> tuple[dict, dict]:
    """Random penalty, bias and min-length fields in OpenAI's names, and the SamplingParams
    fields they stand for."""
    ids = rng.sample(range(384), rng.randrange(1, 9))
    bias = {t: rng.choice([rng.uniform(-100, 100), float(rng.randrange(-100, 101)),
                           rng.randrange(-100, 101)]) for t in ids}
    body = {"presence_penalty": rng.uniform(-2, 2), "frequency_penalty": rng.uniform(-2, 2),
            "repetition_penalty": rng.uniform(0.01, 10), "max_tokens": rng.randrange(5, 99),
            "logit_bias": {str(t): b for t, b in bias.items()}}
    body["min_tokens"] = rng.randrange(0, body["max_tokens"] + 1)
    want = {"presence_penalty": body["presence_penalty"],
            "frequency_penalty": body["frequency_penalty"],
            "repetition_penalty": body["repetition_penalty"],
            "max_new_tokens": body["max_tokens"], "min_new_tokens": body["min_tokens"],
            "logit_bias": tuple((t, float(bias[t])) for t in sorted(ids))}
    return body, want


def test_logit_adjustments_and_min_tokens_reach_the_params():
    rng = random.Random(11)
    for _ in range(20):
        body, want = _adjustments(rng)
        for model, base in ((CompletionRequest, {"prompt": "x"}), (ChatCompletionRequest,
                                                                    CHAT_BASE)):
            params = _parse(model, {**base, **body}).sampling_params(16)
            assert params == SamplingParams(**want), (model, body)
        native = _parse(GenerateRequest, {"input_ids": [1], "sampling_params": body})
        assert native.sampling_params.sampling_params(128) == SamplingParams(**want)
        runtime_names = {k: v for k, v in body.items() if k != "min_tokens"} | {
            "min_new_tokens": body["min_tokens"]}
        native = _parse(GenerateRequest, {"input_ids": [1], "sampling_params": runtime_names})
        params = native.sampling_params.sampling_params(128)
        assert params.min_new_tokens == body["min_tokens"] and params == SamplingParams(**want)
    # the bias is sorted by token id whatever order the object lists them in
    req = _parse(CompletionRequest, {"prompt": "x", "logit_bias": {"9": 1, "0": -2, "10": 3}})
    assert req.sampling_params(16).logit_bias == ((0, -2.0), (9, 1.0), (10, 3.0))


@pytest.mark.parametrize("bias", [
    {"-1": 1}, {"1.5": 1}, {"abc": 1}, {" 5": 1}, {"5 ": 1}, {"": 1}, {"+5": 1}, {"0x10": 1},
    {"1e3": 1}, {"\u0663": 1}, {"9" * 19: 1}, {"5": 1, "05": 2},
    {"5": True}, {"5": "3"}, {"5": None}, {"5": [1]}, {"5": {"a": 1}},
    [[5, 1]], "5:1", 5, True,
])
def test_bad_logit_bias_names_logit_bias(bias):
    cases = [(CompletionRequest, {"prompt": "x", "logit_bias": bias}, "logit_bias"),
             (ChatCompletionRequest, {**CHAT_BASE, "logit_bias": bias}, "logit_bias"),
             (GenerateRequest, {"input_ids": [1], "sampling_params": {"logit_bias": bias}},
              "sampling_params.logit_bias")]
    for model, body, param in cases:
        with pytest.raises(ApiError) as err:
            _parse(model, body)
        assert err.value.param == param and err.value.status == 400, err.value.message


@pytest.mark.parametrize("raw", [b'{"prompt": "x", "logit_bias": {"5": NaN}}',
                                 b'{"prompt": "x", "logit_bias": {"5": Infinity}}',
                                 b'{"prompt": "x", "logit_bias": {"5": 1e999}}'])
def test_non_finite_biases_are_refused(raw):
    with pytest.raises(ApiError) as err:
        parse_body(CompletionRequest, raw)
    assert err.value.param == "logit_bias"


@pytest.mark.parametrize("field, value", [
    ("presence_penalty", True), ("presence_penalty", "0.5"), ("frequency_penalty", "1"),
    ("frequency_penalty", False), ("repetition_penalty", "1.2"), ("repetition_penalty", True),
    ("min_tokens", 2.0), ("min_tokens", True), ("min_tokens", "3"), ("presence_penalty", [1]),
])
def test_adjustments_have_strict_types(field, value):
    for model, base, param in ((CompletionRequest, {"prompt": "x"}, field),
                               (ChatCompletionRequest, CHAT_BASE, field)):
        with pytest.raises(ApiError) as err:
            _parse(model, {**base, field: value})
        assert err.value.param == param and err.value.status == 400
    with pytest.raises(ApiError) as err:
        _parse(GenerateRequest, {"input_ids": [1], "sampling_params": {field: value}})
    assert err.value.param == f"sampling_params.{field}"
    with pytest.raises(ApiError) as err:
        _parse(GenerateRequest, {"input_ids": [1], "sampling_params": {"min_new_tokens": "2"}})
    assert err.value.param == "sampling_params.min_new_tokens"


def _out_of_range(rng: random.Random) -> list[tuple[dict, str]]:
    """Bodies with one adjustment field out of range, and the field's name."""
    max_tokens = rng.randrange(1, 50)
    return [
        ({"presence_penalty": rng.uniform(2.001, 50)}, "presence_penalty"),
        ({"presence_penalty": -rng.uniform(2.001, 50)}, "presence_penalty"),
        ({"frequency_penalty": rng.uniform(2.001, 50)}, "frequency_penalty"),
        ({"frequency_penalty": -rng.uniform(2.001, 50)}, "frequency_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repetition_penalty": -rng.uniform(0, 5)}, "repetition_penalty"),
        ({"repetition_penalty": rng.uniform(10.001, 99)}, "repetition_penalty"),
        ({"logit_bias": {str(rng.randrange(384)): rng.uniform(100.001, 1e6)}}, "logit_bias"),
        ({"logit_bias": {str(rng.randrange(384)): -rng.uniform(100.001, 1e6)}}, "logit_bias"),
        ({"logit_bias": {str(t): 1 for t in range(1025)}}, "logit_bias"),
        ({"min_tokens": -rng.randrange(1, 9)}, "min_tokens"),
        ({"max_tokens": max_tokens, "min_tokens": max_tokens + rng.randrange(1, 9)},
         "min_tokens"),
    ]


def test_adjustment_ranges_are_reported_under_the_request_names():
    rng = random.Random(12)
    for body, param in _out_of_range(rng):
        for model, base in ((CompletionRequest, {"prompt": "x"}), (ChatCompletionRequest,
                                                                    CHAT_BASE)):
            req = _parse(model, {**base, **body})
            with pytest.raises(ApiError) as err:
                req.sampling_params(16)
            assert err.value.param == param and f"'{param}'" in err.value.message, body
        native = _parse(GenerateRequest, {"input_ids": [1], "sampling_params": body})
        with pytest.raises(ApiError) as err:
            native.sampling_params.sampling_params(128, prefix="sampling_params.")
        assert err.value.param == "sampling_params." + param, body
    # min_new_tokens is reported under the name it was given by, with the max in its terms
    max_tokens = rng.randrange(1, 50)
    native = _parse(GenerateRequest, {"input_ids": [1], "sampling_params": {
        "max_new_tokens": max_tokens, "min_new_tokens": max_tokens + 1}})
    with pytest.raises(ApiError) as err:
        native.sampling_params.sampling_params(128, prefix="sampling_params.")
    assert err.value.param == "sampling_params.min_new_tokens"
    assert f"'sampling_params.max_new_tokens' ({max_tokens})" in err.value.message
    chat = _parse(ChatCompletionRequest, {**CHAT_BASE, "min_tokens": 40})
    with pytest.raises(ApiError) as err:  # above the default max_tokens the context leaves
        chat.sampling_params(39)
    assert err.value.param == "min_tokens" and "'max_tokens' (39)" in err.value.message
    assert chat.sampling_params(40).min_new_tokens == 40


def test_min_tokens_under_two_names_must_agree():
    rng = random.Random(13)
    a = rng.randrange(0, 20)
    same = _parse(GenerateRequest, {"input_ids": [1], "sampling_params": {
        "min_new_tokens": a, "min_tokens": a, "max_tokens": 20}})
    assert same.sampling_params.sampling_params(128).min_new_tokens == a
    other = _parse(GenerateRequest, {"input_ids": [1], "sampling_params": {
        "min_new_tokens": a, "min_tokens": a + rng.randrange(1, 9)}})
    with pytest.raises(ApiError) as err:
        other.sampling_params.sampling_params(128, prefix="sampling_params.")
    assert err.value.param == "sampling_params.min_tokens"
    assert "'sampling_params.min_new_tokens'" in err.value.message


def test_logit_bias_ids_are_checked_against_the_vocabulary():
    from types import SimpleNamespace

    from fuseinfer.server.completion_service import CompletionService
    from fuseinfer.server.messages import Ready

    rng = random.Random(14)
    vocab = rng.randrange(100, 1000)
    service = CompletionService(SimpleNamespace(info=Ready(64, (), vocab)), "m", None)
    inside = {str(t): 1.0 for t in rng.sample(range(vocab), 5)} | {str(vocab - 1): -1.0}
    for prefix in ("", "sampling_params."):
        params = SamplingParams(logit_bias=tuple(sorted((int(k), v)
                                                        for k, v in inside.items())))
        service.check_sampling_token_ids(params, prefix)  # no error
        outside = rng.choice([vocab, vocab + rng.randrange(1, 10**6)])
        bad = SamplingParams(logit_bias=params.logit_bias + ((outside, 2.0),))
        with pytest.raises(ApiError) as err:
            service.check_sampling_token_ids(bad, prefix)
        assert err.value.param == prefix + "logit_bias" and str(outside) in err.value.message
        with pytest.raises(ApiError) as err:
            service.check_sampling_token_ids(SamplingParams(stop_token_ids=(outside,)), prefix)
        assert err.value.param == prefix + "stop_token_ids"


def test_echo_is_a_bool_and_refused_with_logprobs():
    assert _parse(CompletionRequest, {"prompt": "x", "echo": True}).echo is True
    assert _parse(CompletionRequest, {"prompt": "x", "echo": False, "logprobs": 3}).echo is False
    assert _parse(CompletionRequest, {"prompt": "x", "echo": True, "logprobs": None}).echo
    for k in (0, random.Random(15).randrange(1, 21)):
        with pytest.raises(ApiError) as err:
            _parse(CompletionRequest, {"prompt": "x", "logprobs": k, "echo": True})
        assert err.value.param == "echo" and "unsupported" in err.value.message
    for value in ("yes", 1, [True]):
        with pytest.raises(ApiError) as err:
            _parse(CompletionRequest, {"prompt": "x", "echo": value})
        assert err.value.param == "echo"


def test_echo_texts_follow_the_choice_order():
    rng = random.Random(16)
    texts = ["".join(rng.choice("abc ") for _ in range(rng.randrange(1, 9))) for _ in range(3)]
    n = rng.randrange(1, 5)
    job = CompletionJob(chat=False, prompts=[[1]] * 3, params=SamplingParams(), n=n, stops=[],
                        stream=False, include_usage=False, echo_texts=texts)
    assert [job.echo_text(g.index) for g in job.generations()] == [t for t in texts
                                                                    for _ in range(n)]
    plain = CompletionJob(chat=False, prompts=[[1]], params=SamplingParams(), n=1, stops=[],
                          stream=False, include_usage=False)
    assert plain.echo_text(0) == ""
