"""GPT-OSS's sparse layers from a checkpoint, or random ones: the router (with its bias) and
the experts stacked into fused_moe's layout, with their biases.

Checkpoint layouts, per layer `model.layers.{i}.mlp.`:
  router.weight [E, H], router.bias [E]
  experts.gate_up_proj_bias [E, 2I], experts.down_proj_bias [E, H]
  float: experts.gate_up_proj [E, H, 2I], experts.down_proj [E, I, H] (input dim first)
  MXFP4 (the published checkpoints): experts.gate_up_proj_blocks uint8 [E, 2I, H/32, 16]
         with experts.gate_up_proj_scales uint8 [E, 2I, H/32], and down_proj_blocks
         [E, H, I/32, 16] with down_proj_scales [E, H, I/32] (output dim first, 32 E2M1
         codes in 16 bytes per block, the even element in the low nibble)
Gate and up columns are interleaved (gate j at 2j, up j at 2j + 1); fused_moe reads each
expert's gate rows then its up rows, so rows (and biases) are de-interleaved once here.
MXFP4 experts stay MXFP4 (fused_moe's W4A16 path) unless `dequantize`: then they become
the model dtype at load (the `--moe-weight-dtype bf16` baseline), one layer at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..ops.quant.fp4_format import dequantize_mxfp4
from .config import ModelConfig
from .moe_block import MoeWeights

MoeGetter = Callable[[int], MoeWeights]
MX_BLOCK = 32  # elements per E8M0 scale
# Dummy MXFP4 scales: uniform random E2M1 codes have an rms of ~2.9, so 2^-7 (E8M0 120)
# gives experts of std ~0.02, as the dummy float weights have.
DUMMY_SCALES = (119, 122)


def deinterleave(t: torch.Tensor) -> torch.Tensor:
    """[E, 2I, ...] with gate/up rows interleaved -> the gate rows, then the up rows."""
    return torch.cat((t[:, 0::2], t[:, 1::2]), dim=1)


def _prefix(i: int) -> str:
    return f"model.layers.{i}.mlp."


def _mxfp4_experts(w13: torch.Tensor, w2: torch.Tensor, s13: torch.Tensor,
                   s2: torch.Tensor, dtype: torch.dtype, dequantize: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                              torch.Tensor | None]:
    """MXFP4 experts as stored, or dequantized to `dtype` when asked (no scales then)."""
    if not dequantize:
        return w13, w2, s13, s2
    return dequantize_mxfp4(w13, s13, dtype), dequantize_mxfp4(w2, s2, dtype), None, None


def checkpoint_gpt_oss_moe(config: ModelConfig, stored: Callable[[str], torch.Tensor],
                           has: Callable[[str], bool], dtype: torch.dtype,
                           dequantize: bool, folder: str) -> MoeGetter:
    """Layer -> its router and stacked experts, read through `stored` (which marks tensors
    used)."""
    moe, hidden = config.moe, config.hidden_size
    assert moe is not None
    e, inner = moe.num_experts, moe.intermediate_size

    def part(name: str, shape: tuple[int, ...], want: torch.dtype | None) -> torch.Tensor:
        t = stored(name)
        if tuple(t.shape) != shape or (want is not None and t.dtype != want) or \
                (want is None and not t.dtype.is_floating_point):
            kind = want if want is not None else "a float dtype"
            raise ValueError(f"{folder}: {name} must be {kind} {list(shape)}, got {t.dtype} "
                             f"{list(t.shape)}")
        return t

    def layer(i: int) -> MoeWeights:
        p = _prefix(i)
        x = p + "experts."
        if has(x + "gate_up_proj_blocks"):
            if hidden % MX_BLOCK or inner % MX_BLOCK:
                raise ValueError(f"{folder}: MXFP4 experts need H ({hidden}) and I "
                                 f"({inner}) multiples of {MX_BLOCK}")
            u8 = torch.uint8
            w13 = part(x + "gate_up_proj_blocks", (e, 2 * inner, hidden // MX_BLOCK, 16), u8)
            s13 = part(x + "gate_up_proj_scales", (e, 2 * inner, hidden // MX_BLOCK), u8)
            w2 = part(x + "down_proj_blocks", (e, hidden, inner // MX_BLOCK, 16), u8)
            s2 = part(x + "down_proj_scales", (e, hidden, inner // MX_BLOCK), u8)
            experts = _mxfp4_experts(deinterleave(w13.reshape(e, 2 * inner, hidden // 2)),
                                     w2.reshape(e, hidden, inner // 2).contiguous(),
                                     deinterleave(s13), s2.contiguous(), dtype, dequantize)
        else:
            gate_up = part(x + "gate_up_proj", (e, hidden, 2 * inner), None)
            down = part(x + "down_proj", (e, inner, hidden), None)
            experts = (deinterleave(gate_up.transpose(1, 2)).to(dtype).contiguous(),
                       down.transpose(1, 2).to(dtype).contiguous(), None, None)
        w13, w2, s13, s2 = experts
        return MoeWeights(
            gate=part(p + "router.weight", (e, hidden), None).to(dtype),
            w13=w13, w2=w2, w13_scales=s13, w2_scales=s2,
            router_bias=part(p + "router.bias", (e,), None).to(dtype),
            w13_bias=deinterleave(part(x + "gate_up_proj_bias", (e, 2 * inner),
                                       None)).to(dtype),
            w2_bias=part(x + "down_proj_bias", (e, hidden), None).to(dtype).contiguous())

    return layer


def dummy_gpt_oss_moe(config: ModelConfig, dtype: torch.dtype, device: torch.device | str,
                      seed: int, dequantize: bool) -> MoeGetter:
    """Random routers and experts drawn on the device, layer by layer: MXFP4 (random codes,
    E8M0 scales in DUMMY_SCALES) when the config's experts are MXFP4, else std-0.02 floats;
    biases std 0.02."""
    moe, hidden = config.moe, config.hidden_size
    assert moe is not None
    e, inner = moe.num_experts, moe.intermediate_size
    gen = torch.Generator(device=torch.device(device)).manual_seed(seed + 2)

    def normal(*shape: int) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=device).normal_(0.0, 0.02, generator=gen)

    def codes(*shape: int) -> torch.Tensor:
        return torch.randint(0, 256, shape, dtype=torch.uint8, device=device, generator=gen)

    def scales(*shape: int) -> torch.Tensor:
        return torch.randint(*DUMMY_SCALES, shape, dtype=torch.uint8, device=device,
                             generator=gen)

    def layer(i: int) -> MoeWeights:
        if moe.expert_format == "mxfp4":
            w13, w2, s13, s2 = _mxfp4_experts(
                codes(e, 2 * inner, hidden // 2), codes(e, hidden, inner // 2),
                scales(e, 2 * inner, hidden // MX_BLOCK), scales(e, hidden, inner // MX_BLOCK),
                dtype, dequantize)
        else:
            w13, w2, s13, s2 = normal(e, 2 * inner, hidden), normal(e, hidden, inner), None, \
                None
        return MoeWeights(gate=normal(e, hidden), w13=w13, w2=w2, w13_scales=s13,
                          w2_scales=s2, router_bias=normal(e), w13_bias=normal(e, 2 * inner),
                          w2_bias=normal(e, hidden))

    return layer
