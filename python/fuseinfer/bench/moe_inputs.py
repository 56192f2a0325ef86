"""The routed input sets `fuseinfer bench moe` and `fuseinfer tune moe` time on: fresh
router logits per set, the routing the float32 reference gives them, and for the layer the
hidden states and an output buffer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from . import moe_baselines as mb


@dataclass
class Inputs:
    """One rotated set: fresh logits (and bias), the routing they give, and for the layer
    the hidden states and the output. `keep` holds a baseline's last outputs alive."""

    logits: torch.Tensor
    bias: torch.Tensor
    weights: torch.Tensor
    ids: torch.Tensor
    hidden: torch.Tensor | None = None
    out: torch.Tensor | None = None
    keep: dict[str, Any] = field(default_factory=dict)


def make_inputs(model: mb.MoeModel, tokens: int, count: int, with_hidden: bool,
                device: torch.device | str = "cuda") -> list[Inputs]:
    """`count` sets, each routed by the float32 reference (the layer's routing input)."""
    sets = []
    for _ in range(count):
        logits, bias = mb.make_logits(model, tokens, device)
        weights, ids = mb.reference_routing(model, logits, bias)
        hidden = out = None
        if with_hidden:
            hidden = torch.randn(tokens, model.hidden, device=device, dtype=torch.bfloat16)
            out = torch.empty_like(hidden)
        sets.append(Inputs(logits, bias, weights, ids, hidden, out))
    return sets
