"""fused_moe's float32 semantics (the CPU kernel and the test oracle), expert by expert over
the rows routed to each: only a hit expert's weights are ever dequantized, so GPT-OSS-120B's
128 MXFP4 experts never exist in float32 at once."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..activation.clamped_swiglu_and_mul import ALPHA, LIMIT, reference_clamped_swiglu_and_mul

QUANT_BLOCK = 128  # fp8_block: weight scale blocks and activation groups


def dequantize_block_weights(w: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """w [E, N, K] fp8 times its [E, ceil(N/128), K/128] block scales, as float32."""
    n = w.shape[1]
    s = scales.float().repeat_interleave(QUANT_BLOCK, dim=1)[:, :n]
    return w.float() * s.repeat_interleave(QUANT_BLOCK, dim=2)


def quant_dequant(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """x as the FP8 path's GEMMs see it: quantized per token and group, then scaled back."""
    from ..quant.per_token_group_quant_fp8 import reference_per_token_group_quant_fp8

    q, s = reference_per_token_group_quant_fp8(x, group_size)
    return (q.float().view(x.shape[0], -1, group_size) * s[..., None]).view(x.shape)


def expert_weight(w: torch.Tensor, scales: torch.Tensor | None, e: int,
                  quant: str | None) -> torch.Tensor:
    """Expert e's [N, K] weight in float32 (fp8_block and mxfp4 dequantized)."""
    if quant == "fp8_block":
        assert scales is not None
        return dequantize_block_weights(w[e:e + 1], scales[e:e + 1])[0]
    if quant == "mxfp4":
        from ..quant.fp4_format import dequantize_mxfp4

        assert scales is not None
        return dequantize_mxfp4(w[e], scales[e])
    return w[e].float()


def activate(gate_up: torch.Tensor, activation: str, alpha: float = ALPHA,
             limit: float = LIMIT) -> torch.Tensor:
    """[rows, 2I] = [gate | up] -> [rows, I] in float32: SwiGLU or GPT-OSS's clamped one."""
    if activation == "clamped_swiglu":
        return reference_clamped_swiglu_and_mul(gate_up, alpha, limit)
    inner = gate_up.shape[-1] // 2
    return F.silu(gate_up[:, :inner].float()) * gate_up[:, inner:].float()


def reference_fused_moe(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                        topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                        quant: str | None = None, w13_scales: torch.Tensor | None = None,
                        w2_scales: torch.Tensor | None = None,
                        a_group_size: int = QUANT_BLOCK, *, activation: str = "silu",
                        w13_bias: torch.Tensor | None = None,
                        w2_bias: torch.Tensor | None = None, swiglu_alpha: float = ALPHA,
                        swiglu_limit: float = LIMIT) -> torch.Tensor:
    """The semantics in float32: out [T, H] float32. Intermediates are not rounded; with
    fp8_block the activations entering each GEMM are quantized per token and group."""
    t, h = hidden.shape
    fp8 = quant == "fp8_block"
    out = torch.zeros(t, h, dtype=torch.float32, device=hidden.device)
    x = quant_dequant(hidden.float(), a_group_size) if fp8 and t else hidden.float()
    for e in range(w13.shape[0]):
        token, slot = (topk_ids == e).nonzero(as_tuple=True)
        if token.numel() == 0:
            continue
        gate_up = x[token] @ expert_weight(w13, w13_scales, e, quant).t()
        if w13_bias is not None:
            gate_up = gate_up + w13_bias[e].float()
        act = activate(gate_up, activation, swiglu_alpha, swiglu_limit)
        if fp8:
            act = quant_dequant(act, a_group_size)
        y = act @ expert_weight(w2, w2_scales, e, quant).t()
        if w2_bias is not None:
            y = y + w2_bias[e].float()
        out.index_add_(0, token, y * topk_weights[token, slot].float()[:, None])
    return out


__all__: list[str] = []
