"""Per-request logit adjustments inside the batched sampler, on the device, no host sync:
presence, frequency and repetition penalties, logit bias and a minimum output length.

Penalties need each request's token history. `TokenHistory` keeps it on the device per
request slot: how often each token occurs in the output (int32 [slots, vocab]) and whether
it occurs in the prompt (bool [slots, vocab]). A slot's rows are rebuilt from the request's
tokens when the request is admitted (again after a retraction: the output so far counts as
output), and the step that samples a token adds it on the device, so nothing is read back
and nothing grows with the sequence on the host. The buffers are allocated the first time
a request asks for a penalty.

Order (per row), on float32 logits: bias is added; the repetition penalty divides a
positive logit (multiplies a negative one) of every token seen in the prompt or output;
frequency and presence penalties are subtracted per output occurrence and once per token
in the output; EOS and stop ids are set to -inf while fewer than min_new_tokens tokens
were generated. Temperature, top-k/p/min-p and the draw follow (`sampling.sample`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..ops.host_copy import to_device
from .sampling import SamplingParams


@dataclass(frozen=True)
class HistoryReset:
    """Rebuild one slot's history: the request was admitted in this step."""

    slot: int
    prompt: list[int]  # [] when only the output counts (no repetition penalty)
    output: list[int]  # may hold placeholders of steps in flight (resolved on the device)


class TokenHistory:
    """Per request slot: output token counts and prompt-token presence, on the device."""

    def __init__(self, num_slots: int, vocab_size: int, device: torch.device) -> None:
        self.num_slots, self.vocab_size, self.device = num_slots, vocab_size, device
        self.counts: torch.Tensor | None = None  # int32 [slots, vocab]
        self.in_prompt: torch.Tensor | None = None  # bool [slots, vocab]

    def _ensure(self) -> None:
        if self.counts is None:
            shape = (self.num_slots, self.vocab_size)
            self.counts = torch.zeros(shape, dtype=torch.int32, device=self.device)
            self.in_prompt = torch.zeros(shape, dtype=torch.bool, device=self.device)

    def reset(self, resets: Sequence[HistoryReset], output_ids: torch.Tensor) -> None:
        """Rebuild the slots of `resets` from their tokens. `output_ids`: every reset's
        output, concatenated in order, already on the device (placeholders resolved)."""
        self._ensure()
        assert self.counts is not None and self.in_prompt is not None
        slots = to_device([r.slot for r in resets], torch.int64, self.device)
        self.counts.index_fill_(0, slots, 0)
        self.in_prompt.index_fill_(0, slots, False)
        out_rows = [r.slot for r in resets for _ in r.output]
        if out_rows:
            rows = to_device(out_rows, torch.int64, self.device)
            self.counts.index_put_((rows, output_ids), torch.ones_like(output_ids,
                                                                       dtype=torch.int32),
                                   accumulate=True)
        prompt_rows = [r.slot for r in resets for _ in r.prompt]
        if prompt_rows:
            rows = to_device(prompt_rows, torch.int64, self.device)
            ids = to_device([t for r in resets for t in r.prompt], torch.int64, self.device)
            self.in_prompt.index_put_((rows, ids), torch.ones_like(ids, dtype=torch.bool))

    def add(self, slots: torch.Tensor, tokens: torch.Tensor) -> None:
        """One sampled token per row: counts[slot, token] += 1."""
        assert self.counts is not None
        self.counts.index_put_((slots, tokens), torch.ones_like(tokens, dtype=torch.int32),
                               accumulate=True)


@dataclass(frozen=True)
class LogitAdjustments:
    """One step's adjustments as device tensors (rows index the step's sampled rows)."""

    # penalties: the rows that have one, their slots and their three values
    penalty_rows: torch.Tensor | None  # int64 [P]
    penalty_slots: torch.Tensor | None  # int64 [P]
    presence: torch.Tensor | None  # float32 [P]
    frequency: torch.Tensor | None
    repetition: torch.Tensor | None  # None when no row has one (it needs the prompt)
    # bias: one entry per (row, token)
    bias_rows: torch.Tensor | None
    bias_ids: torch.Tensor | None
    bias_values: torch.Tensor | None
    # minimum length: the (row, stop id) pairs masked in this step
    min_rows: torch.Tensor | None
    min_ids: torch.Tensor | None

    @staticmethod
    def build(params: Sequence[SamplingParams], slots: Sequence[int],
              masked_stops: Sequence[Sequence[int]], device: torch.device
              ) -> LogitAdjustments | None:
        """None when no row adjusts anything. `masked_stops[i]`: the ids row i may not
        sample in this step (its EOS and stop ids while short of min_new_tokens)."""
        pen = [i for i, p in enumerate(params) if p.penalized]
        b_rows, b_ids, b_vals = [], [], []
        for i, p in enumerate(params):
            for t, v in p.logit_bias:
                b_rows.append(i)
                b_ids.append(t)
                b_vals.append(v)
        m_rows = [i for i, ids in enumerate(masked_stops) for _ in ids]
        m_ids = [t for ids in masked_stops for t in ids]
        if not (pen or b_rows or m_rows):
            return None

        def put(values: list, dtype: torch.dtype) -> torch.Tensor | None:
            return to_device(values, dtype, device) if values else None

        f32, i64 = torch.float32, torch.int64
        rep = [params[i].repetition_penalty for i in pen]
        return LogitAdjustments(
            put(pen, i64), put([slots[i] for i in pen], i64),
            put([params[i].presence_penalty for i in pen], f32),
            put([params[i].frequency_penalty for i in pen], f32),
            put(rep, f32) if any(r != 1.0 for r in rep) else None,
            put(b_rows, i64), put(b_ids, i64), put(b_vals, f32),
            put(m_rows, i64), put(m_ids, i64))

    def apply(self, logits: torch.Tensor, history: TokenHistory | None) -> torch.Tensor:
        """Adjusted float32 copy of `logits` [B, vocab] (the model's own stay as they are,
        for logprobs)."""
        out = logits.to(torch.float32, copy=True)
        if self.bias_rows is not None:
            out.index_put_((self.bias_rows, self.bias_ids), self.bias_values, accumulate=True)
        if self.penalty_rows is not None:
            assert history is not None and history.counts is not None
            counts = history.counts[self.penalty_slots].to(torch.float32)  # [P, vocab]
            rows = out[self.penalty_rows]
            if self.repetition is not None:
                assert history.in_prompt is not None
                seen = history.in_prompt[self.penalty_slots] | (counts > 0)
                rep = self.repetition[:, None]
                rows = torch.where(seen, torch.where(rows > 0, rows / rep, rows * rep), rows)
            rows = rows - self.frequency[:, None] * counts \
                - self.presence[:, None] * (counts > 0).to(torch.float32)
            out.index_copy_(0, self.penalty_rows, rows)
        if self.min_rows is not None:
            out.index_put_((self.min_rows, self.min_ids),  # a fill, not a host copy
                           torch.full_like(self.min_ids, float("-inf"), dtype=torch.float32))
        return out
