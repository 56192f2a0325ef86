"""fused_moe's argument checks: every argument, a ValueError naming the first bad one (the
CPU, fake and CUDA paths all run them)."""

from __future__ import annotations

import torch

from ..activation.clamped_swiglu_and_mul import ALPHA, LIMIT, check_clamped_swiglu_args
from ..arg_checks import FLOAT_DTYPES, fail

OP = "fused_moe"
FP8 = torch.float8_e4m3fn
QUANT_BLOCK = 128  # fp8_block: weight scale blocks and activation groups
MX_BLOCK = 32      # mxfp4: elements per E8M0 scale
QUANTS = (None, "fp8_block", "mxfp4")
ACTIVATIONS = ("silu", "clamped_swiglu")


def _check_block_scales(name: str, scales: torch.Tensor | None, w: torch.Tensor) -> None:
    e, n, k = w.shape
    want = [e, -(-n // QUANT_BLOCK), k // QUANT_BLOCK]
    if scales is None:
        fail(OP, name, "is required with quant='fp8_block'")
    if list(scales.shape) != want or scales.dtype != torch.float32:
        fail(OP, name, f"must be float32 {want} (one per 128 x 128 block), got "
             f"{scales.dtype} {list(scales.shape)}")
    if scales.device != w.device:
        fail(OP, name, f"must be on {w.device}, got {scales.device}")


def _check_mx_scales(name: str, scales: torch.Tensor | None, w: torch.Tensor) -> None:
    e, n, k_bytes = w.shape
    want = [e, n, 2 * k_bytes // MX_BLOCK]
    if scales is None:
        fail(OP, name, "is required with quant='mxfp4'")
    if list(scales.shape) != want or scales.dtype != torch.uint8:
        fail(OP, name, f"must be uint8 (E8M0) {want} (one per 32 elements), got "
             f"{scales.dtype} {list(scales.shape)}")
    if scales.numel() and scales.stride(-1) != 1:
        fail(OP, name, "must have a contiguous last dim")
    if scales.device != w.device:
        fail(OP, name, f"must be on {w.device}, got {scales.device}")


def _check_weights(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                   quant: str | None) -> None:
    h = hidden.shape[1]
    if quant == "mxfp4":
        if h % MX_BLOCK:
            fail(OP, "hidden", f"H ({h}) must be a multiple of {MX_BLOCK} with "
                 "quant='mxfp4'")
        if w13.dim() != 3 or w13.shape[2] * 2 != h or w13.shape[1] % 2 \
                or w13.shape[1] == 0 or w13.dtype != torch.uint8:
            fail(OP, "w13", f"must be uint8 (packed E2M1) [E, 2I, H/2={h // 2}], got "
                 f"{w13.dtype} {list(w13.shape)}")
        e, inner = w13.shape[0], w13.shape[1] // 2
        if inner % MX_BLOCK:
            fail(OP, "w13", f"I ({inner}) must be a multiple of {MX_BLOCK} with "
                 "quant='mxfp4'")
        if list(w2.shape) != [e, h, inner // 2] or w2.dtype != torch.uint8:
            fail(OP, "w2", f"must be uint8 (packed E2M1) [E={e}, H={h}, I/2={inner // 2}], "
                 f"got {w2.dtype} {list(w2.shape)}")
        return
    wdtype = FP8 if quant == "fp8_block" else hidden.dtype
    if w13.dim() != 3 or w13.shape[2] != h or w13.shape[1] % 2 or w13.shape[1] == 0 \
            or w13.dtype != wdtype:
        fail(OP, "w13", f"must be {wdtype} [E, 2I, H={h}], got {w13.dtype} "
             f"{list(w13.shape)}")
    e, inner = w13.shape[0], w13.shape[1] // 2
    if list(w2.shape) != [e, h, inner] or w2.dtype != wdtype:
        fail(OP, "w2", f"must be {wdtype} [E={e}, H={h}, I={inner}], got {w2.dtype} "
             f"{list(w2.shape)}")


def _check_bias(name: str, bias: torch.Tensor | None, want: list[int],
                hidden: torch.Tensor) -> None:
    if bias is None:
        return
    if list(bias.shape) != want or bias.dtype not in (hidden.dtype, torch.float32):
        fail(OP, name, f"must be {hidden.dtype} or float32 {want}, got {bias.dtype} "
             f"{list(bias.shape)}")
    if bias.numel() and bias.stride(-1) != 1:
        fail(OP, name, "must have a contiguous last dim")
    if bias.device != hidden.device:
        fail(OP, name, f"must be on {hidden.device} like hidden, got {bias.device}")


def check_fused_moe(out: torch.Tensor, hidden: torch.Tensor, w13: torch.Tensor,
                    w2: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                    activation: str = "silu", quant: str | None = None,
                    w13_scales: torch.Tensor | None = None,
                    w2_scales: torch.Tensor | None = None, a_group_size: int = QUANT_BLOCK,
                    w13_bias: torch.Tensor | None = None,
                    w2_bias: torch.Tensor | None = None, swiglu_alpha: float = ALPHA,
                    swiglu_limit: float = LIMIT, enable_pdl: bool | None = None) -> None:
    """Every argument of fused_moe; a ValueError naming the first bad one."""
    if activation not in ACTIVATIONS:
        fail(OP, "activation", f"must be 'silu' (SwiGLU experts) or 'clamped_swiglu' "
             f"(GPT-OSS), got {activation!r}")
    if activation == "clamped_swiglu":
        check_clamped_swiglu_args(OP, swiglu_alpha, swiglu_limit,
                                  ("swiglu_alpha", "swiglu_limit"))
    if quant not in QUANTS:
        fail(OP, "quant", f"must be None, 'fp8_block' or 'mxfp4', got {quant!r}")
    if hidden.dim() != 2 or hidden.dtype not in FLOAT_DTYPES:
        fail(OP, "hidden", f"must be bfloat16, float16 or float32 [T, H], got {hidden.dtype} "
             f"{list(hidden.shape)}")
    t, h = hidden.shape
    _check_weights(hidden, w13, w2, quant)
    e, inner = w13.shape[0], w13.shape[1] // 2
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
    if quant == "fp8_block":
        if a_group_size != QUANT_BLOCK:
            fail(OP, "a_group_size", f"must be {QUANT_BLOCK} (the weight scale block), got "
                 f"{a_group_size}")
        if h % QUANT_BLOCK or inner % QUANT_BLOCK:
            fail(OP, "w13", f"H ({h}) and I ({inner}) must be multiples of {QUANT_BLOCK} "
                 "with quant='fp8_block'")
        _check_block_scales("w13_scales", w13_scales, w13)
        _check_block_scales("w2_scales", w2_scales, w2)
    elif quant == "mxfp4":
        _check_mx_scales("w13_scales", w13_scales, w13)
        _check_mx_scales("w2_scales", w2_scales, w2)
    elif w13_scales is not None or w2_scales is not None:
        fail(OP, "w13_scales", "are only taken with quant='fp8_block' or 'mxfp4'")
    _check_bias("w13_bias", w13_bias, [e, 2 * inner], hidden)
    _check_bias("w2_bias", w2_bias, [e, h], hidden)
    if list(out.shape) != [t, h] or out.dtype != hidden.dtype:
        fail(OP, "out", f"must be {hidden.dtype} [{t}, {h}], got {out.dtype} "
             f"{list(out.shape)}")
    if out.numel() and out.stride(1) != 1:
        fail(OP, "out", "must have a contiguous last dim")
    for name, x in (("w13", w13), ("w2", w2), ("topk_weights", topk_weights),
                    ("topk_ids", topk_ids), ("out", out)):
        if x.device != hidden.device:
            fail(OP, name, f"must be on {hidden.device} like hidden, got {x.device}")


__all__: list[str] = []
