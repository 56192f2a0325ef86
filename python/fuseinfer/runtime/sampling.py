"""Sampling parameters and batched sampling on the device, without host syncs.

Each row of a batch has its own temperature, top-k, top-p, min-p and seed. Randomness is
counter-based: the noise for (seed, step, token id) is a hash of the three, so a seeded
request draws the same tokens whatever batch it lands in, and nothing is read back to the
host. A row is sampled with the Gumbel-max trick over the filtered logits:
argmax(logits / T + g), g = -log(-log(u)), which draws from softmax(logits / T).
Temperature 0 means greedy (argmax of the raw logits).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..ops.host_copy import to_device

_MASK64 = (1 << 64) - 1
MAX_LOGIT_BIAS = 1024  # entries per request
MAX_REPETITION_PENALTY = 10.0


class InvalidSamplingParam(ValueError):
    """A sampling parameter out of range. `field` names it, so a caller with its own names
    for the fields (the HTTP server's `max_tokens`) can report it in its own terms."""

    def __init__(self, field: str, requirement: str, value: object) -> None:
        super().__init__(f"{field} {requirement}, got {value!r}")
        self.field, self.requirement, self.value = field, requirement, value


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = -1  # -1 or 0: no top-k
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: off; k >= 0: the sampled token's and the top k
    # Logit adjustments, applied on the device before temperature and filtering (and before
    # the greedy argmax); logprobs stay the model's own.
    presence_penalty: float = 0.0  # minus this once for each token already in the output
    frequency_penalty: float = 0.0  # minus this times the token's count in the output
    # > 1 discourages every token of the prompt and output: a positive logit is divided by
    # it, a negative one multiplied
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    min_new_tokens: int = 0  # EOS and stop_token_ids cannot be sampled before this many

    def validate(self) -> None:
        """Raise InvalidSamplingParam for the first field out of range (the one place these
        ranges are checked: the engine, the CLI and the server all call this)."""
        checks = (
            ("max_new_tokens", self.max_new_tokens >= 1, "must be >= 1"),
            ("temperature", self.temperature >= 0.0, "must be >= 0"),
            ("top_k", self.top_k >= -1, "must be -1 (off) or >= 0"),
            ("top_p", 0.0 < self.top_p <= 1.0, "must be in (0, 1]"),
            ("min_p", 0.0 <= self.min_p <= 1.0, "must be in [0, 1]"),
            ("logprobs", self.logprobs is None or 0 <= self.logprobs <= 20,
             "must be in [0, 20]"),
            ("presence_penalty", -2.0 <= self.presence_penalty <= 2.0, "must be in [-2, 2]"),
            ("frequency_penalty", -2.0 <= self.frequency_penalty <= 2.0,
             "must be in [-2, 2]"),
            ("repetition_penalty", 0.0 < self.repetition_penalty <= MAX_REPETITION_PENALTY,
             f"must be in (0, {MAX_REPETITION_PENALTY:g}]"),
            ("min_new_tokens", 0 <= self.min_new_tokens <= self.max_new_tokens,
             "must be in [0, max_new_tokens]"),
            ("logit_bias", len(self.logit_bias) <= MAX_LOGIT_BIAS and all(
                t >= 0 and -100.0 <= b <= 100.0 for t, b in self.logit_bias),
             f"must map at most {MAX_LOGIT_BIAS} token ids (>= 0) to biases in [-100, 100]"),
        )
        for name, ok, requirement in checks:
            if not ok:  # `not` also catches NaN, which fails every comparison
                raise InvalidSamplingParam(name, requirement, getattr(self, name))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def penalized(self) -> bool:
        """Needs the request's token counts on the device (presence, frequency or
        repetition penalty)."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 \
            or self.repetition_penalty != 1.0

    @property
    def adjusts_logits(self) -> bool:
        """Any logit adjustment: a penalty, a bias or a minimum length."""
        return self.penalized or bool(self.logit_bias) or self.min_new_tokens > 0


def outside_vocabulary(vocab_size: int, *id_lists: Sequence[int]) -> str | None:
    """Why a token id (of any of the lists) cannot be used, or None: a negative id would
    read an in-flight token and a large one index past the vocabulary, on the device. Two
    C-level scans per list; the loop only names the culprit."""
    for ids in id_lists:
        if ids and not 0 <= min(ids) <= max(ids) < vocab_size:
            bad = next(t for t in ids if not 0 <= t < vocab_size)
            return f"token id {bad} is outside the vocabulary [0, {vocab_size})"
    return None


@dataclass
class SamplingBatch:
    """Per-row sampling settings as device tensors, built per step when the step samples
    (its rows change from step to step); one non-blocking host-to-device copy per tensor.
    A step whose rows are all greedy takes the argmax and needs none."""

    temperature: torch.Tensor  # float32 [B]; 0 rows are greedy
    top_k: torch.Tensor  # int64 [B]; vocab size where off
    top_p: torch.Tensor  # float32 [B]
    min_p: torch.Tensor  # float32 [B]
    seed: torch.Tensor  # int64 [B]
    needs_filter: bool  # any top-k/top-p/min-p in the batch
    all_greedy: bool

    @staticmethod
    def build(params: Sequence[SamplingParams], vocab_size: int, device: torch.device | str,
              default_seeds: Sequence[int]) -> SamplingBatch:
        """default_seeds: the seed of each unseeded row (e.g. its request id)."""
        # one pass over the rows (a step has up to max_running_requests of them)
        temps, ks, top_ps, min_ps, seeds = [], [], [], [], []
        filt = False
        for p, s in zip(params, default_seeds, strict=True):
            temps.append(0.0 if p.greedy else p.temperature)
            k = vocab_size if p.top_k in (-1, 0) else min(p.top_k, vocab_size)
            ks.append(k)
            top_ps.append(p.top_p)
            min_ps.append(p.min_p)
            seeds.append((p.seed if p.seed is not None else s) & 0x7FFFFFFFFFFFFFFF)
            filt = filt or k < vocab_size or p.top_p < 1.0 or p.min_p > 0.0

        def put(values, dtype):
            return to_device(values, dtype, device)

        return SamplingBatch(
            temperature=put(temps, torch.float32), top_k=put(ks, torch.int64),
            top_p=put(top_ps, torch.float32), min_p=put(min_ps, torch.float32),
            seed=put(seeds, torch.int64), needs_filter=filt,
            all_greedy=all(t == 0.0 for t in temps))


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 64-bit integer hash (splitmix64 finalizer) in wrapping int64 arithmetic."""
    x = x ^ ((x >> 30) & 0x3FFFFFFFF)
    x = x * -4658895280553007687  # 0xbf58476d1ce4e5b9 as a signed int64
    x = x ^ ((x >> 27) & 0x1FFFFFFFFF)
    x = x * -7723592293110705685  # 0x94d049bb133111eb
    return x ^ ((x >> 31) & 0x1FFFFFFFF)


def uniform_noise(seed: torch.Tensor, step: torch.Tensor, vocab: int) -> torch.Tensor:
    """u in (0, 1), float32 [B, vocab], a pure function of (seed, step, token id)."""
    ids = torch.arange(vocab, device=seed.device, dtype=torch.int64)
    key = _mix(seed[:, None] * 1_000_003 + step[:, None])
    bits = _mix(key * 0x9E3779B1 + ids[None, :])
    top24 = (bits >> 40) & 0xFFFFFF  # 24 random bits, exact in float32
    return (top24.to(torch.float32) + 0.5) / float(1 << 24)


def filter_logits(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Logits with the tokens outside each row's top-k, top-p and min-p set to -inf
    (computed on logits / temperature, as the distribution sampled)."""
    vocab = logits.size(-1)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    rank = torch.arange(vocab, device=logits.device)[None, :]
    drop = rank >= batch.top_k[:, None]
    # top-p: keep the smallest prefix whose mass reaches top_p (the token crossing it too)
    drop |= (probs.cumsum(dim=-1) - probs) >= batch.top_p[:, None]
    drop |= probs < batch.min_p[:, None] * probs[:, :1]
    drop[:, 0] = False  # the most likely token always survives
    masked = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, masked)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, top: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Model log-probabilities (log_softmax of the raw logits): of each row's token [B], and
    the top `top` [B, top] values and ids."""
    lp = logits.float().log_softmax(dim=-1)
    chosen = lp.gather(1, tokens[:, None])[:, 0]
    values, ids = lp.topk(top, dim=-1) if top else (lp[:, :0], tokens[:, None][:, :0])
    return chosen, values, ids


def sample(logits: torch.Tensor, batch: SamplingBatch, step: torch.Tensor) -> torch.Tensor:
    """Next token ids, int64 [B], from float logits [B, vocab]; `step` int64 [B] is each
    row's generated-token count (the noise counter). No host sync."""
    logits = logits.float()
    greedy = logits.argmax(dim=-1)
    if batch.all_greedy:
        return greedy
    temp = batch.temperature.clamp_min(1e-5)[:, None]
    scaled = logits / temp
    if batch.needs_filter:
        scaled = filter_logits(scaled, batch)
    u = uniform_noise(batch.seed, step, logits.size(-1))
    drawn = (scaled - torch.log(-torch.log(u))).argmax(dim=-1)
    return torch.where(batch.temperature > 0, drawn, greedy)
