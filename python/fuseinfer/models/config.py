"""A decoder model's shape, read from a Hugging Face config.json (Llama, Qwen3, Qwen3-MoE
and GPT-OSS, whose sparse layers are described by `MoeConfig`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..ops.rope.cos_sin_cache import RopeSpec, rope_scaling_from_config
from .quantization import Fp8BlockConfig, quantization_from_dict

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen3ForCausalLM": "qwen3",
                 "Qwen3MoeForCausalLM": "qwen3_moe", "GptOssForCausalLM": "gpt_oss"}
QK_NORM_ARCHS = ("qwen3", "qwen3_moe")


@dataclass(frozen=True)
class MoeConfig:
    """The routed experts: softmax over all experts, top_k of them per token (renormalized
    to sum 1 when norm_topk_prob), SwiGLU experts of width intermediate_size. Layers in
    sparse_layers use them; the others the dense MLP.

    GPT-OSS: the router has a bias, the softmax runs over the top_k logits (the same as
    renormalizing the full softmax's top_k), the experts have biases and the clamped
    SwiGLU (fused_moe's activation="clamped_swiglu"), and may be stored in MXFP4."""

    num_experts: int
    top_k: int
    intermediate_size: int
    norm_topk_prob: bool
    sparse_layers: frozenset[int]
    activation: str = "silu"  # or "clamped_swiglu" (GPT-OSS)
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0
    biases: bool = False  # router, gate_up and down biases (GPT-OSS)
    expert_format: str = "float"  # "mxfp4": E2M1 codes with E8M0 scales per 32

    @staticmethod
    def gpt_oss(cfg: Mapping[str, Any], expert_format: str) -> MoeConfig:
        """GPT-OSS: every layer sparse, top-k softmax, biases, the clamped SwiGLU."""
        return MoeConfig(num_experts=int(cfg["num_local_experts"]),
                         top_k=int(cfg.get("num_experts_per_tok")
                                   or cfg["experts_per_token"]),
                         intermediate_size=int(cfg["intermediate_size"]),
                         norm_topk_prob=True,
                         sparse_layers=frozenset(range(int(cfg["num_hidden_layers"]))),
                         activation="clamped_swiglu",
                         swiglu_alpha=float(cfg.get("swiglu_alpha", 1.702)),
                         swiglu_limit=float(cfg.get("swiglu_limit", 7.0)), biases=True,
                         expert_format=expert_format)

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
    arch: str  # "llama", "qwen3", "qwen3_moe" or "gpt_oss"
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
    moe: MoeConfig | None = None  # the routed experts; None: every layer is dense
    # GPT-OSS: biased q/k/v/o projections, a learned sink logit per q head, and a sliding
    # window (sliding_window keys, the query's own included) on the layers listed
    attention_bias: bool = False
    sinks: bool = False
    sliding_window: int | None = None
    sliding_layers: frozenset[int] = frozenset()

    def is_sparse(self, layer: int) -> bool:
        """Whether `layer` runs the routed experts (else the dense MLP)."""
        return self.moe is not None and layer in self.moe.sparse_layers

    def window_left(self, layer: int) -> int | None:
        """The attention window of `layer` as the kernels take it (keys p - W .. p), or
        None (full causal attention)."""
        if self.sliding_window is None or layer not in self.sliding_layers:
            return None
        return self.sliding_window - 1

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
        quantization, expert_format = _quantization(cfg, arch)
        moe = MoeConfig.gpt_oss(cfg, expert_format) if arch == "gpt_oss" else \
            MoeConfig.from_dict(cfg) if arch == "qwen3_moe" else None
        layers = int(cfg["num_hidden_layers"])
        types = cfg.get("layer_types") or ()
        window = cfg.get("sliding_window") if arch == "gpt_oss" else None
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
            quantization=quantization, moe=moe,
            attention_bias=bool(cfg.get("attention_bias", False)) and arch == "gpt_oss",
            sinks=arch == "gpt_oss", sliding_window=int(window) if window else None,
            sliding_layers=frozenset(i for i in range(layers) if i < len(types)
                                     and types[i] == "sliding_attention"))

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


def _quantization(cfg: Mapping[str, Any], arch: str) -> tuple[Fp8BlockConfig | None, str]:
    """(the linear layers' FP8 scheme or None, the experts' stored format). GPT-OSS's
    `quant_method: mxfp4` covers only its experts: the other layers stay float."""
    qcfg = cfg.get("quantization_config")
    if isinstance(qcfg, Mapping) and qcfg.get("quant_method") == "mxfp4":
        if arch != "gpt_oss":
            raise ValueError(f"quantization_config.quant_method: 'mxfp4' is supported for "
                             f"GPT-OSS's experts only, not {arch}")
        return None, "mxfp4"
    return quantization_from_dict(cfg), "float"


def _replace_eos(config: ModelConfig, ids: tuple[int, ...]) -> ModelConfig:
    from dataclasses import replace

    return replace(config, eos_token_ids=ids)
