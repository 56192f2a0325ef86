"""What the HTTP process and the engine process say to each other over their two queues.

To the engine: `AddRequest`, `AbortRequest`, `FreezeGc`, `Stop`.
From the engine: `Ready` (or `Failed`) once, then one `StepTokens` per step that produced
anything, and `Stats` twice a second.

Request ids here are the HTTP process's own (`rid`), not the engine's: the HTTP process
names a request before the engine has seen it, so it can route the first tokens.

`StepTokens` is columnar (one list per field) rather than a list of per-request objects:
it is pickled once per step, and a list of small objects costs several times more to
pickle than a few lists of ints. Slotted dataclasses pickle the cheapest.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.sampling import SamplingParams
from ..runtime.step_output import FinishReason, TokenLogprob


# ---- to the engine process ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AddRequest:
    rid: int
    prompt: list[int]
    params: SamplingParams


@dataclass(frozen=True, slots=True)
class AbortRequest:
    rid: int


@dataclass(frozen=True, slots=True)
class FreezeGc:
    """gc.freeze() the engine process's survivors (sent after a warm-up)."""


@dataclass(frozen=True, slots=True)
class Stop:
    """Leave the loop; the process exits."""


ToEngine = AddRequest | AbortRequest | FreezeGc | Stop


# ---- from the engine process ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Ready:
    max_context: int  # tokens per request at most (prompt + output)
    eos_token_ids: tuple[int, ...]
    vocab_size: int
    pid: int = 0  # the engine process, watched by the HTTP process (0: not watched)


@dataclass(frozen=True, slots=True)
class Failed:
    """The engine could not start; `error` is its traceback."""

    error: str


@dataclass(frozen=True, slots=True)
class Finish:
    reason: FinishReason
    detail: str | None = None  # why a request was rejected


@dataclass(frozen=True, slots=True)
class StepTokens:
    """One step's news for every request that has any, row i of each column together:
    rids[i] got new_tokens[i] (real sampled ids, possibly none when it only finished),
    with new_logprobs[i] (one entry per new token when it asked for logprobs, else
    empty). Requests that finished in the step are in `finished`."""

    rids: list[int]
    new_tokens: list[list[int]]
    new_logprobs: list[list[TokenLogprob]]
    finished: dict[int, Finish]  # rid -> how it finished; empty in most steps


@dataclass(frozen=True, slots=True)
class Stats:
    waiting: int
    running: int
    kv_usage: float  # fraction of KV pages in use
    aborted: int  # requests aborted by the HTTP process since start
    retractions: int = 0  # times finished requests were retracted (KV short) since start


FromEngine = Ready | Failed | StepTokens | Stats
