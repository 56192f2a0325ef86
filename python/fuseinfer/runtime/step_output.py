"""What a step reports per request: the tokens it added and whether it finished.

`Engine.step()` returns one `RequestDelta` for each request that got tokens or finished
in that step. Tokens are real sampled ids only (a step in flight under overlap scheduling
shows up in the delta of the step that reads it back), so consumers (the server's engine
process, the benches) append `new_tokens` and never see an internal placeholder.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class FinishReason(str, enum.Enum):  # a str: JSON and f-strings give "stop", "length", ...
    STOP = "stop"  # an EOS or stop token
    LENGTH = "length"  # max_new_tokens reached
    ABORT = "abort"  # aborted by the caller
    REJECTED = "rejected"  # never admitted; the reason is in the request's finish_detail

    # enum.StrEnum would do this, but it needs Python 3.11
    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


# Per output token: its log-probability and the top-k (token id, log-probability) pairs.
TokenLogprob = tuple[float, list[tuple[int, float]]]


# Not frozen: one is built per request per step, and a frozen dataclass's __init__ costs
# about three times as much (~1 us more each, ~0.3 ms a step at batch 256). Read-only by
# convention.
@dataclass(slots=True)
class RequestDelta:
    rid: int
    new_tokens: list[int]
    # one entry per new token when the request asked for logprobs, else empty
    new_logprobs: Sequence[TokenLogprob]
    finish_reason: FinishReason | None = None
    finish_detail: str | None = None  # why a request was rejected

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
