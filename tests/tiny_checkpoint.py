"""A tiny random Hugging Face checkpoint (Qwen3 or Llama) saved to disk, for the model and
engine tests."""

from __future__ import annotations

import torch
import transformers

COMMON = dict(vocab_size=384, hidden_size=128, intermediate_size=192, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=64,
              max_position_embeddings=256, rms_norm_eps=1e-6)


def save_tiny_checkpoint(tmp_path, arch, tie=True, lm_head_scale=1.0):
    """Random weights (norms perturbed so they matter); lm_head_scale > 1 (untied) widens
    the gaps between logits, so bf16 rounding does not flip greedy choices."""
    torch.manual_seed(0)
    if arch == "qwen3":
        cfg = transformers.Qwen3Config(**COMMON, tie_word_embeddings=tie)
        model = transformers.Qwen3ForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(
            **COMMON, tie_word_embeddings=False,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
            rope_theta=500000.0)
        model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # HF initializes norms to 1: make them matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
        if lm_head_scale != 1.0:
            assert not cfg.tie_word_embeddings, "scale an untied lm_head only"
            model.lm_head.weight.mul_(lm_head_scale)
    model = model.float().eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model
