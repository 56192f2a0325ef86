"""Qwen3-MoE's experts from a checkpoint, or random ones, stacked per layer into the
w13 [E, 2I, H] / w2 [E, H, I] layout fused_moe reads.

Checkpoint layouts: the published per-expert tensors (`mlp.experts.{e}.gate_proj.weight`,
`up_proj`, `down_proj`; what save_pretrained writes too), each optionally FP8 with its
`weight_scale_inv`; or transformers' in-memory stacked tensors (`mlp.experts.gate_up_proj`,
`mlp.experts.down_proj`, float). Per-expert tensors are copied into one preallocated
tensor per layer, so no second copy of the experts is ever held (Qwen3-30B-A3B's are
~58 GB in bf16). Float experts become FP8 when the scheme converts them (`--quantization
fp8`, or a dummy FP8 config), one layer at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .config import ModelConfig, MoeConfig
from .fp8_linear import FP8
from .moe_block import quantize_experts
from .quantization import BLOCK, Fp8BlockConfig

# (w13, w2, w13_scales, w2_scales) of one layer; the scales None for float experts
Experts = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]
ExpertsGetter = Callable[[int], Experts]


def expert_names(i: int, e: int) -> tuple[str, str, str]:
    p = f"model.layers.{i}.mlp.experts.{e}."
    return p + "gate_proj.weight", p + "up_proj.weight", p + "down_proj.weight"


def _shapes(moe: MoeConfig, hidden: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    e, inner = moe.num_experts, moe.intermediate_size
    return (e, 2 * inner, hidden), (e, hidden, inner)


def _quantized(scheme: Fp8BlockConfig | None, i: int, w13: torch.Tensor,
               w2: torch.Tensor) -> Experts:
    """Float experts, quantized to FP8 when the scheme converts this layer's experts."""
    if scheme is None or not scheme.converts(expert_names(i, 0)[0].removesuffix(".weight")):
        return w13, w2, None, None
    q13, s13 = quantize_experts(w13, f"model.layers.{i}.mlp.experts (gate/up)")
    q2, s2 = quantize_experts(w2, f"model.layers.{i}.mlp.experts (down)")
    return q13, q2, s13, s2


def checkpoint_experts(config: ModelConfig, stored: Callable[[str], torch.Tensor],
                       has: Callable[[str], bool], dtype: torch.dtype,
                       device: torch.device | str, scheme: Fp8BlockConfig | None,
                       folder: str) -> ExpertsGetter:
    """Layer -> its stacked experts, read through `stored` (which marks tensors used);
    called for the sparse layers only (never for a dense model)."""
    hidden = config.hidden_size

    def part(name: str, shape: tuple[int, ...], fp8: bool) -> torch.Tensor:
        t = stored(name)
        if (t.dtype == FP8) != fp8 or tuple(t.shape) != shape:
            kind = "float8_e4m3fn" if fp8 else "a float"
            raise ValueError(f"{folder}: {name} must be {kind} {list(shape)} (like the "
                             f"layer's first expert), got {t.dtype} {list(t.shape)}")
        return t

    def scale(name: str, rows: int, cols: int) -> torch.Tensor:  # [ceil(N/128), K/128]
        return part(name + "_scale_inv", (-(-rows // BLOCK), cols // BLOCK), False)

    def experts(i: int) -> Experts:
        moe = config.moe
        assert moe is not None
        inner = moe.intermediate_size
        s13, s2 = _shapes(moe, hidden)
        fused = f"model.layers.{i}.mlp.experts."
        if has(fused + "gate_up_proj"):  # transformers' stacked layout (float)
            return _quantized(scheme, i, part(fused + "gate_up_proj", s13, False).to(dtype),
                              part(fused + "down_proj", s2, False).to(dtype))
        fp8 = stored(expert_names(i, 0)[0]).dtype == FP8
        if fp8 and (config.quantization is None or inner % BLOCK or hidden % BLOCK):
            raise ValueError(f"{folder}: {expert_names(i, 0)[0]} is float8_e4m3fn, which "
                             "needs a quantization_config and H, I multiples of 128")
        w13 = torch.empty(s13, dtype=FP8 if fp8 else dtype, device=device)
        w2 = torch.empty(s2, dtype=w13.dtype, device=device)
        sc13 = torch.empty(moe.num_experts, 2 * inner // BLOCK, hidden // BLOCK,
                           device=device) if fp8 else None
        sc2 = torch.empty(moe.num_experts, hidden // BLOCK, inner // BLOCK,
                          device=device) if fp8 else None
        for x in range(moe.num_experts):
            gate, up, down = expert_names(i, x)
            w13[x, :inner].copy_(part(gate, (inner, hidden), fp8))
            w13[x, inner:].copy_(part(up, (inner, hidden), fp8))
            w2[x].copy_(part(down, (hidden, inner), fp8))
            if sc13 is not None and sc2 is not None:
                g = inner // BLOCK  # the gate rows' blocks, then the up rows'
                sc13[x, :g].copy_(scale(gate, inner, hidden))
                sc13[x, g:].copy_(scale(up, inner, hidden))
                sc2[x].copy_(scale(down, hidden, inner))
        if fp8:
            return w13, w2, sc13, sc2
        return _quantized(scheme, i, w13, w2)

    return experts


def dummy_experts(config: ModelConfig, dtype: torch.dtype, device: torch.device | str,
                  seed: int = 0, scheme: Fp8BlockConfig | None = None,
                  shard: Callable[[torch.Tensor, torch.Tensor],
                                  tuple[torch.Tensor, torch.Tensor]] | None = None
                  ) -> ExpertsGetter:
    """Random stacked experts (std 0.02) drawn in place on the device, layer by layer
    (no float32 or host copy); FP8 (quantized from them) when the scheme says so.
    `shard` (tensor parallelism): each layer is drawn whole (the same numbers as on one
    rank), cut to this rank's slice, then freed, before it is quantized."""
    gen = torch.Generator(device=torch.device(device)).manual_seed(seed + 1)

    def experts(i: int) -> Experts:
        assert config.moe is not None
        s13, s2 = _shapes(config.moe, config.hidden_size)
        w13 = torch.empty(s13, dtype=dtype, device=device).normal_(0.0, 0.02, generator=gen)
        w2 = torch.empty(s2, dtype=dtype, device=device).normal_(0.0, 0.02, generator=gen)
        if shard is not None:
            w13, w2 = shard(w13, w2)
        return _quantized(scheme, i, w13, w2)

    return experts
