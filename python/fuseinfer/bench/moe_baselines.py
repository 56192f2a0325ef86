"""MoE models, inputs, float32 oracles and the torch baselines `fuseinfer bench moe` times
beside topk_softmax / moe_fused_gate and fused_moe on the same buffers.

Baselines:
  eager    the routing in torch ops (softmax + topk (+ renormalize); for DeepSeek-V3 the
           grouped selection: sigmoid, bias, best two per group, topk groups, masked topk)
  compile  the same function under torch.compile (one static-shape graph per shape)
  torch    the layer as a torch pipeline: the routing given, rows sorted by expert
           (argsort, index_select), torch._grouped_mm through w13 and w2 with the experts'
           end offsets (+ the experts' biases), the activation in torch, the routing weight
           applied and the rows summed per token with index_add_ (bf16 weights: torch has
           no blockwise-fp8 grouped GEMM; mxfp4 rows run it on the dequantized bf16 copy)
  flashinfer     the layer as FlashInfer's cutlass_fused_moe (bf16; fp8_block with its
           DeepSeek block scales, H and I multiples of 128), experts re-laid out once
           (SiLU experts without biases only)
  bf16_dequant   mxfp4 rows: the same MXFP4 experts dequantized to bf16 once (outside
           timing) and run through fused_moe quant=None: what W4A16 saves over
           dequantize-at-load

Routing is checked by weights and by the ranking score of the chosen experts (not their
ids: bf16 logits can tie, and then either expert is right).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..models.fp8_linear import quantize_blockwise
from ..ops.moe.fused_moe import QUANT_BLOCK
from ..ops.moe.fused_moe_reference import activate, expert_weight
from ..ops.moe.moe_fused_gate import reference_moe_fused_gate
from ..ops.moe.topk_softmax import reference_topk_softmax
from ..ops.quant.per_token_group_quant_fp8 import reference_per_token_group_quant_fp8

BASELINES = ("eager", "compile", "torch", "flashinfer", "bf16_dequant")
ROUTING_BASELINES = ("eager", "compile")
LAYER_BASELINES = ("torch", "flashinfer", "bf16_dequant")
ROUTING_REL_ERR = 1e-3  # float32 weights of the same math
# bf16 intermediates; fp8 rounding flips; mxfp4 weights are exact in bf16
LAYER_REL_ERR = {None: 2e-2, "fp8_block": 5e-2, "mxfp4": 2e-2}
MX_SCALES = (119, 122)  # E8M0 range of the random MXFP4 experts: weights ~ 1/sqrt(2880)
CHECK_TOKENS = 64  # tokens compared with the float32 oracle (all of them up to this T)
Routing = tuple[torch.Tensor, torch.Tensor]  # (weights float32 [T, k], ids int32 [T, k])


@dataclass(frozen=True)
class MoeModel:
    name: str
    experts: int
    topk: int
    hidden: int
    inter: int  # one expert's intermediate size I (w13 is [E, 2I, H])
    renormalize: bool = False
    softmax_after_topk: bool = False
    groups: int = 0  # > 0: moe_fused_gate's grouped routing
    topk_group: int = 0
    scaling: float = 1.0  # routed_scaling_factor, applied to the weights
    activation: str = "silu"  # "clamped_swiglu": GPT-OSS (alpha 1.702, limit 7)
    bias: bool = False  # experts with biases (w13_bias [E, 2I], w2_bias [E, H], bf16)
    mxfp4: bool = False  # the checkpoint ships MXFP4 experts (tune moe's mxfp4 models)

    @property
    def router(self) -> str:
        return "moe_fused_gate" if self.groups else "topk_softmax"


MODELS = {m.name: m for m in (
    MoeModel("Qwen3-30B-A3B", 128, 8, 2048, 768, renormalize=True),
    MoeModel("GPT-OSS-20B", 32, 4, 2880, 2880, softmax_after_topk=True,
             activation="clamped_swiglu", bias=True, mxfp4=True),
    MoeModel("GPT-OSS-120B", 128, 4, 2880, 2880, softmax_after_topk=True,
             activation="clamped_swiglu", bias=True, mxfp4=True),
    MoeModel("DeepSeek-V3", 256, 8, 7168, 2048, groups=8, topk_group=4, scaling=2.5),
)}


def make_logits(model: MoeModel, tokens: int, device: torch.device | str = "cuda"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh bf16 router logits [T, E] and the correction bias [E] (float32; zeros unless
    the model is grouped), so each set routes to its own experts."""
    logits = (2 * torch.randn(tokens, model.experts, device=device)).to(torch.bfloat16)
    bias = (0.1 * torch.randn(model.experts, device=device) if model.groups
            else torch.zeros(model.experts, device=device))
    return logits, bias


def ours_routing(model: MoeModel, logits: torch.Tensor, bias: torch.Tensor,
                 weights: torch.Tensor, ids: torch.Tensor, pdl: bool | None) -> None:
    """Our routing op into preallocated outputs."""
    if model.groups:
        torch.ops.fuseinfer.moe_fused_gate(weights, ids, logits, bias, model.groups,
                                           model.topk_group, model.scaling, True, 0,
                                           enable_pdl=pdl)
    else:
        torch.ops.fuseinfer.topk_softmax(weights, ids, logits, model.renormalize,
                                         model.softmax_after_topk, enable_pdl=pdl)


def reference_routing(model: MoeModel, logits: torch.Tensor, bias: torch.Tensor) -> Routing:
    """The ops' float32 semantics."""
    if model.groups:
        return reference_moe_fused_gate(logits, bias, model.groups, model.topk_group,
                                        model.topk, model.scaling, True)
    return reference_topk_softmax(logits, model.topk, model.renormalize,
                                  model.softmax_after_topk)


def torch_routing(model: MoeModel) -> Callable[[torch.Tensor, torch.Tensor], Routing]:
    """The routing as a model's torch code writes it (torch.topk, no stable ordering)."""
    k = model.topk

    def softmax_topk(logits: torch.Tensor, bias: torch.Tensor) -> Routing:
        x = logits.float()
        if model.softmax_after_topk:
            top, ids = torch.topk(x, k, dim=-1)
            return torch.softmax(top, dim=-1), ids.to(torch.int32)
        weights, ids = torch.topk(torch.softmax(x, dim=-1), k, dim=-1)
        if model.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights, ids.to(torch.int32)

    def grouped(logits: torch.Tensor, bias: torch.Tensor) -> Routing:
        t, e = logits.shape
        s = torch.sigmoid(logits.float())
        sb = s + bias
        group_scores = sb.view(t, model.groups, -1).topk(2, dim=-1)[0].sum(dim=-1)
        kept = group_scores.topk(model.topk_group, dim=-1)[1]
        mask = torch.zeros_like(group_scores).scatter_(1, kept, 1.0)
        mask = mask.repeat_interleave(e // model.groups, dim=1).bool()
        ids = sb.masked_fill(~mask, float("-inf")).topk(k, dim=-1)[1]
        weights = s.gather(1, ids)
        weights = weights / weights.sum(dim=-1, keepdim=True) * model.scaling
        return weights, ids.to(torch.int32)

    return grouped if model.groups else softmax_topk


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| in float32; NaN if got holds a NaN."""
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def routing_rel_err(model: MoeModel, logits: torch.Tensor, bias: torch.Tensor,
                    got: Routing) -> float:
    """The larger of the weights' error and the error of the chosen experts' ranking
    scores (logits, or sigmoid + bias when grouped) against the reference's."""
    want_w, want_ids = reference_routing(model, logits, bias)
    score = logits.float()
    if model.groups:
        score = torch.sigmoid(score) + bias
    w, ids = got
    if not bool(((ids >= 0) & (ids < model.experts)).all()):
        return float("inf")
    picked = score.gather(1, ids.long())
    return max(rel_err(w, want_w), rel_err(picked, score.gather(1, want_ids.long())))


# ---- the layer ---------------------------------------------------------------------------
@dataclass
class LayerWeights:
    """One MoE layer's experts in fused_moe's layout (fp8_block: with 128 x 128 scales;
    mxfp4: packed [E, N, K/2] with E8M0 [E, N, K/32]), their biases and activation."""

    w13: torch.Tensor  # [E, 2I, H]
    w2: torch.Tensor  # [E, H, I]
    quant: str | None = None
    w13_scales: torch.Tensor | None = None
    w2_scales: torch.Tensor | None = None
    w13_bias: torch.Tensor | None = None
    w2_bias: torch.Tensor | None = None
    activation: str = "silu"

    @property
    def inner(self) -> int:
        return self.w13.shape[1] // 2

    def op_kwargs(self) -> dict[str, Any]:
        """fused_moe's keyword arguments for these experts."""
        return dict(quant=self.quant, w13_scales=self.w13_scales, w2_scales=self.w2_scales,
                    w13_bias=self.w13_bias, w2_bias=self.w2_bias, activation=self.activation)


def _quantized(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Expert by expert: the float32 copy of a whole DeepSeek-V3 stack would be 45 GB.
    pairs = [quantize_blockwise(w[e]) for e in range(w.shape[0])]
    return torch.stack([q for q, _ in pairs]), torch.stack([s for _, s in pairs])


def _random_mxfp4(e: int, n: int, k: int, device: torch.device | str
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random MXFP4 experts: every code byte, scales in MX_SCALES."""
    codes = torch.randint(0, 256, (e, n, k // 2), dtype=torch.uint8, device=device)
    scales = torch.randint(MX_SCALES[0], MX_SCALES[1] + 1, (e, n, k // 32),
                           dtype=torch.uint8, device=device)
    return codes, scales


def make_weights(model: MoeModel, quant: str | None, device: torch.device | str = "cuda"
                 ) -> LayerWeights:
    """Random experts scaled so activations stay O(1) (bf16; fp8_block: quantized once;
    mxfp4: random codes and scales), with the model's biases and activation."""
    e, h, i = model.experts, model.hidden, model.inter
    extra: dict[str, Any] = {"activation": model.activation}
    if model.bias:
        extra["w13_bias"] = torch.randn(e, 2 * i, device=device, dtype=torch.bfloat16)
        extra["w2_bias"] = torch.randn(e, h, device=device, dtype=torch.bfloat16).mul_(0.1)
    if quant == "mxfp4":
        (q13, s13), (q2, s2) = _random_mxfp4(e, 2 * i, h, device), _random_mxfp4(e, h, i, device)
        return LayerWeights(q13, q2, quant, s13, s2, **extra)
    w13 = torch.randn(e, 2 * i, h, device=device, dtype=torch.bfloat16).mul_(h ** -0.5)
    w2 = torch.randn(e, h, i, device=device, dtype=torch.bfloat16).mul_(i ** -0.5)
    if quant != "fp8_block":
        return LayerWeights(w13, w2, **extra)
    q13, s13 = _quantized(w13)
    del w13
    q2, s2 = _quantized(w2)
    return LayerWeights(q13, q2, quant, s13, s2, **extra)


def dequantized_bf16(weights: LayerWeights) -> LayerWeights:
    """MXFP4 experts dequantized to bf16 once, expert by expert (exact: every MXFP4 value
    is a bf16), with the same biases and activation: the dequantize-at-load layer."""
    assert weights.quant == "mxfp4"

    def bf16(w: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
        return torch.stack([expert_weight(w, s, e, "mxfp4").to(torch.bfloat16)
                            for e in range(w.shape[0])])

    return LayerWeights(bf16(weights.w13, weights.w13_scales),
                        bf16(weights.w2, weights.w2_scales), None, None, None,
                        weights.w13_bias, weights.w2_bias, weights.activation)


def expert_bytes(model: MoeModel, quant: str | None) -> int:
    """Bytes of one expert's w13 and w2 (with their scales for fp8_block and mxfp4, and
    the bf16 biases of a model that has them)."""
    h, i = model.hidden, model.inter
    bias = 2 * (2 * i + h) if model.bias else 0
    if quant == "fp8_block":
        scales = 4 * (-(-2 * i // QUANT_BLOCK) * (h // QUANT_BLOCK)
                      + -(-h // QUANT_BLOCK) * (i // QUANT_BLOCK))
        return 3 * h * i + scales + bias
    if quant == "mxfp4":
        return 3 * h * i // 2 + 3 * h * i // 32 + bias
    return 3 * h * i * 2 + bias


def layer_flops(model: MoeModel, tokens: int) -> int:
    """2 * T * k * (2I * H + H * I): both GEMMs of every routed row."""
    return 2 * tokens * model.topk * 3 * model.inter * model.hidden


def _quant_dequant(x: torch.Tensor) -> torch.Tensor:
    q, s = reference_per_token_group_quant_fp8(x, QUANT_BLOCK)
    return (q.float().view(x.shape[0], -1, QUANT_BLOCK) * s[..., None]).view(x.shape)


def reference_layer(hidden: torch.Tensor, weights: LayerWeights, topk_weights: torch.Tensor,
                    topk_ids: torch.Tensor) -> torch.Tensor:
    """reference_fused_moe's float32 semantics, one hit expert at a time (only those
    experts are ever held in float32), for the tokens given."""
    fp8 = weights.quant == "fp8_block"
    x = _quant_dequant(hidden.float()) if fp8 else hidden.float()
    out = torch.zeros(x.shape, dtype=torch.float32, device=hidden.device)
    for e in topk_ids.unique().tolist():
        if not 0 <= e < weights.w13.shape[0]:
            continue
        token, slot = (topk_ids == e).nonzero(as_tuple=True)
        w13 = expert_weight(weights.w13, weights.w13_scales, e, weights.quant)
        gate_up = x[token] @ w13.t()
        if weights.w13_bias is not None:
            gate_up = gate_up + weights.w13_bias[e].float()
        act = activate(gate_up, weights.activation)
        if fp8:
            act = _quant_dequant(act)
        y = act @ expert_weight(weights.w2, weights.w2_scales, e, weights.quant).t()
        if weights.w2_bias is not None:
            y = y + weights.w2_bias[e].float()
        out.index_add_(0, token, y * topk_weights[token, slot].float()[:, None])
    return out


def check_tokens(tokens: int) -> torch.Tensor:
    """Tokens compared with the oracle: all up to CHECK_TOKENS, else CHECK_TOKENS spread
    evenly (first and last included), so the float32 reference stays small at T = 8192."""
    if tokens <= CHECK_TOKENS:
        return torch.arange(tokens)
    return torch.linspace(0, tokens - 1, CHECK_TOKENS).round().long().unique()


def layer_rel_err(out: torch.Tensor, hidden: torch.Tensor, weights: LayerWeights,
                  routing: Routing) -> float:
    """`out`'s check_tokens rows against reference_layer on those tokens."""
    idx = check_tokens(hidden.shape[0]).to(hidden.device)
    want = reference_layer(hidden[idx], weights, routing[0][idx], routing[1][idx])
    return rel_err(out[idx], want)


def _torch_activation(gate_up: torch.Tensor, activation: str) -> torch.Tensor:
    """The activation as a model's torch code writes it, in the activations' dtype."""
    inner = gate_up.shape[-1] // 2
    gate, up = gate_up[:, :inner], gate_up[:, inner:]
    if activation == "clamped_swiglu":  # GPT-OSS: alpha 1.702, limit 7
        g, u = gate.clamp(max=7.0), up.clamp(-7.0, 7.0)
        return (u + 1) * g * torch.sigmoid(1.702 * g)
    return F.silu(gate) * up


def torch_layer(weights: LayerWeights) -> Callable[[torch.Tensor, Routing], torch.Tensor]:
    """The torch pipeline for bf16 weights (raises for quantized ones, or where this torch
    has no _grouped_mm: the row records the text)."""
    if weights.quant is not None:
        raise NotImplementedError("torch pipeline: bf16 weights only")
    grouped_mm = getattr(torch, "_grouped_mm", None)
    if grouped_mm is None:
        raise NotImplementedError(f"torch {torch.__version__} has no torch._grouped_mm")
    e = weights.w13.shape[0]
    b13, b2 = weights.w13_bias, weights.w2_bias
    # [E, K, N] views with column-major last two dims, as _grouped_mm wants its mat_b
    w13_t, w2_t = weights.w13.transpose(1, 2), weights.w2.transpose(1, 2)

    def layer(hidden: torch.Tensor, routing: Routing) -> torch.Tensor:
        topk_weights, topk_ids = routing
        k = topk_ids.shape[1]
        flat = topk_ids.reshape(-1)
        order = torch.argsort(flat, stable=True)
        # end offset of each expert's rows; searchsorted keeps shapes static (no sync)
        ends = torch.searchsorted(flat[order], torch.arange(e, device=flat.device,
                                                            dtype=flat.dtype), right=True)
        offs = ends.to(torch.int32)
        token = order // k
        expert = flat[order].clamp(0, e - 1).long()  # rows past the experts: never summed
        gate_up = grouped_mm(hidden.index_select(0, token), w13_t, offs=offs)
        if b13 is not None:
            gate_up = gate_up + b13.index_select(0, expert)
        act = _torch_activation(gate_up, weights.activation)
        y = grouped_mm(act, w2_t, offs=offs).float()
        if b2 is not None:
            y = y + b2.index_select(0, expert).float()
        y = y * topk_weights.reshape(-1).index_select(0, order)[:, None]
        out = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
        return out.index_add_(0, token, y).to(hidden.dtype)

    return layer


# ---- FlashInfer's Hopper fused MoE (cutlass_fused_moe) ----------------------------------
@dataclass
class FlashinferWeights:
    """One layer's experts in cutlass_fused_moe's layout, made once per model and quant
    (outside timing): fc1 [E, 2I, H] with the up rows first, then the gate rows (ours are
    gate then up); fc2 [E, H, I] as ours; fp8_block: the 128 x 128 float32 scales in the
    same row order ([E, 2I/128, H/128] and [E, H/128, I/128])."""

    fc1: torch.Tensor
    fc2: torch.Tensor
    quant: str | None = None
    fc1_scales: torch.Tensor | None = None
    fc2_scales: torch.Tensor | None = None


def _up_then_gate(w: torch.Tensor) -> torch.Tensor:
    half = w.shape[1] // 2
    return torch.cat([w[:, half:], w[:, :half]], dim=1).contiguous()


def flashinfer_weights(weights: LayerWeights) -> FlashinferWeights:
    """Our experts re-laid out for cutlass_fused_moe (raises where it has no layout for
    them: fp8_block needs H and I multiples of 128; SiLU experts without biases only)."""
    inner, hidden = weights.w2.shape[2], weights.w2.shape[1]
    if weights.activation != "silu" or weights.w13_bias is not None \
            or weights.w2_bias is not None:
        raise NotImplementedError("flashinfer baseline: SiLU experts without biases only "
                                  "(not wired for GPT-OSS's clamped SwiGLU and biases)")
    if weights.quant not in (None, "fp8_block"):
        raise NotImplementedError(f"flashinfer baseline: no {weights.quant} layout wired")
    if weights.quant is None:
        return FlashinferWeights(_up_then_gate(weights.w13), weights.w2.contiguous())
    if inner % QUANT_BLOCK or hidden % QUANT_BLOCK:
        raise NotImplementedError(f"flashinfer fp8 block scale: H={hidden} and I={inner} "
                                  f"must be multiples of {QUANT_BLOCK}")
    assert weights.w13_scales is not None and weights.w2_scales is not None
    return FlashinferWeights(_up_then_gate(weights.w13), weights.w2.contiguous(),
                             weights.quant, _up_then_gate(weights.w13_scales.float()),
                             weights.w2_scales.float().contiguous())


def _trimmed_build_applies(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9


def flashinfer_layer(fi: FlashinferWeights, topk: int, max_tokens: int
                     ) -> Callable[[torch.Tensor, Routing, torch.Tensor], torch.Tensor]:
    """cutlass_fused_moe on `fi` writing into `out` (the call returns `out`). On SM90 the
    trimmed bf16 / fp8-block module is built (bench/flashinfer_moe_build.py) instead of
    FlashInfer's stock 248-unit one. The workspace is sized once, for max_tokens."""
    import flashinfer.fused_moe as fused

    device = fi.fc1.device
    if _trimmed_build_applies(device):
        from .flashinfer_moe_build import install
        install()
    fp8 = fi.quant == "fp8_block"
    experts, hidden, inner = fi.fc2.shape
    size = fused.cutlass_fused_moe_workspace_size(
        max_tokens, hidden, inner, experts, topk, x_dtype=torch.bfloat16,
        weight_dtype=fi.fc1.dtype, output_dtype=torch.bfloat16,
        use_deepseek_fp8_block_scale=fp8, device=device)
    workspace = torch.empty(max(int(size), 1), dtype=torch.uint8, device=device)
    scales = [fi.fc1_scales, fi.fc2_scales] if fp8 else None

    def layer(hidden_states: torch.Tensor, routing: Routing, out: torch.Tensor
              ) -> torch.Tensor:
        topk_weights, topk_ids = routing
        fused.cutlass_fused_moe(
            hidden_states, topk_ids, topk_weights.float(), fi.fc1, fi.fc2, torch.bfloat16,
            quant_scales=scales, output=out, workspace_buffer=workspace,
            use_deepseek_fp8_block_scale=fp8)
        return out  # whatever it returns, the result is read from the buffer it was given

    return layer
