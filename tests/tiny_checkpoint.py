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


def greedy_with_gap(model, prompt: list[int], new: int) -> tuple[list[int], float]:
    """transformers' greedy tokens for `prompt` on the GPU and the smallest top-two logit gap
    over the `new` steps (how far bf16 rounding is from flipping a token)."""
    ids = torch.tensor([prompt], device="cuda")
    out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                         output_logits=True, return_dict_in_generate=True)
    top = torch.stack(out.logits)[:, 0].float().topk(2, dim=-1).values
    return out.sequences[0, len(prompt):].tolist(), float((top[:, 0] - top[:, 1]).min())


def save_tiny_checkpoint(tmp_path, arch, tie=True, lm_head_scale=1.0, model=None):
    """Save a tiny model (`model`, else a fresh random one) as a Hugging Face folder."""
    model = tiny_model(arch, tie, lm_head_scale) if model is None else model
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


def save_small_v_checkpoint(tmp_path, shrink=256.0):
    """A tiny Qwen3 whose V rows are `shrink` times smaller (o_proj as much larger, so the
    model computes the same): an FP8 cache with unit scales rounds such V far off, one with
    calibrated scales does not. Returns the saved model."""
    model = tiny_model("qwen3", tie=False, lm_head_scale=4.0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.v_proj.weight.div_(shrink)
            layer.self_attn.o_proj.weight.mul_(shrink)
    return save_tiny_checkpoint(tmp_path, "qwen3", model=model)


# FP8 linear layers need every K (hidden, heads * head_dim, intermediate) a multiple of 128
# and, for a stored checkpoint, the fused parts' row offsets too.
FP8_SHAPE = dict(COMMON, hidden_size=256, intermediate_size=384)
FP8_QUANT = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
             "weight_block_size": [128, 128]}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def block_quantize(w):
    """The test's own 128 x 128 block quantizer, one block at a time: (q e4m3, scale_inv)."""
    n, k = w.shape
    q = torch.empty(n, k, dtype=torch.float8_e4m3fn)
    scales = torch.empty(-(-n // 128), -(-k // 128))
    for i in range(scales.shape[0]):
        for j in range(scales.shape[1]):
            block = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128].double()
            scale = max(float(block.abs().max()), 1e-10) / 448.0
            scales[i, j] = scale
            q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = (block / scale).float().to(
                torch.float8_e4m3fn)
    return q, scales


def fp8_tiny_model(arch):
    """A tiny random model of FP8-compatible shapes (untied, so lm_head is its own)."""
    cfg_cls = transformers.Qwen3Config if arch == "qwen3" else transformers.LlamaConfig
    model_cls = transformers.Qwen3ForCausalLM if arch == "qwen3" \
        else transformers.LlamaForCausalLM
    torch.manual_seed(1)
    model = model_cls(cfg_cls(**FP8_SHAPE, tie_word_embeddings=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model.float().eval()


def save_fp8_checkpoint(fp8_path, dequant_path, model, keep_float=(), quant=None):
    """Save `model` as an FP8 checkpoint (e4m3 linear weights + weight_scale_inv, its
    config.json with a quantization_config) to fp8_path, and the same weights dequantized
    (float32) as a plain checkpoint to dequant_path. Linear modules whose name contains an
    entry of keep_float stay float (listed in modules_to_not_convert). Returns the model
    holding the dequantized weights."""
    import json

    from safetensors.torch import save_file

    with torch.no_grad():
        state = {}
        for name, p in model.state_dict().items():
            module = name.removesuffix(".weight")
            if module.split(".")[-1] in LINEARS and not any(s in module for s in keep_float):
                q, s = block_quantize(p)
                state[name], state[name + "_scale_inv"] = q, s
                p.copy_(q.float() * s.repeat_interleave(128, 0)[:p.shape[0]]
                        .repeat_interleave(128, 1)[:, :p.shape[1]])
            else:
                state[name] = p.clone()
    model.save_pretrained(dequant_path, safe_serialization=True)
    model.save_pretrained(fp8_path, safe_serialization=True)
    for f in fp8_path.glob("*.safetensors"):
        f.unlink()
    save_file(state, str(fp8_path / "model.safetensors"))
    cfg = json.loads((fp8_path / "config.json").read_text())
    cfg["quantization_config"] = dict(quant or FP8_QUANT)
    if keep_float:
        cfg["quantization_config"]["modules_to_not_convert"] = list(keep_float)
    (fp8_path / "config.json").write_text(json.dumps(cfg))
    return model


# Qwen3-MoE: 8 experts, 2 per token; layer 1 dense (mlp_only_layers), so both kinds of
# layer run, and norm_topk_prob on (Qwen3-30B-A3B's setting).
MOE_SHAPE = dict(COMMON, num_hidden_layers=3, moe_intermediate_size=64, num_experts=8,
                 num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1],
                 decoder_sparse_step=1)


def tiny_moe_model(seed=0, router_scale=1.0, **overrides):
    """A tiny random Qwen3-MoE (float32, untied); norms perturbed so they matter, expert
    weights of std 0.02 (transformers' init leaves them as torch.empty gives them in some
    versions) and the router scaled by router_scale (> 1: decisive routing, far from
    near-ties between the k-th and k+1-th expert)."""
    torch.manual_seed(seed)
    cfg = transformers.Qwen3MoeConfig(**(MOE_SHAPE | overrides), tie_word_embeddings=False)
    model = transformers.Qwen3MoeForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
            elif "experts" in name:
                p.normal_(0.0, 0.02)
            elif name.endswith("mlp.gate.weight"):
                p.normal_(0.0, 0.02 * router_scale)
    return model.float().eval()
