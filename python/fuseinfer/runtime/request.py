"""A request as the scheduler tracks it: prompt, sampling parameters, the tokens produced
so far (real ids only), its memory (slot, pages, reused prefix) and how it finished.

Under overlap scheduling a token can be in flight: sampled by a step that is still on
the device. The request keeps a placeholder id for it privately, after `output` in the
sequence, so the next step's inputs can name it (the model runner reads it on the device)
while every public field holds real tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .radix_cache import RadixNode
from .sampling import SamplingParams
from .step_output import FinishReason, TokenLogprob


@dataclass(eq=False)  # identity: `in`/`remove` on request lists must not compare fields
class Request:
    rid: int
    prompt: list[int]
    params: SamplingParams
    eos_ids: tuple[int, ...] = ()
    output: list[int] = field(default_factory=list)  # sampled tokens (real ids only)
    slot: int | None = None  # row in ReqToTokenPool while admitted
    prefix_node: RadixNode | None = None  # locked radix node of the reused prefix
    prefix_pages: int = 0  # leading pages shared with the cache (never freed by us)
    cached: int = 0  # tokens whose KV is in this request's pages
    cached_at_admission: int = 0  # prefix tokens reused from the radix cache
    finish_reason: FinishReason | None = None
    finish_detail: str | None = None  # why it was rejected
    retractions: int = 0
    # with params.logprobs: per output token, (its logprob, [(token id, logprob)] top-k)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    # placeholder ids (negative) of tokens sampled by steps still in flight, in order; they
    # follow `output` in the sequence
    _in_flight: list[int] = field(default_factory=list, init=False, repr=False)

    @property
    def tokens(self) -> list[int]:
        """Prompt and output: the known tokens (not those in flight)."""
        return self.prompt + self.output

    def token_slice(self, start: int, end: int) -> list[int]:
        """Sequence tokens [start, end), in-flight placeholders included, without building
        the whole sequence (a decode step reads one token)."""
        n = len(self.prompt)
        if end <= n:
            return self.prompt[start:end]
        m = n + len(self.output)
        if start >= m:
            return self._in_flight[start - m:end - m]
        if start >= n and end <= m:
            return self.output[start - n:end - n]
        return (self.prompt + self.output + self._in_flight)[start:end]

    @property
    def generated(self) -> int:
        """Tokens sampled or being sampled (output and in flight)."""
        return len(self.output) + len(self._in_flight)

    @property
    def seq_len(self) -> int:
        return len(self.prompt) + len(self.output) + len(self._in_flight)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    # ---- overlap bookkeeping (the scheduler's) ------------------------------------------
    def in_flight(self, placeholder: int) -> None:
        """A launched step will sample this request's next token; `placeholder` (negative)
        stands for it until it arrives."""
        self._in_flight.append(placeholder)

    def arrived(self, token: int, logprob: TokenLogprob | None = None) -> None:
        """The oldest token in flight came back (steps resolve in launch order)."""
        assert self._in_flight, "a resolved step found no placeholder for its token"
        del self._in_flight[0]
        self.output.append(token)
        if logprob is not None:
            self.logprobs.append(logprob)

    def drop_in_flight(self) -> None:
        """Forget tokens still in flight (the request finished or was aborted)."""
        self._in_flight.clear()
