"""GPT-OSS built from fuseinfer ops on the CPU (float32; the ops run their references)
against transformers' GptOssForCausalLM (eager attention, which has the sinks) on the same
tiny random checkpoint: 2 layers (sliding window 4, then full attention), biased q/k/v/o,
random sink logits, YaRN RoPE, 4 experts top-2 with router and expert biases, and expert
weights large enough that the clamped SwiGLU's clamps bite. Prompts of 13 tokens (longer
than the window) and decode steps past it: prefill logits agree to 1e-4 and greedy tokens
match, with every fusion on and off. The same experts stored as MXFP4 (`*_blocks`,
`*_scales`, the published layout) load as MXFP4 and give transformers' logits on their
dequantized values, directly or dequantized at load; the bundled configs parse and their
dummy weights have MXFP4 shapes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from test_models_cpu import Runner  # tests/ is on sys.path

from fuseinfer.distributed.parallel_state import ParallelState
from fuseinfer.models.bundled import resolve_model
from fuseinfer.models.config import ModelConfig
from fuseinfer.models.decoder import Fusions
from fuseinfer.models.loader import dummy_weights, load_weights
from fuseinfer.models.tensor_parallel import local_config

STEPS = 8
SHAPE = dict(vocab_size=256, hidden_size=128, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_local_experts=4,
             num_experts_per_tok=2, sliding_window=4,
             layer_types=["sliding_attention", "full_attention"],
             max_position_embeddings=512, rope_theta=150000.0,
             rope_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                           "beta_slow": 1.0, "truncate": False,
                           "original_max_position_embeddings": 16},
             tie_word_embeddings=False)
UNFUSED = Fusions(fused_rope_kv=False, fused_add_rmsnorm=False, fused_qk_norm=False,
                  fused_silu_mul=False, gemv_max_tokens=0)


def tiny_gpt_oss(seed: int = 0, gate_up_std: float = 0.5, **overrides
                 ) -> transformers.GptOssForCausalLM:
    torch.manual_seed(seed)
    cfg = transformers.GptOssConfig(**(SHAPE | overrides))
    cfg._attn_implementation = "eager"
    model = transformers.GptOssForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
            elif name.endswith("sinks"):
                p.copy_(torch.randn_like(p))
            elif name.endswith("gate_up_proj"):
                p.normal_(0.0, gate_up_std)  # 0.5: gate/up values past +-7, clamps matter
            elif name.endswith("down_proj"):
                p.normal_(0.0, 0.02)
            elif "router" in name:
                p.normal_(0.0, 0.2)  # decisive routing: no near-ties between experts
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model.float().eval()


def _expected(model: transformers.GptOssForCausalLM, prompt: list[int]
              ) -> tuple[torch.Tensor, list[int]]:
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1]
        want = model.generate(torch.tensor([prompt]), max_new_tokens=STEPS,
                              min_new_tokens=STEPS, do_sample=False)[0, len(prompt):]
    return logits, want.tolist()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt_oss")
    model = tiny_gpt_oss()
    model.save_pretrained(path, safe_serialization=True)
    gen = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, SHAPE["vocab_size"], (13,), generator=gen).tolist()
    return path, model, prompt, *_expected(model, prompt)


def test_config_reads_the_gpt_oss_fields(checkpoint):
    cfg = ModelConfig.from_folder(checkpoint[0])
    assert cfg.arch == "gpt_oss" and cfg.attention_bias and cfg.sinks and not cfg.qk_norm
    assert [cfg.window_left(i) for i in range(2)] == [3, None]
    moe = cfg.moe
    assert moe is not None and moe.activation == "clamped_swiglu" and moe.biases
    assert (moe.num_experts, moe.top_k, moe.intermediate_size) == (4, 2, 64)
    assert moe.sparse_layers == {0, 1} and moe.expert_format == "float"
    assert cfg.rope.scaling.kind == "yarn" and not cfg.rope.scaling.truncate


def test_loader_deinterleaves_the_experts(checkpoint):
    path, model, *_ = checkpoint
    w = load_weights(path, ModelConfig.from_folder(path), torch.float32, "cpu")
    hf = model.model.layers[1].mlp.experts
    gate_up = hf.gate_up_proj.transpose(1, 2)  # [E, 2I, H], gate/up rows interleaved
    moe = w.layers[1].moe
    assert moe is not None and moe.w13.shape == (4, 128, 128)
    torch.testing.assert_close(moe.w13[:, :64], gate_up[:, 0::2], rtol=0, atol=0)
    torch.testing.assert_close(moe.w13[:, 64:], gate_up[:, 1::2], rtol=0, atol=0)
    torch.testing.assert_close(moe.w13_bias[:, 64:], hf.gate_up_proj_bias[:, 1::2],
                               rtol=0, atol=0)
    torch.testing.assert_close(moe.w2, hf.down_proj.transpose(1, 2), rtol=0, atol=0)
    attn = model.model.layers[1].self_attn
    torch.testing.assert_close(w.layers[1].sinks, attn.sinks, rtol=0, atol=0)
    torch.testing.assert_close(w.layers[1].qkv_bias[256:384], attn.k_proj.bias, rtol=0,
                               atol=0)


@pytest.mark.parametrize("fusions", [Fusions(), UNFUSED], ids=["fused", "unfused"])
def test_matches_transformers(checkpoint, fusions):
    path, _, prompt, want_logits, want = checkpoint
    got_logits, got = Runner(path, fusions).greedy(prompt, STEPS)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-4, atol=1e-4)
    assert got == want


def mxfp4_pack(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[..., K] floats -> (blocks uint8 [..., K/32, 16], scales uint8 [..., K/32], the
    dequantized values): E8M0 scale 2^ceil(log2(amax / 6)) per 32, codes rounded to the
    nearest E2M1 value (ties away: rare with random data, and either is a valid code)."""
    values = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    blocks = w.float().reshape(*w.shape[:-1], -1, 32)
    exp = torch.ceil(torch.log2(blocks.abs().amax(-1).clamp_min(1e-30) / 6.0))
    x = blocks / torch.exp2(exp)[..., None]
    mag = (x.abs()[..., None] - values).abs().argmin(-1)
    codes = (mag | (x < 0).long() << 3).to(torch.uint8)
    deq = torch.where(x < 0, -values[mag], values[mag]) * torch.exp2(exp)[..., None]
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return packed, (exp + 127).to(torch.uint8), deq.reshape(w.shape)


def save_mxfp4_twin(model: transformers.GptOssForCausalLM, root) -> None:
    """Quantize the model's experts to MXFP4 in place (transformers keeps the dequantized
    values, saved to root/hf) and save root/mx with the published *_blocks / *_scales
    tensors instead of the float experts."""
    packed = {}
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            ex = layer.mlp.experts
            for proj in ("gate_up_proj", "down_proj"):
                p = getattr(ex, proj)
                blocks, scales, deq = mxfp4_pack(p.detach().cpu().transpose(1, 2))
                p.copy_(deq.transpose(1, 2).to(p.device))
                packed[f"model.layers.{i}.mlp.experts.{proj}"] = (blocks, scales)
    model.save_pretrained(root / "hf", safe_serialization=True)
    (root / "mx").mkdir()
    state = load_file(root / "hf" / "model.safetensors")
    for name, (blocks, scales) in packed.items():
        del state[name]
        state[name + "_blocks"], state[name + "_scales"] = blocks.contiguous(), scales
    save_file(state, root / "mx" / "model.safetensors", metadata={"format": "pt"})
    for f in ("config.json", "generation_config.json"):
        if (root / "hf" / f).exists():
            (root / "mx" / f).write_text((root / "hf" / f).read_text())


@pytest.fixture(scope="module")
def mxfp4_checkpoint(tmp_path_factory):
    """The tiny model with MXFP4 experts: transformers holds their dequantized values; our
    folder stores the published *_blocks / *_scales tensors instead of the float ones."""
    root = tmp_path_factory.mktemp("gpt_oss_mxfp4")
    model = tiny_gpt_oss(seed=1)
    save_mxfp4_twin(model, root)
    gen = torch.Generator().manual_seed(6)
    prompt = torch.randint(0, SHAPE["vocab_size"], (11,), generator=gen).tolist()
    return root / "mx", prompt, *_expected(model, prompt)


def test_mxfp4_experts_load_packed(mxfp4_checkpoint):
    path = mxfp4_checkpoint[0]
    cfg = ModelConfig.from_folder(path)
    w = load_weights(path, cfg, torch.float32, "cpu")
    moe = w.layers[0].moe
    assert moe is not None and moe.w13.dtype == torch.uint8
    assert moe.w13.shape == (4, 128, 64) and moe.w13_scales.shape == (4, 128, 4)
    assert moe.w2.shape == (4, 128, 32) and moe.w2_scales.shape == (4, 128, 2)
    deq = load_weights(path, cfg, torch.float32, "cpu", dequantize_experts=True)
    assert deq.layers[0].moe.w13.dtype == torch.float32 and deq.layers[0].moe.w13_scales is None


@pytest.mark.parametrize("dequantize", [False, True], ids=["mxfp4", "dequantized"])
def test_mxfp4_matches_transformers(mxfp4_checkpoint, monkeypatch, dequantize):
    path, prompt, want_logits, want = mxfp4_checkpoint
    if dequantize:
        import fuseinfer.models.loader as loader

        real = loader.load_weights
        monkeypatch.setattr("test_models_cpu.load_weights",
                            lambda *a, **k: real(*a, **k, dequantize_experts=True))
    got_logits, got = Runner(path).greedy(prompt, STEPS)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-4, atol=1e-4)
    assert got == want


@pytest.mark.parametrize("name,layers,experts", [("gpt-oss-20b", 24, 32),
                                                 ("gpt-oss-120b", 36, 128)])
def test_bundled_configs_and_mxfp4_dummy_weights(name, layers, experts):
    cfg = ModelConfig.from_folder(resolve_model(name))
    assert cfg.arch == "gpt_oss" and cfg.num_layers == layers
    assert cfg.moe.num_experts == experts and cfg.moe.top_k == 4
    assert cfg.moe.expert_format == "mxfp4" and cfg.quantization is None
    assert cfg.window_left(0) == 127 and cfg.window_left(1) is None
    assert cfg.eos_token_ids == (200002, 199999, 200012)
    small = replace(cfg, num_layers=2, vocab_size=512,
                    moe=replace(cfg.moe, num_experts=4, sparse_layers=frozenset({0, 1})))
    w = dummy_weights(small, torch.bfloat16, "cpu")
    moe = w.layers[1].moe
    assert moe.w13.dtype == torch.uint8 and moe.w13.shape == (4, 5760, 1440)
    assert moe.w2_scales.shape == (4, 2880, 90) and moe.w13_bias.shape == (4, 5760)
    assert int(moe.w13_scales.min()) >= 119 and int(moe.w13_scales.max()) <= 121
    assert w.layers[0].sinks.shape == (64,) and w.layers[0].qkv_bias.shape == (5120,)
    assert w.layers[0].qkv_bias.std() > 0  # random, not the norms' ones
    deq = dummy_weights(small, torch.bfloat16, "cpu", dequantize_experts=True)
    assert deq.layers[1].moe.w13.shape == (4, 5760, 2880)
    assert deq.layers[1].moe.w13.dtype == torch.bfloat16


def test_tensor_parallel_refuses_gpt_oss():
    cfg = ModelConfig.from_folder(resolve_model("gpt-oss-20b"))
    with pytest.raises(NotImplementedError, match="GPT-OSS"):
        local_config(cfg, ParallelState(rank=0, world_size=2, group=object()))
