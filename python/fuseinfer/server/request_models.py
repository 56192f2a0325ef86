"""One typed request model per endpoint (pydantic, strict: `"3"` is not an int, `true` is
not a number, NaN and infinities are not numbers), and their sampling fields as
`SamplingParams`.

Types and shapes are checked here; value ranges once, in `SamplingParams.validate`, whose
error names the field, reported back under the request's own name for it (`max_tokens`
for `max_new_tokens`, `min_tokens` for `min_new_tokens`). OpenAI fields this server does
not implement (tools, `best_of`, ...) are refused unless they hold their neutral value (a
client that sends `best_of: 1` asks for nothing we lack); other unknown fields of the
OpenAI endpoints are ignored, as OpenAI clients send extras freely. The native /generate knows
its own fields exactly and refuses any other. `null` means "not given" everywhere.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from ..runtime.sampling import InvalidSamplingParam, SamplingParams
from .errors import ApiError

MAX_STOP_STRINGS = 4
MAX_CHOICES = 16


def _are_tokens(value: list) -> bool:
    """Every item an int (not a bool): one C-level pass, as prompts run to many thousands
    of ids and this is on every request's path."""
    return {int}.issuperset(map(type, value))


def _prompts(value: Any) -> list[str | list[int]]:
    """A completions `prompt` as a list of prompts, each a string or token ids."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if _are_tokens(value):
            return [value]
        if all(isinstance(p, str) for p in value):
            return list(value)
        if all(isinstance(p, list) and p and _are_tokens(p) for p in value):
            return list(value)
    raise ValueError("must be a string, a list of strings, a non-empty list of token ids, "
                     "or a list of such lists")


def _stop_strings(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > MAX_STOP_STRINGS or \
            not all(isinstance(x, str) for x in stops):
        raise ValueError(f"must be a string or a list of up to {MAX_STOP_STRINGS} strings")
    return [x for x in stops if x]


_TOKEN_ID_KEY = re.compile(r"[0-9]+")
MAX_TOKEN_ID_DIGITS = 18  # longer ids lie outside any vocabulary (and int() of them is slow)


def _logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    """OpenAI's `logit_bias` object (token id as a decimal string -> bias) as sorted
    (id, bias) pairs. The bias range and the entry count are SamplingParams' to check; the
    vocabulary the service's."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ValueError("must be an object mapping token ids (decimal strings) to numbers")
    pairs: dict[int, float] = {}
    for key, bias in value.items():
        if not _TOKEN_ID_KEY.fullmatch(key):
            raise ValueError(f"keys must be token ids as decimal strings, got {key[:40]!r}")
        if len(key) > MAX_TOKEN_ID_DIGITS:
            raise ValueError(f"key {key[:40]!r}... is too large to be a token id")
        # strict like every number here: a bool or a string is not one, nor NaN or inf
        if type(bias) not in (int, float) or not math.isfinite(bias):
            raise ValueError(f"values must be finite numbers, got {bias!r} for {key!r}")
        token = int(key)
        if token in pairs:  # "5" and "05"
            raise ValueError(f"gives token id {token} more than once")
        pairs[token] = float(bias)
    return tuple(sorted(pairs.items()))


def _message_text(value: Any) -> str:
    """A chat message's content: a string, or a list of text parts (joined by newlines,
    as the chat templates take one string)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in value):
        return "\n".join(p["text"] for p in value)
    raise ValueError('must be a string or a list of {"type": "text", "text": ...} parts '
                     "(only text is supported)")


def _unsupported(*neutral: Any) -> PlainValidator:
    """A field we do not implement: accepted only as null or one of its neutral values
    (compared with their types, so `false` is not 0)."""
    def check(value: Any) -> None:
        if value is None or any(type(value) in _SAME_TYPES.get(type(n), (type(n),))
                                and value == n for n in neutral):
            return None
        raise ValueError("is unsupported: this server does not implement it")
    return PlainValidator(check)


_SAME_TYPES = {int: (int, float), float: (int, float)}
Unsupported = Any


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class SamplingFields(_Strict):
    """The sampling fields every generating endpoint takes (OpenAI's names)."""

    max_tokens: int | None = None
    max_completion_tokens: int | None = None  # newer OpenAI clients' name for max_tokens
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = None
    # logit adjustments (applied on the device before temperature and filtering)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: Annotated[tuple[tuple[int, float], ...], PlainValidator(_logit_bias)] = ()
    min_tokens: int | None = None  # vLLM's name for the runtime's min_new_tokens

    def max_tokens_given(self) -> list[tuple[str, int]]:
        """The output length under each name it was given by (they must agree)."""
        return [(name, value) for name, value in (
            ("max_tokens", self.max_tokens), ("max_completion_tokens",
                                              self.max_completion_tokens))
            if value is not None]

    def min_tokens_given(self) -> list[tuple[str, int]]:
        """The minimum output length under each name it was given by."""
        return [("min_tokens", self.min_tokens)] if self.min_tokens is not None else []

    def sampling_params(self, default_max_tokens: int, logprobs: int | None = None,
                        logprobs_name: str = "logprobs", prefix: str = "") -> SamplingParams:
        """SamplingParams, range-checked; ApiError 400 naming the request's field (after
        `prefix`: where these fields sit in the body)."""
        max_name, max_tokens = _agreed(self.max_tokens_given(), "max_tokens", prefix)
        min_name, min_tokens = _agreed(self.min_tokens_given(), "min_tokens", prefix)
        params = SamplingParams(
            max_new_tokens=default_max_tokens if max_tokens is None else max_tokens,
            temperature=_given(self.temperature, 1.0), top_p=_given(self.top_p, 1.0),
            top_k=_given(self.top_k, -1), min_p=_given(self.min_p, 0.0), seed=self.seed,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=bool(self.ignore_eos), logprobs=logprobs,
            presence_penalty=_given(self.presence_penalty, 0.0),
            frequency_penalty=_given(self.frequency_penalty, 0.0),
            repetition_penalty=_given(self.repetition_penalty, 1.0),
            logit_bias=self.logit_bias, min_new_tokens=_given(min_tokens, 0))
        try:
            params.validate()
        except InvalidSamplingParam as err:
            names = {"max_new_tokens": max_name, "logprobs": logprobs_name,
                     "min_new_tokens": min_name}
            name = prefix + names.get(err.field, err.field)
            # "[0, max_new_tokens]" in the request's terms: its name and the value it has
            requirement = err.requirement.replace(
                "max_new_tokens", f"'{prefix}{max_name}' ({params.max_new_tokens})")
            raise ApiError(f"'{name}' {requirement}, got {err.value!r}", name) from err
        return params


def _agreed(given: list[tuple[str, int]], default_name: str, prefix: str
            ) -> tuple[str, int | None]:
    """One value given under several names: (the first name, its value); ApiError 400
    naming the first other name whose value differs."""
    first_name, value = given[0] if given else (default_name, None)
    for name, other in given[1:]:
        if other != value:
            raise ApiError(f"'{prefix}{name}' ({other}) disagrees with '{prefix}{first_name}' "
                           f"({value}); give one of them", prefix + name)
    return first_name, value


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


class StreamOptions(_Strict):
    include_usage: bool | None = None


class _OpenAiRequest(SamplingFields):
    model: str | None = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: Annotated[list[str], PlainValidator(_stop_strings)] = []

    @property
    def choices_per_prompt(self) -> int:
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_OpenAiRequest):
    """POST /v1/completions. `prompt`: a string, token ids, or a list of either (one
    prompt each: a batched request)."""

    prompt: Annotated[list[str | list[int]], PlainValidator(_prompts)]
    logprobs: int | None = None  # k: the sampled token's and the top k
    echo: bool | None = None  # each choice's text starts with its prompt
    # not implemented: refused unless neutral
    best_of: Annotated[Unsupported, _unsupported(1)] = None
    suffix: Annotated[Unsupported, _unsupported("")] = None

    @field_validator("echo")
    @classmethod
    def _echo_without_logprobs(cls, echo: bool | None, info: ValidationInfo) -> bool | None:
        # `logprobs` is declared first, so it is in info.data when it is valid
        if echo and info.data.get("logprobs") is not None:
            raise ValueError("is unsupported together with 'logprobs': this server does not "
                             "compute the prompt's logprobs")
        return echo


class ChatMessage(BaseModel):
    # other keys (name, tool_calls, ...) reach the chat template as they came
    model_config = ConfigDict(strict=True, extra="allow")

    role: str
    content: Annotated[str, PlainValidator(_message_text)]


class ChatCompletionRequest(_OpenAiRequest):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    logprobs: bool | None = None
    top_logprobs: int | None = None  # with logprobs: true, the top k per token
    tools: Annotated[Unsupported, _unsupported([])] = None
    tool_choice: Annotated[Unsupported, _unsupported("none")] = None
    functions: Annotated[Unsupported, _unsupported([])] = None
    function_call: Annotated[Unsupported, _unsupported("none")] = None
    response_format: Annotated[Unsupported, _unsupported({"type": "text"})] = None
    audio: Annotated[Unsupported, _unsupported()] = None
    modalities: Annotated[Unsupported, _unsupported(["text"])] = None
    prediction: Annotated[Unsupported, _unsupported()] = None

    @property
    def logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class GenerateSamplingFields(SamplingFields):
    """/generate's `sampling_params`: OpenAI's names and the runtime's own
    (`max_new_tokens`, `min_new_tokens`); unknown keys are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = None
    min_new_tokens: int | None = None

    def max_tokens_given(self) -> list[tuple[str, int]]:
        own = [("max_new_tokens", self.max_new_tokens)] if self.max_new_tokens is not None \
            else []
        return own + super().max_tokens_given()

    def min_tokens_given(self) -> list[tuple[str, int]]:
        own = [("min_new_tokens", self.min_new_tokens)] if self.min_new_tokens is not None \
            else []
        return own + super().min_tokens_given()


class GenerateRequest(_Strict):
    """POST /generate (native): token ids or text in, token ids (and text) out. Unknown
    keys are refused."""

    model_config = ConfigDict(extra="forbid")

    input_ids: list[int] | None = None
    text: str | None = None
    sampling_params: GenerateSamplingFields | None = None


Body = TypeVar("Body", bound=BaseModel)


def parse_body(model: type[Body], raw: bytes) -> Body:
    """The request body as `model`; ApiError 400 naming the first field at fault (the
    top-level field, or `sampling_params.<field>` in /generate's)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        raise ApiError(_error_message(first), _error_param(first["loc"])) from None


def _error_param(loc: tuple) -> str | None:
    if not loc:
        return None  # the body as a whole
    if loc[0] == "sampling_params" and len(loc) > 1 and isinstance(loc[1], str):
        return f"sampling_params.{loc[1]}"
    return str(loc[0])


def _error_message(error: dict) -> str:
    if error["type"] == "json_invalid":
        return f"the request body is not valid JSON: {error['msg']}"
    if not error["loc"]:
        return "the request body must be a JSON object"
    where = ".".join(str(x) for x in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"'{where}' is not a known field"
    if error["type"] == "value_error":  # our validators' own sentences
        return f"'{where}' {error['ctx']['error']}"
    return f"'{where}': {error['msg']}"
