"""A decoder model's shape, read from a Hugging Face config.json."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..ops.rope.cos_sin_cache import RopeSpec, rope_scaling_from_config
from .quantization import Fp8BlockConfig, quantization_from_dict

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen3ForCausalLM": "qwen3"}


@dataclass(frozen=True)
class ModelConfig:
    arch: str  # "llama" or "qwen3"
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
        return ModelConfig(
            arch=arch, vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]), num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads), head_dim=head_dim,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qk_norm=arch == "qwen3", rope=rope_scaling_from_config(cfg, default_theta=10000.0),
            eos_token_ids=eos_ids, max_position=int(cfg["max_position_embeddings"]),
            quantization=quantization_from_dict(cfg))

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
