"""The sparse MoE block of Qwen3-MoE: a router matmul, softmax top-k routing, and the
routed SwiGLU experts in one fused_moe call.

    logits = h @ gate.T                      [T, E], the model dtype
    weights, ids = topk_softmax(logits, k)   softmax over all E in float32, the k best,
                                             renormalized to sum 1 when norm_topk_prob
    out = fused_moe(h, w13, w2, weights, ids)

The experts are kept stacked (w13 [E, 2I, H]: each expert's gate rows, then its up rows;
w2 [E, H, I]), the layout fused_moe reads, so a step does no per-expert work on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.moe.fused_moe import fused_moe
from ..ops.moe.topk_softmax import topk_softmax
from .config import MoeConfig


@dataclass(frozen=True)
class MoeWeights:
    gate: torch.Tensor  # the router [E, H]
    w13: torch.Tensor  # [E, 2I, H]
    w2: torch.Tensor  # [E, H, I]


def moe_block(h: torch.Tensor, w: MoeWeights, router_logits: torch.Tensor,
              config: MoeConfig, enable_pdl: bool | None = None) -> torch.Tensor:
    """The routed experts' sum for h [T, H] (already normed), given the router's logits
    [T, E] of h (the caller picks the matmul kernel); out [T, H] in h's dtype."""
    weights, ids = topk_softmax(router_logits, config.top_k, config.norm_topk_prob,
                                enable_pdl=enable_pdl)
    return fused_moe(h, w.w13, w.w2, weights, ids, enable_pdl=enable_pdl)


def empty_experts(config: MoeConfig, hidden: int, dtype: torch.dtype,
                  device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Uninitialized (w13, w2) of one layer, filled in place by a loader, so the stacked
    tensors are the only copy (Qwen3-30B-A3B's experts are ~58 GB in bf16)."""
    e, inner = config.num_experts, config.intermediate_size
    return (torch.empty(e, 2 * inner, hidden, dtype=dtype, device=device),
            torch.empty(e, hidden, inner, dtype=dtype, device=device))
