"""A tiny Hugging Face checkpoint (Qwen3 or Llama) saved to disk, for the model and engine
tests: random weights, or trained on a copy task (GPU tests in bf16)."""

from __future__ import annotations

import torch
import transformers

COMMON = dict(vocab_size=384, hidden_size=128, intermediate_size=192, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=64,
              max_position_embeddings=256, rms_norm_eps=1e-6)


def tiny_model(arch, tie=True, lm_head_scale=1.0):
    """A tiny random Qwen3 or Llama (float32); norms perturbed so they matter, and
    lm_head_scale > 1 (untied) widens the gaps between logits."""
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
    return model.float().eval()


def train_copy_task(model, offset, steps=200, device="cpu", seq_len=128):
    """Train the model to emit the token `offset` positions back (x[t+1] = x[t+1-offset]):
    only attention can do that, and a trained model is confident, so its greedy path has
    wide logit gaps that bf16 rounding cannot flip (random weights tie everywhere)."""
    vocab = model.config.vocab_size
    gen = torch.Generator(device=device).manual_seed(0)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(steps):
        x = torch.randint(0, vocab, (32, seq_len), generator=gen, device=device)
        logits = model(x).logits[:, offset - 1:-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab),
                                                 x[:, :seq_len - offset].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.cpu().eval(), loss.item()


def save_tiny_checkpoint(tmp_path, arch, tie=True, lm_head_scale=1.0, model=None):
    """Save a tiny model (`model`, else a fresh random one) as a Hugging Face folder."""
    model = tiny_model(arch, tie, lm_head_scale) if model is None else model
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model
