"""fused_moe's CUDA launchers: the Triton path (align -> grouped GEMM 1 (+ w13_bias) ->
activation -> grouped GEMM 2 (+ w2_bias, x routing weight) -> combine) for every quant, and
the CUTLASS grouped path of quant="fp8_block" (silu experts without biases only). Also run
directly by the interpreter tests on CPU tensors, where the activation and quant ops take
their CPU references."""

from __future__ import annotations

import torch

from ..activation.clamped_swiglu_and_mul import ALPHA, LIMIT
from ..triton_launch import next_pow2
from .fused_moe_checks import FP8, QUANT_BLOCK
from .moe_dispatch import MoeLaunchRule


def _dot_mode(device: torch.device, dtype: torch.dtype) -> int:
    from ...triton.fused_moe import DOT_BF16, DOT_FP32, DOT_NATIVE

    if device.type != "cuda" or dtype == torch.float32:
        return DOT_FP32
    if dtype == FP8 and torch.cuda.get_device_capability(device) < (8, 9):
        return DOT_BF16
    return DOT_NATIVE


def _grouped_gemm(a: torch.Tensor, a_scales: torch.Tensor | None, b: torch.Tensor,
                  b_scales: torch.Tensor | None, c: torch.Tensor, weights: torch.Tensor | None,
                  bias: torch.Tensor | None,
                  align: tuple[torch.Tensor, torch.Tensor, torch.Tensor], a_div: int,
                  top_k: int, m_blocks: int, rule: MoeLaunchRule, pdl: bool) -> None:
    """C rows = A rows (through the alignment) @ B[e]^T (+ bias[e]) (x weight). B is fp8
    with a_scales (fp8_block), uint8 packed E2M1 with E8M0 b_scales (mxfp4), else A's dtype."""
    from ...triton.fused_moe import QUANT_FP8, QUANT_MXFP4, QUANT_NONE, fused_moe_gemm_kernel

    sorted_ids, expert_ids, total = align
    mxfp4 = b.dtype == torch.uint8
    mode = QUANT_FP8 if a_scales is not None else QUANT_MXFP4 if mxfp4 else QUANT_NONE
    n, k = b.shape[1], b.shape[2] * (2 if mxfp4 else 1)
    sa = a_scales if a_scales is not None else c  # unread stand-ins where not used
    sb = b_scales if b_scales is not None else c
    w = weights if weights is not None else c
    bi = bias if bias is not None else c
    grid = (m_blocks * -(-n // rule.block_n),)
    extra = {"launch_pdl": True} if pdl else {}
    fused_moe_gemm_kernel[grid](
        a, b, c, sa, sb, w, bi, sorted_ids, expert_ids, total, n, k, c.shape[0], a_div,
        top_k, m_blocks, a.stride(0), b.stride(0), b.stride(1), c.stride(0),
        sa.stride(0), sa.stride(-1), sb.stride(0), sb.stride(-2), sb.stride(-1),
        w.stride(0), w.stride(-1), bi.stride(0), BLOCK_M=rule.block_m,
        BLOCK_N=rule.block_n, BLOCK_K=rule.block_k, GROUP_M=rule.group_m, QUANT=mode,
        MUL_WEIGHT=weights is not None, HAS_BIAS=bias is not None,
        DOT=_dot_mode(a.device, a.dtype), USE_PDL=pdl,
        SPLIT_DOT=mxfp4 and getattr(rule, "split_dot", False),
        FAST_DECODE=mxfp4 and _fast_decode(a), num_warps=rule.num_warps,
        num_stages=rule.num_stages, **extra)


def _fast_decode(a: torch.Tensor) -> bool:
    """mxfp4: the PTX decode (bf16 pairs, bf16x2 fma: sm_80+) for bf16 activations on CUDA."""
    return (a.device.type == "cuda" and a.dtype == torch.bfloat16
            and torch.cuda.get_device_capability(a.device) >= (8, 0))


def _activate(gate_up: torch.Tensor, activation: str, alpha: float, limit: float,
              pdl: bool) -> torch.Tensor:
    from ..activation.clamped_swiglu_and_mul import clamped_swiglu_and_mul
    from ..activation.silu_and_mul import silu_and_mul

    if activation == "clamped_swiglu":
        return clamped_swiglu_and_mul(gate_up, alpha, limit, enable_pdl=pdl)
    return silu_and_mul(gate_up, enable_pdl=pdl)


def launch_fused_moe(out: torch.Tensor, hidden: torch.Tensor, w13: torch.Tensor,
                     w2: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                     quant: str | None, w13_scales: torch.Tensor | None,
                     w2_scales: torch.Tensor | None, rule: MoeLaunchRule, pdl: bool, *,
                     activation: str = "silu", w13_bias: torch.Tensor | None = None,
                     w2_bias: torch.Tensor | None = None, swiglu_alpha: float = ALPHA,
                     swiglu_limit: float = LIMIT) -> None:
    """align -> grouped GEMM 1 -> activation (+ fp8 quant) -> grouped GEMM 2 -> combine."""
    from ..quant.per_token_group_quant_fp8 import per_token_group_quant_fp8
    from ..quant.silu_and_mul_quant_fp8 import silu_and_mul_quant_fp8
    from .moe_align_block_size import launch_moe_align_block_size, max_padded_rows

    t, h = hidden.shape
    e, inner, top_k = w13.shape[0], w13.shape[1] // 2, topk_ids.shape[1]
    rows = t * top_k
    if t == 0:
        return
    ids = topk_ids.contiguous()
    block_m = rule.block_m
    capacity = max_padded_rows(rows, e, block_m)
    align = (torch.empty(capacity, dtype=torch.int32, device=hidden.device),
             torch.empty(capacity // block_m, dtype=torch.int32, device=hidden.device),
             torch.empty(1, dtype=torch.int32, device=hidden.device))
    launch_moe_align_block_size(*align, ids, e, block_m, pdl)
    # At most min(E, rows) experts are non-empty, so fewer tiles than the capacity can
    # hold rows; the rest would only exit.
    m_blocks = -(-(rows + min(e, rows) * (block_m - 1)) // block_m)
    gate_up = torch.empty(rows, 2 * inner, dtype=hidden.dtype, device=hidden.device)
    y = torch.empty(rows, h, dtype=hidden.dtype, device=hidden.device)
    if quant == "fp8_block":
        hq, hs = per_token_group_quant_fp8(hidden, QUANT_BLOCK, enable_pdl=pdl)
        _grouped_gemm(hq, hs, w13, w13_scales, gate_up, None, w13_bias, align, top_k, top_k,
                      m_blocks, rule, pdl)
        if activation == "silu":
            act, act_s = silu_and_mul_quant_fp8(gate_up, QUANT_BLOCK, enable_pdl=pdl)
        else:  # no fused clamped-SwiGLU quantizer: activate, then quantize
            act, act_s = per_token_group_quant_fp8(
                _activate(gate_up, activation, swiglu_alpha, swiglu_limit, pdl), QUANT_BLOCK,
                enable_pdl=pdl)
        _grouped_gemm(act, act_s, w2, w2_scales, y, topk_weights, w2_bias, align, 1, top_k,
                      m_blocks, rule, pdl)
    else:  # bf16/fp16/fp32 weights, or mxfp4 weights decoded in the GEMM (W4A16)
        _grouped_gemm(hidden, None, w13, w13_scales, gate_up, None, w13_bias, align, top_k,
                      top_k, m_blocks, rule, pdl)
        act = _activate(gate_up, activation, swiglu_alpha, swiglu_limit, pdl)
        _grouped_gemm(act, None, w2, w2_scales, y, topk_weights, w2_bias, align, 1, top_k,
                      m_blocks, rule, pdl)
    combine(out, y, ids, None, None, e, pdl)


def combine(out: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
            row_of: torch.Tensor | None, weights: torch.Tensor | None, num_experts: int,
            pdl: bool) -> None:
    """out[t] = sum of token t's slot rows of y (through row_of, times weights, if given)."""
    from ...triton.fused_moe import moe_combine_kernel

    t, h = out.shape
    block_h = min(1024, next_pow2(h))
    extra = {"launch_pdl": True} if pdl else {}
    moe_combine_kernel[(t, -(-h // block_h))](
        y, ids, row_of if row_of is not None else ids, weights if weights is not None else y,
        out, h, ids.shape[1], num_experts, y.stride(0), out.stride(0), BLOCK_H=block_h,
        MAP_ROWS=row_of is not None, WEIGHTED=weights is not None, USE_PDL=pdl, num_warps=4,
        **extra)


def launch_fused_moe_grouped(out: torch.Tensor, hidden: torch.Tensor, w13: torch.Tensor,
                             w2: torch.Tensor, topk_weights: torch.Tensor,
                             topk_ids: torch.Tensor, w13_scales: torch.Tensor,
                             w2_scales: torch.Tensor, config: str, pdl: bool) -> None:
    """quant="fp8_block" through the CUTLASS grouped GEMM (sm_90a): the routed rows sorted
    by expert with no padding (moe_align_block_size with blocks of one row), the tokens
    quantized once and gathered, grouped GEMM 1 -> silu_and_mul_quant_fp8 -> grouped GEMM 2,
    then each token's rows summed back with their routing weights. SiLU experts without
    biases only (fused_moe keeps the others on the Triton path)."""
    from ..quant.per_token_group_quant_fp8 import per_token_group_quant_fp8
    from ..quant.silu_and_mul_quant_fp8 import silu_and_mul_quant_fp8
    from .fp8_blockwise_grouped_mm import fp8_blockwise_grouped_mm
    from .moe_align_block_size import launch_moe_align_block_size

    t, h = hidden.shape
    e, inner, top_k = w13.shape[0], w2.shape[2], topk_ids.shape[1]
    rows = t * top_k
    if t == 0:
        return
    dev = hidden.device
    ids = topk_ids.contiguous()
    sorted_rows = torch.empty(rows, dtype=torch.int32, device=dev)
    expert_of = torch.empty(rows, dtype=torch.int32, device=dev)
    total = torch.empty(1, dtype=torch.int32, device=dev)
    launch_moe_align_block_size(sorted_rows, expert_of, total, ids, e, 1, pdl)
    # Each expert's first sorted row; the tail past the routed rows (-1) counts as expert E.
    offsets = torch.searchsorted(torch.where(expert_of < 0, e, expert_of),
                                 torch.arange(e + 1, dtype=torch.int32, device=dev),
                                 out_int32=True)
    hq, hs = per_token_group_quant_fp8(hidden, QUANT_BLOCK, enable_pdl=pdl)
    # Quantize once per token, then gather: the same values as quantizing each routed row.
    token = (sorted_rows.clamp(max=rows - 1) // top_k).long()  # tail rows: any valid token
    gate_up = torch.empty(rows, 2 * inner, dtype=hidden.dtype, device=dev)
    fp8_blockwise_grouped_mm(hq.index_select(0, token), hs.index_select(0, token), w13,
                             w13_scales, offsets, out=gate_up, config=config, enable_pdl=pdl)
    act, act_s = silu_and_mul_quant_fp8(gate_up, QUANT_BLOCK, enable_pdl=pdl)
    y = torch.empty(rows, h, dtype=hidden.dtype, device=dev)
    fp8_blockwise_grouped_mm(act, act_s, w2, w2_scales, offsets, out=y, config=config,
                             enable_pdl=pdl)
    # slot -> its sorted row; the tail's sentinel (rows) lands in the spare last entry
    row_of = torch.empty(rows + 1, dtype=torch.int32, device=dev)
    row_of.index_copy_(0, sorted_rows.long(),
                       torch.arange(rows, dtype=torch.int32, device=dev))
    combine(out, y, ids, row_of, topk_weights.contiguous(), e, pdl)


__all__: list[str] = []
