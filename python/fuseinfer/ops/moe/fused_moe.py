"""fused_moe: the expert MLPs of a mixture-of-experts layer, SwiGLU experts, top-k routed.

    out[t] = sum_j topk_weights[t, j] * (w2[e] @ act(w13[e] @ h + b13[e]) + b2[e])
             with h = hidden[t], e = topk_ids[t, j], [gate | up] = w13[e] @ h + b13[e]
    act = silu(gate) * up                                     activation="silu"
    act = (u + 1) * g * sigmoid(alpha * g),                   activation="clamped_swiglu"
          g = min(gate, limit), u = clamp(up, -limit, limit)  (GPT-OSS; swiglu_alpha/limit)

hidden [T, H] bf16, fp16 or fp32; w13 [E, 2I, H] (each expert's gate rows, then its up rows,
not interleaved) and w2 [E, H, I], rows contiguous (the Hugging Face [out, in] layout);
topk_weights float32 [T, k]; topk_ids int32 (or int64) [T, k]. A slot whose id is outside
[0, E) (-1 or E: masked or handled elsewhere, e.g. a shared expert) contributes nothing.
w13_bias [E, 2I] and w2_bias [E, H] (optional; hidden's dtype or float32): w13_bias is
added before the activation, w2_bias to each expert's output row before the routing weight
multiplies it. out [T, H] in hidden's dtype.

quant="fp8_block": w13 and w2 are float8_e4m3fn with one float32 scale per 128 x 128 block
(w13_scales [E, ceil(2I/128), H/128], w2_scales [E, ceil(H/128), I/128]: fp8_blockwise_mm's
`weight_scale_inv` per expert); the activations entering each GEMM are quantized per token
and 128 channels (a_group_size), as per_token_group_quant_fp8 does. H and I multiples of 128.

quant="mxfp4" (weight-only, W4A16): w13 uint8 [E, 2I, H/2] and w2 uint8 [E, H, I/2], two
E2M1 codes per byte (the even element in the low nibble, K contiguous), with E8M0 scales
(2^(s - 127)) per 32 elements: w13_scales uint8 [E, 2I, H/32], w2_scales uint8 [E, H, I/32]
(GPT-OSS's checkpoint layout). H and I multiples of 32. The activations stay in hidden's
dtype (bf16 or fp16 on the GPU; fp32 too); the weights are decoded tile by tile inside the
grouped GEMM, never as a bf16 copy in memory. a_group_size is not used.

CUDA: moe_align_block_size groups the (token, slot) rows by expert, a Triton grouped GEMM
gathers hidden rows into w13 (+ w13_bias in its fp32 epilogue), silu_and_mul /
clamped_swiglu_and_mul (fp8: then quantized) activates, a second grouped GEMM through w2
adds w2_bias and scales each row by its routing weight, and a combine sums each token's k
rows; block sizes from the `moe` dispatch entry per quant (moe_dispatch.py), PDL on sm_90+.
With quant="fp8_block", silu experts without biases, the entry's fp8_backend "cutlass" and
a CUTLASS configuration for R = T * k on sm_90a (bf16/fp16 activations), the two GEMMs are
fp8_blockwise_grouped_mm over the rows sorted by expert instead (launch_fused_moe_grouped);
with biases or clamped_swiglu the Triton path runs.
CPU: the float32 reference (fused_moe_reference.py; also the test oracle).
"""

from __future__ import annotations

import torch

from ..activation.clamped_swiglu_and_mul import ALPHA, LIMIT
from ..library import LIB, define, impl_cpu, impl_fake
from ..triton_launch import use_pdl

# FP8, QUANTS, ... stay importable from here (models and bench name them so).
from .fused_moe_checks import FP8 as FP8
from .fused_moe_checks import MX_BLOCK as MX_BLOCK
from .fused_moe_checks import OP, QUANT_BLOCK, check_fused_moe
from .fused_moe_checks import QUANTS as QUANTS
from .fused_moe_launch import launch_fused_moe, launch_fused_moe_grouped
from .fused_moe_reference import dequantize_block_weights as dequantize_block_weights
from .fused_moe_reference import reference_fused_moe
from .moe_dispatch import effective

_SCHEMA = ("fused_moe(Tensor(a!) out, Tensor hidden, Tensor w13, Tensor w2, "
           "Tensor topk_weights, Tensor topk_ids, str activation=\"silu\", str? quant=None, "
           "Tensor? w13_scales=None, Tensor? w2_scales=None, int a_group_size=128, "
           "Tensor? w13_bias=None, Tensor? w2_bias=None, float swiglu_alpha=1.702, "
           "float swiglu_limit=7.0, bool? enable_pdl=None) -> ()")


def _cpu(out: torch.Tensor, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
         topk_weights: torch.Tensor, topk_ids: torch.Tensor, activation: str = "silu",
         quant: str | None = None, w13_scales: torch.Tensor | None = None,
         w2_scales: torch.Tensor | None = None, a_group_size: int = QUANT_BLOCK,
         w13_bias: torch.Tensor | None = None, w2_bias: torch.Tensor | None = None,
         swiglu_alpha: float = ALPHA, swiglu_limit: float = LIMIT,
         enable_pdl: bool | None = None) -> None:
    check_fused_moe(out, hidden, w13, w2, topk_weights, topk_ids, activation, quant,
                    w13_scales, w2_scales, a_group_size, w13_bias, w2_bias, swiglu_alpha,
                    swiglu_limit)
    out.copy_(reference_fused_moe(
        hidden, w13, w2, topk_weights, topk_ids, quant, w13_scales, w2_scales, a_group_size,
        activation=activation, w13_bias=w13_bias, w2_bias=w2_bias, swiglu_alpha=swiglu_alpha,
        swiglu_limit=swiglu_limit))


def _cuda(out: torch.Tensor, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
          topk_weights: torch.Tensor, topk_ids: torch.Tensor, activation: str = "silu",
          quant: str | None = None, w13_scales: torch.Tensor | None = None,
          w2_scales: torch.Tensor | None = None, a_group_size: int = QUANT_BLOCK,
          w13_bias: torch.Tensor | None = None, w2_bias: torch.Tensor | None = None,
          swiglu_alpha: float = ALPHA, swiglu_limit: float = LIMIT,
          enable_pdl: bool | None = None) -> None:
    check_fused_moe(out, hidden, w13, w2, topk_weights, topk_ids, activation, quant,
                    w13_scales, w2_scales, a_group_size, w13_bias, w2_bias, swiglu_alpha,
                    swiglu_limit)
    table = effective(hidden.device.index)
    pdl = table.enable_pdl and use_pdl(enable_pdl, hidden.device)
    plain = activation == "silu" and w13_bias is None and w2_bias is None
    grouped = table.fp8_grouped_config(topk_ids.numel()) \
        if quant == "fp8_block" and plain else None
    if grouped is not None and grouped_takes(hidden):
        assert w13_scales is not None and w2_scales is not None
        launch_fused_moe_grouped(out, hidden, w13, w2, topk_weights, topk_ids, w13_scales,
                                 w2_scales, grouped, pdl)
        return
    launch_fused_moe(out, hidden, w13, w2, topk_weights, topk_ids, quant, w13_scales,
                     w2_scales, table.rule(hidden.shape[0], quant), pdl,
                     activation=activation, w13_bias=w13_bias, w2_bias=w2_bias,
                     swiglu_alpha=swiglu_alpha, swiglu_limit=swiglu_limit)


def grouped_takes(hidden: torch.Tensor) -> bool:
    """Whether the CUTLASS grouped path runs this call: sm_90a, bf16 or fp16 activations."""
    from .fp8_blockwise_grouped_mm import cutlass_grouped_runs

    return hidden.dtype in (torch.bfloat16, torch.float16) and cutlass_grouped_runs(hidden.device)


def fused_moe(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
              topk_weights: torch.Tensor, topk_ids: torch.Tensor, *,
              activation: str = "silu", quant: str | None = None,
              w13_scales: torch.Tensor | None = None, w2_scales: torch.Tensor | None = None,
              a_group_size: int = QUANT_BLOCK, w13_bias: torch.Tensor | None = None,
              w2_bias: torch.Tensor | None = None, swiglu_alpha: float = ALPHA,
              swiglu_limit: float = LIMIT, enable_pdl: bool | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """The routed experts of hidden [T, H]: out [T, H] in hidden's dtype (into `out` if
    given). See the module docstring for layouts, activations, biases and quants
    ('fp8_block', 'mxfp4')."""
    if out is None:
        out = torch.empty_like(hidden, memory_format=torch.contiguous_format)
    torch.ops.fuseinfer.fused_moe(out, hidden, w13, w2, topk_weights, topk_ids,
                                  activation=activation, quant=quant, w13_scales=w13_scales,
                                  w2_scales=w2_scales, a_group_size=a_group_size,
                                  w13_bias=w13_bias, w2_bias=w2_bias,
                                  swiglu_alpha=swiglu_alpha, swiglu_limit=swiglu_limit,
                                  enable_pdl=enable_pdl)
    return out


define(_SCHEMA)
impl_cpu(OP, _cpu)
impl_fake(OP, check_fused_moe)
LIB.impl(OP, _cuda, "CUDA")


__all__ = ["fused_moe"]
