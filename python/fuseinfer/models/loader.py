"""Weights from a local Hugging Face folder (*.safetensors), streamed tensor by tensor
straight to the target device, with q/k/v and gate/up fused into one matrix each; or
random weights of the right shapes (`--load-format dummy`).

Linear layers stored in FP8 (with their `weight_scale_inv`) load as `Fp8Weight`s; with
`quantize=True` (`--quantization fp8`) float ones are quantized into 128 x 128 blocks as
they load. Embeddings, norms and lm_head stay in the model dtype.

Qwen3-MoE's sparse layers: the router (`mlp.gate.weight`) and the experts stacked into
w13 [E, 2I, H] / w2 [E, H, I], from the published per-expert tensors
(`mlp.experts.{e}.gate_proj.weight`, `up_proj`, `down_proj`, float or FP8) or from
already stacked ones (moe_loader.py). GPT-OSS: q/k/v/o biases (q/k/v fused like their
weights), a sink logit per head, and its router and experts (float or MXFP4, with biases:
gpt_oss_experts.py).

With a `parallel` state of several ranks both read only this rank's shard (per-shard
loading, shard_loading.py): each sharded tensor is sliced as it is read, before it goes to
the device, and the weights come out as tensor_parallel.shard_weights would cut them.
Float weights quantized at load (`quantize`, dummy FP8) are quantized per shard: the
rank's float slice, fused, in 128 x 128 blocks of its own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..distributed.parallel_state import SINGLE_RANK, ParallelState
from .config import ModelConfig
from .decoder import LayerWeights, Linear, ModelWeights
from .fp8_linear import FP8, concat_fp8, dequantize_blockwise, quantize_weight
from .gpt_oss_experts import MoeGetter, checkpoint_gpt_oss_moe, dummy_gpt_oss_moe
from .moe_block import MoeWeights
from .moe_loader import ExpertsGetter, checkpoint_experts, dummy_experts
from .quantization import Fp8BlockConfig
from .shard_loading import TensorSharder
from .tensor_parallel import local_config

Getter = Callable[[str], torch.Tensor]
LinearGetter = Callable[[list[str]], Linear]
ATTENTION_BIASES = ("q_bias", "k_bias", "v_bias", "o_bias")


def _names(i: int, config: ModelConfig) -> dict[str, str]:
    """A layer's tensor names: _layer_names plus GPT-OSS's attention biases and sinks."""
    names = _layer_names(i, config.qk_norm)
    p = f"model.layers.{i}.self_attn."
    if config.attention_bias:
        names |= {b: p + f"{b[0]}_proj.bias" for b in ATTENTION_BIASES}
    if config.sinks:
        names["sinks"] = p + "sinks"
    return names


def _layer_names(i: int, qk_norm: bool) -> dict[str, str]:
    p = f"model.layers.{i}."
    names = {
        "input_norm": p + "input_layernorm.weight",
        "post_norm": p + "post_attention_layernorm.weight",
        "q": p + "self_attn.q_proj.weight", "k": p + "self_attn.k_proj.weight",
        "v": p + "self_attn.v_proj.weight", "o": p + "self_attn.o_proj.weight",
        "gate": p + "mlp.gate_proj.weight", "up": p + "mlp.up_proj.weight",
        "down": p + "mlp.down_proj.weight",
    }
    if qk_norm:
        names |= {"q_norm": p + "self_attn.q_norm.weight",
                  "k_norm": p + "self_attn.k_norm.weight"}
    return names


def _router_name(i: int) -> str:
    return f"model.layers.{i}.mlp.gate.weight"


def _fused(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def _fp8_scheme(config: ModelConfig, quantize: bool) -> Fp8BlockConfig | None:
    """The FP8 scheme float linear layers are quantized with at load (None: kept)."""
    if config.quantization is not None:  # a dummy FP8 model; a checkpoint's float leftovers
        return config.quantization if quantize else None
    return Fp8BlockConfig() if quantize else None


def _float_linear(scheme: Fp8BlockConfig | None, names: list[str],
                  parts: list[torch.Tensor], dtype: torch.dtype) -> Linear:
    """A fused float weight, quantized to FP8 when the scheme converts its module."""
    module = names[0].removesuffix(".weight")
    if scheme is not None and scheme.converts(module):
        return quantize_weight(_fused(parts), names[0])  # from the stored precision
    return _fused([p.to(dtype) for p in parts])


def _with_router(get: Getter, experts: ExpertsGetter) -> MoeGetter:
    """Qwen3-MoE: the router read by name beside the stacked experts."""
    return lambda i: MoeWeights(get(_router_name(i)), *experts(i))


def _assemble(config: ModelConfig, get: Getter, linear: LinearGetter | None = None,
              moe: MoeGetter | None = None) -> ModelWeights:
    if linear is None:
        def linear(names: list[str]) -> Linear:
            return _fused([get(n) for n in names])
    layers = []
    for i in range(config.num_layers):
        n = _names(i, config)
        biased = config.attention_bias
        attn = dict(input_norm=get(n["input_norm"]), qkv=linear([n["q"], n["k"], n["v"]]),
                    q_norm=get(n["q_norm"]) if config.qk_norm else None,
                    k_norm=get(n["k_norm"]) if config.qk_norm else None,
                    o=linear([n["o"]]), post_norm=get(n["post_norm"]),
                    qkv_bias=_fused([get(n[b]) for b in ATTENTION_BIASES[:3]]) if biased
                    else None,
                    o_bias=get(n["o_bias"]) if biased else None,
                    sinks=get(n["sinks"]) if config.sinks else None)
        if config.is_sparse(i):  # the router and the stacked experts
            assert moe is not None
            layers.append(LayerWeights(**attn, gate_up=None, down=None, moe=moe(i)))
        else:
            layers.append(LayerWeights(**attn, gate_up=linear([n["gate"], n["up"]]),
                                       down=linear([n["down"]])))
    embed = get("model.embed_tokens.weight")
    lm_head = embed if config.tie_word_embeddings else get("lm_head.weight")
    return ModelWeights(embed=embed, layers=layers, norm=get("model.norm.weight"),
                        lm_head=lm_head)


def load_weights(folder: str | Path, config: ModelConfig, dtype: torch.dtype,
                 device: torch.device | str, quantize: bool = False,
                 dequantize_experts: bool = False,
                 parallel: ParallelState = SINGLE_RANK) -> ModelWeights:
    """Read every *.safetensors file of `folder`; a missing or unexpected tensor (biases
    included, where the architecture has none) is an error. `quantize`: float linear
    weights become FP8 128 x 128 blocks. `dequantize_experts`: MXFP4 experts become the
    model dtype. `parallel`: this rank's shard only, each tensor sliced as it is read
    (`config` is the whole model's)."""
    from safetensors import safe_open

    sharder = None if parallel.is_single else TensorSharder(config, parallel)
    config = local_config(config, parallel)  # the shapes the shard's tensors have

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {folder}")
    handles = {}
    where: dict[str, int] = {}
    for idx, f in enumerate(files):
        handles[idx] = safe_open(str(f), framework="pt", device=str(device))
        for name in handles[idx].keys():
            where[name] = idx
    used: set[str] = set()

    def stored(name: str) -> torch.Tensor:
        if name not in where:
            raise KeyError(f"{folder}: tensor {name} not found in the safetensors files")
        used.add(name)
        handle = handles[where[name]]
        if sharder is not None:
            part = sharder.read(name, handle.get_slice(name))
            if part is not None:
                return part.to(device)
        return handle.get_tensor(name)

    def get(name: str) -> torch.Tensor:
        t = stored(name)
        if t.dtype == FP8:  # an FP8 MoE router (most checkpoints keep it float)
            return dequantize_blockwise(t, stored(name + "_scale_inv")).to(dtype)
        return t.to(dtype)

    scheme = _fp8_scheme(config, quantize)

    if config.arch == "gpt_oss":
        moe = checkpoint_gpt_oss_moe(config, stored, where.__contains__, dtype,
                                     dequantize_experts, str(folder))
    else:
        moe = _with_router(get, checkpoint_experts(config, stored, where.__contains__, dtype,
                                                   device, scheme, str(folder)))

    def linear(names: list[str]) -> Linear:
        parts = [stored(n) for n in names]
        fp8 = [p.dtype == FP8 for p in parts]
        if not any(fp8):
            return _float_linear(scheme, names, parts, dtype)
        if config.quantization is None:
            raise ValueError(f"{folder}: {names[fp8.index(True)]} is float8_e4m3fn but "
                             "config.json has no quantization_config")
        if not all(fp8):
            raise ValueError(f"{folder}: {names[fp8.index(False)]} is not FP8 while "
                             f"{names[fp8.index(True)]}, fused with it, is")
        return concat_fp8([(n, p, stored(n + "_scale_inv")) for n, p in
                           zip(names, parts, strict=True)])

    weights = _assemble(config, get, linear, moe)
    extra = sorted(n for n in where if n not in used and not n.endswith("rotary_emb.inv_freq")
                   and not (config.tie_word_embeddings and n == "lm_head.weight"))
    if extra:
        raise ValueError(f"{folder}: tensors this {config.arch} model does not use: "
                         f"{extra[:5]}{' ...' if len(extra) > 5 else ''}")
    return weights


def dummy_state_dict(config: ModelConfig, dtype: torch.dtype, device: torch.device | str,
                     seed: int = 0, sharder: TensorSharder | None = None
                     ) -> dict[str, torch.Tensor]:
    """Random weights under the checkpoint's tensor names (std 0.02; norms 1); with a
    sharder, each drawn whole on the host (the same numbers on every rank count) and
    only this rank's slice moved to the device."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    c, d = config, config.head_dim
    shapes = {"model.embed_tokens.weight": (c.vocab_size, c.hidden_size),
              "model.norm.weight": (c.hidden_size,)}
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, c.hidden_size)
    for i in range(c.num_layers):
        n = _names(i, c)
        if c.is_sparse(i):  # the router here (GPT-OSS: with its experts); the experts later
            assert c.moe is not None
            if c.arch != "gpt_oss":
                shapes[_router_name(i)] = (c.moe.num_experts, c.hidden_size)
            for part in ("gate", "up", "down"):
                del n[part]
        shapes |= {n["input_norm"]: (c.hidden_size,), n["post_norm"]: (c.hidden_size,),
                   n["q"]: (c.num_heads * d, c.hidden_size),
                   n["k"]: (c.num_kv_heads * d, c.hidden_size),
                   n["v"]: (c.num_kv_heads * d, c.hidden_size),
                   n["o"]: (c.hidden_size, c.num_heads * d)}
        if "gate" in n:
            shapes |= {n["gate"]: (c.intermediate_size, c.hidden_size),
                       n["up"]: (c.intermediate_size, c.hidden_size),
                       n["down"]: (c.hidden_size, c.intermediate_size)}
        if c.qk_norm:
            shapes |= {n["q_norm"]: (d,), n["k_norm"]: (d,)}
        if c.attention_bias:
            shapes |= {n["q_bias"]: (c.num_heads * d,), n["k_bias"]: (c.num_kv_heads * d,),
                       n["v_bias"]: (c.num_kv_heads * d,), n["o_bias"]: (c.hidden_size,)}
        if c.sinks:
            shapes[n["sinks"]] = (c.num_heads,)
    out = {}
    for name, shape in shapes.items():
        if len(shape) == 1 and not name.endswith(("bias", "sinks")):
            out[name] = torch.ones(shape, dtype=dtype, device=device)
            continue
        t = torch.randn(shape, generator=gen) * 0.02  # biases and sinks too: small values
        part = None if sharder is None else sharder.read(name, t)
        out[name] = (t if part is None else part).to(dtype=dtype, device=device)
    return out


def dummy_weights(config: ModelConfig, dtype: torch.dtype, device: torch.device | str,
                  seed: int = 0, quantize: bool = False,
                  dequantize_experts: bool = False,
                  parallel: ParallelState = SINGLE_RANK) -> ModelWeights:
    """Random weights of the model's shapes, for benchmarks (`--load-format dummy`). An
    FP8 config (or `quantize`) gets FP8 linear layers: the same std-0.02 random weights
    quantized into 128 x 128 blocks, so activations stay as tame as in the float model.
    GPT-OSS's experts are MXFP4 as its config says (the model dtype with
    `dequantize_experts`: the same random weights dequantized). `parallel`: this rank's
    shard of the same random weights (float; FP8 ones are quantized per shard)."""
    sharder = None if parallel.is_single else TensorSharder(config, parallel)
    named = dummy_state_dict(config, dtype, device, seed, sharder)
    scheme = config.quantization or (Fp8BlockConfig() if quantize else None)
    if config.arch == "gpt_oss":
        if scheme is not None:
            raise ValueError("GPT-OSS: FP8 linear layers are not supported (its experts are "
                             "MXFP4; attention stays in the model dtype)")
        moe = dummy_gpt_oss_moe(config, dtype, device, seed, dequantize_experts)
    else:
        moe = _with_router(named.__getitem__, dummy_experts(
            config, dtype, device, seed, scheme, None if sharder is None else sharder.experts))
    local = local_config(config, parallel)
    if scheme is None:
        return _assemble(local, named.__getitem__, moe=moe)

    def linear(names: list[str]) -> Linear:  # pop: each float copy freed once quantized
        return _float_linear(scheme, names, [named.pop(n) for n in names], dtype)

    return _assemble(local, named.__getitem__, linear, moe)
