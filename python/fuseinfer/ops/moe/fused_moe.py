"""fused_moe: the expert MLPs of a mixture-of-experts layer, SwiGLU experts, top-k routed.

    out[t] = sum_j topk_weights[t, j] * w2[e] @ (silu(w13[e][:I] @ h) * (w13[e][I:] @ h))
             with h = hidden[t], e = topk_ids[t, j]

hidden [T, H] bf16, fp16 or fp32; w13 [E, 2I, H] (the gate rows, then the up rows) and w2
[E, H, I], rows contiguous (the Hugging Face [out, in] layout); topk_weights float32 [T, k];
topk_ids int32 (or int64) [T, k]. A slot whose id is outside [0, E) (-1 or E: masked or
handled elsewhere, e.g. a shared expert) contributes nothing. out [T, H] in hidden's dtype.

quant="fp8_block": w13 and w2 are float8_e4m3fn with one float32 scale per 128 x 128 block
(w13_scales [E, ceil(2I/128), H/128], w2_scales [E, ceil(H/128), I/128]: fp8_blockwise_mm's
`weight_scale_inv` per expert); the activations entering each GEMM are quantized per token
and 128 channels (a_group_size), as per_token_group_quant_fp8 does. H and I multiples of 128.

CUDA: moe_align_block_size groups the (token, slot) rows by expert, a Triton grouped GEMM
gathers hidden rows into w13, silu_and_mul (or silu_and_mul_quant_fp8) activates, a second
grouped GEMM through w2 scales each row by its routing weight, and a combine sums each
token's k rows; block sizes from the `moe` dispatch entry (moe_dispatch.py), PDL on sm_90+.
With quant="fp8_block", the entry's fp8_backend "cutlass" and a CUTLASS configuration for
R = T * k on sm_90a (bf16/fp16 activations), the two GEMMs are fp8_blockwise_grouped_mm
over the rows sorted by expert instead (launch_fused_moe_grouped).
CPU: the float32 reference below (also the test oracle).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..arg_checks import fail
from ..library import LIB, define, impl_cpu, impl_fake
from ..triton_launch import next_pow2, use_pdl
from .moe_dispatch import MoeLaunchRule, effective

OP = "fused_moe"
_SCHEMA = ("fused_moe(Tensor(a!) out, Tensor hidden, Tensor w13, Tensor w2, "
           "Tensor topk_weights, Tensor topk_ids, str activation=\"silu\", str? quant=None, "
           "Tensor? w13_scales=None, Tensor? w2_scales=None, int a_group_size=128, "
           "bool? enable_pdl=None) -> ()")
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
FP8 = torch.float8_e4m3fn
QUANT_BLOCK = 128  # weight scale blocks and activation groups (the checkpoints' layout)
QUANTS = (None, "fp8_block")


def dequantize_block_weights(w: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """w [E, N, K] fp8 times its [E, ceil(N/128), K/128] block scales, as float32."""
    n = w.shape[1]
    s = scales.float().repeat_interleave(QUANT_BLOCK, dim=1)[:, :n]
    return w.float() * s.repeat_interleave(QUANT_BLOCK, dim=2)


def _quant_dequant(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """x as the FP8 path's GEMMs see it: quantized per token and group, then scaled back."""
    from ..quant.per_token_group_quant_fp8 import reference_per_token_group_quant_fp8

    q, s = reference_per_token_group_quant_fp8(x, group_size)
    return (q.float().view(x.shape[0], -1, group_size) * s[..., None]).view(x.shape)


def reference_fused_moe(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                        topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                        quant: str | None = None, w13_scales: torch.Tensor | None = None,
                        w2_scales: torch.Tensor | None = None,
                        a_group_size: int = QUANT_BLOCK) -> torch.Tensor:
    """The semantics in float32 (the CPU kernel and the test oracle): out [T, H] float32.
    Expert by expert over the rows routed to it; intermediates are not rounded."""
    t, h = hidden.shape
    inner = w2.shape[2]
    out = torch.zeros(t, h, dtype=torch.float32, device=hidden.device)
    if quant == "fp8_block":
        assert w13_scales is not None and w2_scales is not None
        w13f = dequantize_block_weights(w13, w13_scales)
        w2f = dequantize_block_weights(w2, w2_scales)
        x = _quant_dequant(hidden.float(), a_group_size) if t else hidden.float()
    else:
        w13f, w2f, x = w13.float(), w2.float(), hidden.float()
    for e in range(w13.shape[0]):
        token, slot = (topk_ids == e).nonzero(as_tuple=True)
        if token.numel() == 0:
            continue
        gate_up = x[token] @ w13f[e].t()
        act = F.silu(gate_up[:, :inner]) * gate_up[:, inner:]
        if quant == "fp8_block":
            act = _quant_dequant(act, a_group_size)
        y = act @ w2f[e].t()
        out.index_add_(0, token, y * topk_weights[token, slot].float()[:, None])
    return out


def _check_scales(name: str, scales: torch.Tensor | None, w: torch.Tensor) -> None:
    e, n, k = w.shape
    want = [e, -(-n // QUANT_BLOCK), k // QUANT_BLOCK]
    if scales is None:
        fail(OP, name, "is required with quant='fp8_block'")
    if list(scales.shape) != want or scales.dtype != torch.float32:
        fail(OP, name, f"must be float32 {want} (one per 128 x 128 block), got "
             f"{scales.dtype} {list(scales.shape)}")
    if scales.device != w.device:
        fail(OP, name, f"must be on {w.device}, got {scales.device}")


def check_fused_moe(out: torch.Tensor, hidden: torch.Tensor, w13: torch.Tensor,
                    w2: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                    activation: str = "silu", quant: str | None = None,
                    w13_scales: torch.Tensor | None = None,
                    w2_scales: torch.Tensor | None = None, a_group_size: int = QUANT_BLOCK,
                    enable_pdl: bool | None = None) -> None:
    """Every argument of fused_moe; a ValueError naming the first bad one."""
    if activation != "silu":
        fail(OP, "activation", f"must be 'silu' (SwiGLU experts), got {activation!r}")
    if quant not in QUANTS:
        fail(OP, "quant", f"must be None or 'fp8_block', got {quant!r}")
    if hidden.dim() != 2 or hidden.dtype not in DTYPES:
        fail(OP, "hidden", f"must be bfloat16, float16 or float32 [T, H], got {hidden.dtype} "
             f"{list(hidden.shape)}")
    t, h = hidden.shape
    wdtype = FP8 if quant else hidden.dtype
    if w13.dim() != 3 or w13.shape[2] != h or w13.shape[1] % 2 or w13.shape[1] == 0 \
            or w13.dtype != wdtype:
        fail(OP, "w13", f"must be {wdtype} [E, 2I, H={h}], got {w13.dtype} "
             f"{list(w13.shape)}")
    e, inner = w13.shape[0], w13.shape[1] // 2
    if list(w2.shape) != [e, h, inner] or w2.dtype != wdtype:
        fail(OP, "w2", f"must be {wdtype} [E={e}, H={h}, I={inner}], got {w2.dtype} "
             f"{list(w2.shape)}")
    for name, w in (("hidden", hidden), ("w13", w13), ("w2", w2)):
        if w.numel() and w.stride(-1) != 1:
            fail(OP, name, "must have a contiguous last dim")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != t or topk_ids.shape[1] == 0 \
            or topk_ids.dtype not in (torch.int32, torch.int64):
        fail(OP, "topk_ids", f"must be int32 [T={t}, k], got {topk_ids.dtype} "
             f"{list(topk_ids.shape)}")
    if list(topk_weights.shape) != list(topk_ids.shape) \
            or topk_weights.dtype != torch.float32:
        fail(OP, "topk_weights", f"must be float32 {list(topk_ids.shape)} like topk_ids, got "
             f"{topk_weights.dtype} {list(topk_weights.shape)}")
    if quant:
        if a_group_size != QUANT_BLOCK:
            fail(OP, "a_group_size", f"must be {QUANT_BLOCK} (the weight scale block), got "
                 f"{a_group_size}")
        if h % QUANT_BLOCK or inner % QUANT_BLOCK:
            fail(OP, "w13", f"H ({h}) and I ({inner}) must be multiples of {QUANT_BLOCK} "
                 "with quant='fp8_block'")
        _check_scales("w13_scales", w13_scales, w13)
        _check_scales("w2_scales", w2_scales, w2)
    elif w13_scales is not None or w2_scales is not None:
        fail(OP, "w13_scales", "are only taken with quant='fp8_block'")
    if list(out.shape) != [t, h] or out.dtype != hidden.dtype:
        fail(OP, "out", f"must be {hidden.dtype} [{t}, {h}], got {out.dtype} "
             f"{list(out.shape)}")
    if out.numel() and out.stride(1) != 1:
        fail(OP, "out", "must have a contiguous last dim")
    for name, x in (("w13", w13), ("w2", w2), ("topk_weights", topk_weights),
                    ("topk_ids", topk_ids), ("out", out)):
        if x.device != hidden.device:
            fail(OP, name, f"must be on {hidden.device} like hidden, got {x.device}")


def _cpu(out: torch.Tensor, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
         topk_weights: torch.Tensor, topk_ids: torch.Tensor, activation: str = "silu",
         quant: str | None = None, w13_scales: torch.Tensor | None = None,
         w2_scales: torch.Tensor | None = None, a_group_size: int = QUANT_BLOCK,
         enable_pdl: bool | None = None) -> None:
    check_fused_moe(out, hidden, w13, w2, topk_weights, topk_ids, activation, quant,
                    w13_scales, w2_scales, a_group_size)
    out.copy_(reference_fused_moe(hidden, w13, w2, topk_weights, topk_ids, quant,
                                  w13_scales, w2_scales, a_group_size))


def _dot_mode(device: torch.device, dtype: torch.dtype) -> int:
    from ...triton.fused_moe import DOT_BF16, DOT_FP32, DOT_NATIVE

    if device.type != "cuda" or dtype == torch.float32:
        return DOT_FP32
    if dtype == FP8 and torch.cuda.get_device_capability(device) < (8, 9):
        return DOT_BF16
    return DOT_NATIVE


def _grouped_gemm(a: torch.Tensor, a_scales: torch.Tensor | None, b: torch.Tensor,
                  b_scales: torch.Tensor | None, c: torch.Tensor, weights: torch.Tensor | None,
                  align: tuple[torch.Tensor, torch.Tensor, torch.Tensor], a_div: int,
                  top_k: int, m_blocks: int, rule: MoeLaunchRule, pdl: bool) -> None:
    from ...triton.fused_moe import fused_moe_gemm_kernel

    sorted_ids, expert_ids, total = align
    n, k = b.shape[1], b.shape[2]
    sa = a_scales if a_scales is not None else c  # unread stand-ins when not quantized
    sb = b_scales if b_scales is not None else c
    w = weights if weights is not None else c
    grid = (m_blocks * -(-n // rule.block_n),)
    extra = {"launch_pdl": True} if pdl else {}
    fused_moe_gemm_kernel[grid](
        a, b, c, sa, sb, w, sorted_ids, expert_ids, total, n, k, c.shape[0], a_div, top_k,
        m_blocks, a.stride(0), b.stride(0), b.stride(1), c.stride(0),
        sa.stride(0), sa.stride(-1), sb.stride(0), sb.stride(-2), sb.stride(-1),
        w.stride(0), w.stride(-1), BLOCK_M=rule.block_m, BLOCK_N=rule.block_n,
        BLOCK_K=rule.block_k, GROUP_M=rule.group_m, QUANT=a_scales is not None,
        MUL_WEIGHT=weights is not None, DOT=_dot_mode(a.device, a.dtype), USE_PDL=pdl,
        num_warps=rule.num_warps, num_stages=rule.num_stages, **extra)


def launch_fused_moe(out: torch.Tensor, hidden: torch.Tensor, w13: torch.Tensor,
                     w2: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                     quant: str | None, w13_scales: torch.Tensor | None,
                     w2_scales: torch.Tensor | None, rule: MoeLaunchRule, pdl: bool) -> None:
    """align -> grouped GEMM 1 -> SwiGLU (+ quant) -> grouped GEMM 2 (x routing weight)
    -> combine; Triton kernels (also run directly by the interpreter tests on the CPU,
    where the activation ops take their CPU references)."""
    from ..activation.silu_and_mul import silu_and_mul
    from ..quant.per_token_group_quant_fp8 import per_token_group_quant_fp8
    from ..quant.silu_and_mul_quant_fp8 import silu_and_mul_quant_fp8
    from .moe_align_block_size import launch_moe_align_block_size, max_padded_rows

    t, h = hidden.shape
    e, inner, top_k = w13.shape[0], w2.shape[2], topk_ids.shape[1]
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
    if quant:
        hq, hs = per_token_group_quant_fp8(hidden, QUANT_BLOCK, enable_pdl=pdl)
        _grouped_gemm(hq, hs, w13, w13_scales, gate_up, None, align, top_k, top_k,
                      m_blocks, rule, pdl)
        act, act_s = silu_and_mul_quant_fp8(gate_up, QUANT_BLOCK, enable_pdl=pdl)
        _grouped_gemm(act, act_s, w2, w2_scales, y, topk_weights, align, 1, top_k,
                      m_blocks, rule, pdl)
    else:
        _grouped_gemm(hidden, None, w13, None, gate_up, None, align, top_k, top_k,
                      m_blocks, rule, pdl)
        act = silu_and_mul(gate_up, enable_pdl=pdl)
        _grouped_gemm(act, None, w2, None, y, topk_weights, align, 1, top_k, m_blocks,
                      rule, pdl)
    _combine(out, y, ids, None, None, e, pdl)


def _combine(out: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
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
    then each token's rows summed back with their routing weights."""
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
    _combine(out, y, ids, row_of, topk_weights.contiguous(), e, pdl)


def _cuda(out: torch.Tensor, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
          topk_weights: torch.Tensor, topk_ids: torch.Tensor, activation: str = "silu",
          quant: str | None = None, w13_scales: torch.Tensor | None = None,
          w2_scales: torch.Tensor | None = None, a_group_size: int = QUANT_BLOCK,
          enable_pdl: bool | None = None) -> None:
    check_fused_moe(out, hidden, w13, w2, topk_weights, topk_ids, activation, quant,
                    w13_scales, w2_scales, a_group_size)
    table = effective(hidden.device.index)
    pdl = table.enable_pdl and use_pdl(enable_pdl, hidden.device)
    grouped = table.fp8_grouped_config(topk_ids.numel()) if quant else None
    if grouped is not None and grouped_takes(hidden):
        launch_fused_moe_grouped(out, hidden, w13, w2, topk_weights, topk_ids, w13_scales,
                                 w2_scales, grouped, pdl)
        return
    launch_fused_moe(out, hidden, w13, w2, topk_weights, topk_ids, quant, w13_scales,
                     w2_scales, table.rule(hidden.shape[0], quant), pdl)


def grouped_takes(hidden: torch.Tensor) -> bool:
    """Whether the CUTLASS grouped path runs this call: sm_90a, bf16 or fp16 activations."""
    from .fp8_blockwise_grouped_mm import cutlass_grouped_runs

    return hidden.dtype in (torch.bfloat16, torch.float16) and cutlass_grouped_runs(hidden.device)


def fused_moe(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
              topk_weights: torch.Tensor, topk_ids: torch.Tensor, *,
              activation: str = "silu", quant: str | None = None,
              w13_scales: torch.Tensor | None = None, w2_scales: torch.Tensor | None = None,
              a_group_size: int = QUANT_BLOCK, enable_pdl: bool | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """The routed SwiGLU experts of hidden [T, H]: out [T, H] in hidden's dtype (into
    `out` if given). See the module docstring for layouts and quant='fp8_block'."""
    if out is None:
        out = torch.empty_like(hidden, memory_format=torch.contiguous_format)
    torch.ops.fuseinfer.fused_moe(out, hidden, w13, w2, topk_weights, topk_ids,
                                  activation=activation, quant=quant, w13_scales=w13_scales,
                                  w2_scales=w2_scales, a_group_size=a_group_size,
                                  enable_pdl=enable_pdl)
    return out


define(_SCHEMA)
impl_cpu(OP, _cpu)
impl_fake(OP, check_fused_moe)
LIB.impl(OP, _cuda, "CUDA")


__all__ = ["fused_moe"]
