"""The sparse MoE block of Qwen3-MoE and GPT-OSS: a router matmul, softmax top-k routing,
and the routed SwiGLU experts in one fused_moe call.

    logits = h @ gate.T (+ router bias)      [T, E], the model dtype
    weights, ids = topk_softmax(logits, k)   softmax over all E in float32, the k best,
                                             renormalized to sum 1 when norm_topk_prob
                                             (GPT-OSS's softmax over the k best logits
                                             is the same numbers)
    out = fused_moe(h, w13, w2, weights, ids)

The experts are kept stacked (w13 [E, 2I, H]: each expert's gate rows, then its up rows;
w2 [E, H, I]), the layout fused_moe reads, so a step does no per-expert work on the host.
FP8 experts (e4m3, one float32 scale per 128 x 128 block of each expert, the checkpoints'
`weight_scale_inv`) run fused_moe's quant="fp8_block"; MXFP4 experts (uint8 packed E2M1
codes with uint8 E8M0 scales per 32, GPT-OSS) quant="mxfp4". GPT-OSS's experts also have
biases and the clamped SwiGLU (MoeConfig.activation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.moe.fused_moe import FP8, QUANT_BLOCK, fused_moe
from ..ops.moe.topk_softmax import topk_softmax
from .config import MoeConfig
from .fp8_linear import AMAX_FLOOR, FP8_MAX


@dataclass(frozen=True)
class MoeWeights:
    gate: torch.Tensor  # the router [E, H]
    w13: torch.Tensor  # [E, 2I, H]
    w2: torch.Tensor  # [E, H, I]
    # FP8 experts: float32 [E, 2I/128, H/128] and [E, H/128, I/128]; MXFP4 experts (w13
    # uint8 [E, 2I, H/2], w2 [E, H, I/2]): uint8 E8M0 [E, 2I, H/32] and [E, H, I/32];
    # None: float experts
    w13_scales: torch.Tensor | None = None
    w2_scales: torch.Tensor | None = None
    router_bias: torch.Tensor | None = None  # [E] (GPT-OSS)
    w13_bias: torch.Tensor | None = None  # [E, 2I]: the gate rows' biases, then the up rows'
    w2_bias: torch.Tensor | None = None  # [E, H]


def moe_block(h: torch.Tensor, w: MoeWeights, router_logits: torch.Tensor,
              config: MoeConfig, enable_pdl: bool | None = None) -> torch.Tensor:
    """The routed experts' sum for h [T, H] (already normed), given the router's logits
    [T, E] of h (the caller picks the matmul kernel); out [T, H] in h's dtype."""
    weights, ids = topk_softmax(router_logits, config.top_k, config.norm_topk_prob,
                                enable_pdl=enable_pdl)
    quant = "fp8_block" if w.w13.dtype == FP8 else "mxfp4" if w.w13.dtype == torch.uint8 \
        else None
    return fused_moe(h, w.w13, w.w2, weights, ids, activation=config.activation, quant=quant,
                     w13_scales=w.w13_scales, w2_scales=w.w2_scales, w13_bias=w.w13_bias,
                     w2_bias=w.w2_bias, swiglu_alpha=config.swiglu_alpha,
                     swiglu_limit=config.swiglu_limit, enable_pdl=enable_pdl)


def quantize_experts(w: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked float experts w [E, N, K] as (e4m3 [E, N, K], float32 scales [E, N/128,
    K/128]), each 128 x 128 block scaled by amax / 448 as fp8_linear's quantizer does;
    N and K multiples of 128 (what fused_moe's FP8 path takes)."""
    e, n, k = w.shape
    if n % QUANT_BLOCK or k % QUANT_BLOCK:
        raise ValueError(f"{name}: FP8 experts need both dims multiples of {QUANT_BLOCK}, "
                         f"got {list(w.shape)}")
    q = torch.empty(e, n, k, dtype=FP8, device=w.device)
    scales = torch.empty(e, n // QUANT_BLOCK, k // QUANT_BLOCK, dtype=torch.float32,
                         device=w.device)
    for x in range(e):  # one expert at a time: the float32 temporary stays small
        blocks = w[x].float().view(n // QUANT_BLOCK, QUANT_BLOCK, k // QUANT_BLOCK,
                                   QUANT_BLOCK)
        s = blocks.abs().amax(dim=(1, 3)).clamp_min(AMAX_FLOOR) / FP8_MAX
        scales[x] = s
        q[x] = (blocks / s[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8).view(n, k)
    return q, scales
