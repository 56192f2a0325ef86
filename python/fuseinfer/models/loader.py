"""Weights from a local Hugging Face folder (*.safetensors), streamed tensor by tensor
straight to the target device, with q/k/v and gate/up fused into one matrix each; or
random weights of the right shapes (`--load-format dummy`)."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import ModelConfig
from .decoder import LayerWeights, ModelWeights


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


def _assemble(config: ModelConfig, get) -> ModelWeights:
    layers = []
    for i in range(config.num_layers):
        n = _layer_names(i, config.qk_norm)
        layers.append(LayerWeights(
            input_norm=get(n["input_norm"]),
            qkv=torch.cat([get(n["q"]), get(n["k"]), get(n["v"])], dim=0),
            q_norm=get(n["q_norm"]) if config.qk_norm else None,
            k_norm=get(n["k_norm"]) if config.qk_norm else None,
            o=get(n["o"]), post_norm=get(n["post_norm"]),
            gate_up=torch.cat([get(n["gate"]), get(n["up"])], dim=0), down=get(n["down"])))
    embed = get("model.embed_tokens.weight")
    lm_head = embed if config.tie_word_embeddings else get("lm_head.weight")
    return ModelWeights(embed=embed, layers=layers, norm=get("model.norm.weight"),
                        lm_head=lm_head)


def load_weights(folder: str | Path, config: ModelConfig, dtype: torch.dtype,
                 device: torch.device | str) -> ModelWeights:
    """Read every *.safetensors file of `folder`; a missing or unexpected tensor (biases
    included, which these architectures do not have) is an error."""
    from safetensors import safe_open

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

    def get(name: str) -> torch.Tensor:
        if name not in where:
            raise KeyError(f"{folder}: tensor {name} not found in the safetensors files")
        used.add(name)
        return handles[where[name]].get_tensor(name).to(dtype)

    weights = _assemble(config, get)
    extra = sorted(n for n in where if n not in used and not n.endswith("rotary_emb.inv_freq")
                   and not (config.tie_word_embeddings and n == "lm_head.weight"))
    if extra:
        raise ValueError(f"{folder}: tensors this {config.arch} model does not use: "
                         f"{extra[:5]}{' ...' if len(extra) > 5 else ''}")
    return weights


def dummy_state_dict(config: ModelConfig, dtype: torch.dtype, device: torch.device | str,
                     seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the checkpoint's tensor names (std 0.02; norms 1)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    c, d = config, config.head_dim
    shapes = {"model.embed_tokens.weight": (c.vocab_size, c.hidden_size),
              "model.norm.weight": (c.hidden_size,)}
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, c.hidden_size)
    for i in range(c.num_layers):
        n = _layer_names(i, c.qk_norm)
        shapes |= {n["input_norm"]: (c.hidden_size,), n["post_norm"]: (c.hidden_size,),
                   n["q"]: (c.num_heads * d, c.hidden_size),
                   n["k"]: (c.num_kv_heads * d, c.hidden_size),
                   n["v"]: (c.num_kv_heads * d, c.hidden_size),
                   n["o"]: (c.hidden_size, c.num_heads * d),
                   n["gate"]: (c.intermediate_size, c.hidden_size),
                   n["up"]: (c.intermediate_size, c.hidden_size),
                   n["down"]: (c.hidden_size, c.intermediate_size)}
        if c.qk_norm:
            shapes |= {n["q_norm"]: (d,), n["k_norm"]: (d,)}
    out = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            out[name] = torch.ones(shape, dtype=dtype, device=device)
        else:
            out[name] = (torch.randn(shape, generator=gen) * 0.02).to(dtype=dtype,
                                                                      device=device)
    return out


def dummy_weights(config: ModelConfig, dtype: torch.dtype, device: torch.device | str,
                  seed: int = 0) -> ModelWeights:
    """Random weights of the model's shapes, for benchmarks (`--load-format dummy`)."""
    named = dummy_state_dict(config, dtype, device, seed)
    return _assemble(config, named.__getitem__)
