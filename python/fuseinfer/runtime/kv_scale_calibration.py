"""FP8 KV-cache scales calibrated at load: one scale per layer and KV head, for K and V.

An e4m3 value keeps 3 mantissa bits between 2^-6 and 448; below 2^-6 it loses them
(subnormals), above 448 it saturates. With a scale of 1.0, a head whose values are small
(V heads often hold values of order 0.01) is stored mostly as subnormals, and a head with
outliers past 448 is clipped. Calibration runs one prefill of a fixed pseudo-random prompt
before the CUDA graphs are captured, observes each layer's K (after its norm and RoPE)
and V per KV head, and sets scale = HEADROOM * amax / 448, so each head's largest values
sit at 448 / HEADROOM: later tokens may be HEADROOM times larger than the calibration's
before they saturate, and values down to amax / (HEADROOM * 448 * 64) keep their
precision. A layer's scales are set before its own K and V are written, so every later
layer sees the calibrated cache. The prompt's cache slots are ordinary pages that later
requests overwrite (runtime/direct_prefill.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..models.decoder import DecoderModel
from ..ops.kvcache.store_kv_cache import FP8_MAX
from .direct_prefill import direct_prefill, max_direct_tokens

CALIBRATION_TOKENS = 512
CALIBRATION_SEED = 0  # fixed: the scales do not follow the sampling seed
HEADROOM = 2.0  # calibrated maxima land at 448 / HEADROOM
MIN_AMAX = 1e-30  # below it a head counts as unseen (its 1 / scale would overflow)


@dataclass(frozen=True)
class KvScaleReport:
    """What calibration observed: per layer, each KV head's largest |K| and |V|."""

    k_amax: list[list[float]]
    v_amax: list[list[float]]
    tokens: int


def scales_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """float32 scales for observed per-head maxima: HEADROOM * amax / 448; a head that saw
    only zeros (or values below MIN_AMAX, NaN, inf) keeps 1.0."""
    amax = amax.float()
    ok = torch.isfinite(amax) & (amax > MIN_AMAX)
    return torch.where(ok, amax * (HEADROOM / FP8_MAX), torch.ones_like(amax))


def layer_observer(k_scales: list[torch.Tensor], v_scales: list[torch.Tensor],
                   k_amax: list[torch.Tensor], v_amax: list[torch.Tensor]
                   ) -> Callable[[int, torch.Tensor, torch.Tensor], None]:
    """The decoder's hook for layer `layer`'s rotated k and raw v ([tokens, kv_heads,
    head_dim]): records the per-head maxima and sets the layer's scales in place (the
    cache keeps the same tensors, so graphs captured later read the calibrated values)."""
    def observe(layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        for rows, scales, seen in ((k, k_scales, k_amax), (v, v_scales, v_amax)):
            amax = rows.float().abs().amax(dim=(0, 2))
            seen.append(amax)
            scales[layer].copy_(scales_from_amax(amax))
    return observe


def calibration_prompt(vocab_size: int, tokens: int, seed: int) -> torch.Tensor:
    """A fixed pseudo-random prompt (ids in [0, vocab_size)), the same for a seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (tokens,), generator=gen)


def calibrate_kv_scales(model: DecoderModel, context: int,
                        seed: int = CALIBRATION_SEED) -> KvScaleReport:
    """Run the calibration prefill through `model` (its FP8 cache's per-head scale tensors
    are set in place) and return what it saw. The prompt is CALIBRATION_TOKENS long, or
    less where the context or the cache is smaller (runtime/direct_prefill.py)."""
    kv = model.kv
    n = max(1, min(CALIBRATION_TOKENS, context, max_direct_tokens(model)))
    k_amax: list[torch.Tensor] = []
    v_amax: list[torch.Tensor] = []
    model.kv_observer = layer_observer(kv.k_scale, kv.v_scale, k_amax, v_amax)
    try:
        direct_prefill(model, calibration_prompt(model.config.vocab_size, n, seed))
    finally:
        model.kv_observer = None
    return KvScaleReport([a.tolist() for a in k_amax], [a.tolist() for a in v_amax], n)
