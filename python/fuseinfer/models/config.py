"""A decoder model's shape, read from a Hugging Face config.json (Llama, Qwen3 and
Qwen3-MoE, whose sparse layers are described by `MoeConfig`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..ops.rope.cos_sin_cache import RopeSpec, rope_scaling_from_config
from .quantization import Fp8BlockConfig, quantization_from_dict

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen3ForCausalLM": "qwen3",
                 "Qwen3MoeForCausalLM": "qwen3_moe"}
QK_NORM_ARCHS = ("qwen3", "qwen3_moe")


@dataclass(frozen=True)
class MoeConfig:
    """The routed experts of a Qwen3-MoE model: softmax over all experts, top_k of them
    per token (renormalized to sum 1 when norm_topk_prob), SwiGLU experts of width
    intermediate_size. Layers in sparse_layers use them; the others the dense MLP."""

    num_experts: int
    top_k: int
    intermediate_size: int
    norm_topk_prob: bool
    sparse_layers: frozenset[int]

    @staticmethod
    def from_dict(cfg: Mapping[str, Any]) -> MoeConfig:
        # transformers 5 saves num_local_experts; the published config.json num_experts
        experts = int(cfg.get("num_experts") or cfg.get("num_local_experts") or 0)
        step = int(cfg.get("decoder_sparse_step", 1))
        dense = set(cfg.get("mlp_only_layers") or ())
        layers = int(cfg["num_hidden_layers"])
        # the rule of transformers' Qwen3MoeDecoderLayer
        sparse = frozenset(i for i in range(layers) if i not in dense and experts > 0
                           and step > 0 and (i + 1) % step == 0)
        return MoeConfig(num_experts=experts, top_k=int(cfg["num_experts_per_tok"]),
                         intermediate_size=int(cfg["moe_intermediate_size"]),
                         norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
                         sparse_layers=sparse)


@dataclass(frozen=True)
class ModelConfig:
    arch: str  # "llama", "qwen3" or "qwen3_moe"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    qk_norm: bool  # Qwen3: RMSNorm over each head of q and k before RoPE
    rope: RopeSpec
    eos_token_ids: tuple[int, ...]
    max_position: int
    # FP8 block-quantized linear layers (config.json's quantization_config); None: none
    quantization: Fp8BlockConfig | None = None
    moe: MoeConfig | None = None  # Qwen3-MoE's experts; None: every layer is dense

    def is_sparse(self, layer: int) -> bool:
        """Whether `layer` runs the routed experts (else the dense MLP)."""
        return self.moe is not None and layer in self.moe.sparse_layers

    @staticmethod
    def from_dict(cfg: Mapping[str, Any]) -> ModelConfig:
        archs = cfg.get("architectures") or []
        arch = next((ARCHITECTURES[a] for a in archs if a in ARCHITECTURES), None)
        if arch is None:
            raise ValueError(f"unsupported architecture {archs}; supported: "
                             f"{sorted(ARCHITECTURES)}")
        heads = int(cfg["num_attention_heads"])
        head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        moe = MoeConfig.from_dict(cfg) if arch == "qwen3_moe" else None
        quantization = quantization_from_dict(cfg)
        return ModelConfig(
            arch=arch, vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]), num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads), head_dim=head_dim,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qk_norm=arch in QK_NORM_ARCHS,
            rope=rope_scaling_from_config(cfg, default_theta=10000.0),
            eos_token_ids=eos_ids, max_position=int(cfg["max_position_embeddings"]),
            quantization=quantization, moe=moe)

    @staticmethod
    def from_folder(path: str | Path) -> ModelConfig:
        folder = Path(path)
        cfg = json.loads((folder / "config.json").read_text())
        config = ModelConfig.from_dict(cfg)
        gen = folder / "generation_config.json"
        if gen.exists():  # its eos ids (often several) win over config.json's
            eos = json.loads(gen.read_text()).get("eos_token_id")
            if eos is not None:
                ids = tuple(eos) if isinstance(eos, list) else (eos,)
                config = _replace_eos(config, tuple(dict.fromkeys(config.eos_token_ids + ids)))
        return config


def _replace_eos(config: ModelConfig, ids: tuple[int, ...]) -> ModelConfig:
    from dataclasses import replace

    return replace(config, eos_token_ids=ids)
