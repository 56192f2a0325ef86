"""Qwen3-MoE built from fuseinfer ops on the CPU (float32; topk_softmax and fused_moe run
their float32 references) against transformers' Qwen3MoeForCausalLM on the same tiny
random checkpoint saved to disk: 3 layers (layer 1 dense through mlp_only_layers), 8
experts, 2 per token, norm_topk_prob. Prefill logits agree to 1e-4 (float32 in both; only
summation order differs), greedy tokens match over decode steps, directly and through
the LLM API; transformers' stacked expert layout loads too; FP8 block-quantized experts
(a checkpoint's, quantized at load, dummy) stack their scales and stay within the FP8
tolerance of the dequantized model; the bundled Qwen3-30B-A3B config parses and its dummy
weights, at 2 layers and 8 experts, have the stacked shapes."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_models_cpu import Runner  # tests/ is on sys.path
from tiny_checkpoint import COMMON, FP8_QUANT, block_quantize, tiny_moe_model

from fuseinfer.models.config import ModelConfig, MoeConfig
from fuseinfer.models.decoder import DecoderModel, Fusions
from fuseinfer.models.loader import dummy_weights, load_weights

STEPS = 10
# Router weights 5x transformers' init: the k-th and (k+1)-th experts of a token are far
# apart, so float32 rounding cannot swap which experts a token takes.
ROUTER_SCALE = 5.0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3_moe")
    model = tiny_moe_model(router_scale=ROUTER_SCALE)
    model.save_pretrained(path, safe_serialization=True)
    gen = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, COMMON["vocab_size"], (13,), generator=gen).tolist()
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1]
        want = model.generate(torch.tensor([prompt]), max_new_tokens=STEPS,
                              min_new_tokens=STEPS, do_sample=False)[0, len(prompt):].tolist()
    return path, model, prompt, logits, want


def test_config_reads_the_moe_fields(checkpoint):
    path = checkpoint[0]
    cfg = ModelConfig.from_folder(path)
    assert cfg.arch == "qwen3_moe" and cfg.qk_norm
    assert cfg.moe == MoeConfig(num_experts=8, top_k=2, intermediate_size=64,
                                norm_topk_prob=True, sparse_layers=frozenset({0, 2}))
    assert [cfg.is_sparse(i) for i in range(3)] == [True, False, True]
    # decoder_sparse_step 2: only layers 1, 3, ... are sparse (minus mlp_only_layers)
    raw = json.loads((path / "config.json").read_text()) | {
        "decoder_sparse_step": 2, "mlp_only_layers": [3], "num_hidden_layers": 6}
    assert ModelConfig.from_dict(raw).moe.sparse_layers == {1, 5}


def test_loader_stacks_experts_and_keeps_the_dense_layer(checkpoint):
    path, model, *_ = checkpoint
    cfg = ModelConfig.from_folder(path)
    w = load_weights(path, cfg, torch.float32, "cpu")
    dense, sparse = w.layers[1], w.layers[2]
    assert dense.moe is None and dense.gate_up.shape == (2 * 192, 128)
    assert sparse.gate_up is None and sparse.down is None and sparse.moe is not None
    hf = model.model.layers[2].mlp
    torch.testing.assert_close(sparse.moe.w13, hf.experts.gate_up_proj, rtol=0, atol=0)
    torch.testing.assert_close(sparse.moe.w2, hf.experts.down_proj, rtol=0, atol=0)
    torch.testing.assert_close(sparse.moe.gate, hf.gate.weight, rtol=0, atol=0)


@pytest.mark.parametrize("fusions", [Fusions(), Fusions(
    fused_rope_kv=False, fused_add_rmsnorm=False, fused_qk_norm=False, fused_silu_mul=False,
    gemv_max_tokens=0)], ids=["fused", "unfused"])
def test_matches_transformers(checkpoint, fusions):
    path, _, prompt, want_logits, want = checkpoint
    got_logits, got = Runner(path, fusions).greedy(prompt, STEPS)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-4, atol=1e-4)
    assert got == want


def test_routing_matters(checkpoint):
    """A model whose experts are swapped (so tokens reach other weights) gives different
    logits: the comparison above would catch misrouted tokens."""
    path, _, prompt, want_logits, _ = checkpoint
    runner = Runner(path)
    moe = runner.model.weights.layers[0].moe
    runner.model.weights.layers[0].moe = replace(moe, w13=moe.w13.flip(0), w2=moe.w2.flip(0))
    got = runner.step(prompt, 0)
    assert (got - want_logits).abs().max() > 1e-2


def test_llm_api_greedy_tokens(checkpoint, isolated_cache):
    from fuseinfer import LLM, SamplingParams

    path, _, prompt, _, want = checkpoint
    params = SamplingParams(max_new_tokens=STEPS, temperature=0.0, ignore_eos=True)
    with LLM(path, device="cpu", page_size=4) as llm:
        assert llm.engine.runner.config.arch == "qwen3_moe"
        assert llm.generate([prompt], params)[0].token_ids == want


def test_stacked_expert_checkpoint_loads(checkpoint, tmp_path):
    """transformers' in-memory layout (mlp.experts.gate_up_proj [E, 2I, H], down_proj
    [E, H, I]) saved as is loads to the same weights as the per-expert tensors."""
    path, model, prompt, want_logits, _ = checkpoint
    state = load_file(str(path / "model.safetensors"))
    for i in (0, 2):
        p = f"model.layers.{i}.mlp.experts."
        for e in range(8):
            for part in ("gate_proj", "up_proj", "down_proj"):
                del state[f"{p}{e}.{part}.weight"]
        state[p + "gate_up_proj"] = model.model.layers[i].mlp.experts.gate_up_proj.detach()
        state[p + "down_proj"] = model.model.layers[i].mlp.experts.down_proj.detach()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    got = Runner(tmp_path).step(prompt, 0)
    torch.testing.assert_close(got, want_logits, rtol=1e-4, atol=1e-4)


def test_missing_or_misshapen_expert_is_an_error(checkpoint, tmp_path):
    path = checkpoint[0]
    state = load_file(str(path / "model.safetensors"))
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    cfg = ModelConfig.from_folder(tmp_path)
    name = "model.layers.2.mlp.experts.5.up_proj.weight"
    good = state.pop(name)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(KeyError, match="experts.5.up_proj.weight not found"):
        load_weights(tmp_path, cfg, torch.float32, "cpu")
    state[name] = good[:32].contiguous()
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"experts.5.up_proj.weight must be a float \[64, 128\]"):
        load_weights(tmp_path, cfg, torch.float32, "cpu")


# FP8 experts need H and I multiples of 128 (fused_moe's fp8_block), and the fused
# q/k/v and gate/up parts of the attention and dense layers 128-row multiples.
FP8_MOE = dict(intermediate_size=256, moe_intermediate_size=128)
# Activation quantization (1 x 128 groups, e4m3) alone costs the tiny dense models 4-7%
# relative logits error (test_models_fp8_cpu.py); the same bound holds here.
FP8_REL_TOL = 0.12


def _save_fp8_moe(root):
    """The tiny MoE as an FP8 checkpoint (every q/k/v/o, dense and expert projection
    block-quantized with weight_scale_inv; router, norms, embeddings float) in root/fp8,
    its dequantized twin (float32) in root/deq, and the float original in root/float."""
    model = tiny_moe_model(router_scale=ROUTER_SCALE, **FP8_MOE)
    model.save_pretrained(root / "float", safe_serialization=True)
    state = load_file(str(root / "float" / "model.safetensors"))
    fp8, deq = {}, {}
    for name, t in state.items():
        if "proj" in name and t.dim() == 2:
            q, sc = block_quantize(t)
            fp8[name], fp8[name + "_scale_inv"] = q, sc
            deq[name] = q.float() * sc.repeat_interleave(128, 0)[:t.shape[0]] \
                .repeat_interleave(128, 1)[:, :t.shape[1]]
        else:
            fp8[name] = deq[name] = t
    raw = json.loads((root / "float" / "config.json").read_text())
    for sub, tensors, cfg in (("fp8", fp8, raw | {"quantization_config": FP8_QUANT}),
                              ("deq", deq, raw)):
        (root / sub).mkdir()
        save_file(tensors, str(root / sub / "model.safetensors"))
        (root / sub / "config.json").write_text(json.dumps(cfg))
    return root


def _quantized_runner(folder):
    """Runner of a float checkpoint quantized to FP8 at load (--quantization fp8)."""
    runner = Runner(folder)
    weights = load_weights(folder, runner.config, torch.float32, "cpu", quantize=True)
    runner.model = DecoderModel(runner.config, weights, runner.attn, runner.kv)
    return runner


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_fp8_moe_checkpoint_and_quantization_at_load(tmp_path):
    from fuseinfer.models.fp8_linear import FP8
    from fuseinfer.ops.moe.fused_moe import dequantize_block_weights

    root = _save_fp8_moe(tmp_path)
    deq = Runner(root / "deq")
    fp8 = Runner(root / "fp8")
    moe, ref = fp8.model.weights.layers[0].moe, deq.model.weights.layers[0].moe
    assert moe.w13.dtype == FP8 and moe.w13_scales.shape == (8, 2, 1)
    assert moe.w2.dtype == FP8 and moe.w2_scales.shape == (8, 1, 1)
    assert moe.gate.dtype == torch.float32  # the router stays float
    # the stacked q and scales are exactly the checkpoint's, gate rows before up rows
    torch.testing.assert_close(dequantize_block_weights(moe.w13, moe.w13_scales), ref.w13,
                               rtol=0, atol=0)
    torch.testing.assert_close(dequantize_block_weights(moe.w2, moe.w2_scales), ref.w2,
                               rtol=0, atol=0)
    quantized = _quantized_runner(root / "float")
    assert quantized.model.weights.layers[2].moe.w13.dtype == FP8
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        prompt = torch.randint(0, COMMON["vocab_size"], (11,), generator=gen).tolist()
        want = Runner(root / "deq").step(prompt, 0)
        got = Runner(root / "fp8").step(prompt, 0)
        assert _rel(got, want) < FP8_REL_TOL
        assert 0 < _rel(_quantized_runner(root / "float").step(prompt, 0), want) \
            < FP8_REL_TOL


def test_fp8_moe_dummy_and_bad_scales(tmp_path):
    from fuseinfer.models.fp8_linear import FP8

    root = _save_fp8_moe(tmp_path)
    cfg = ModelConfig.from_folder(root / "fp8")
    w = dummy_weights(cfg, torch.float32, "cpu")
    assert w.layers[0].moe.w13.dtype == FP8 and w.layers[1].moe is None
    state = load_file(str(root / "fp8" / "model.safetensors"))
    name = "model.layers.2.mlp.experts.3.down_proj.weight_scale_inv"
    state[name] = torch.ones(2, 2)
    save_file(state, str(root / "fp8" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"experts.3.down_proj.weight_scale_inv must be a "
                                         r"float \[1, 1\]"):
        load_weights(root / "fp8", cfg, torch.float32, "cpu")


def test_bundled_qwen3_30b_a3b_config_and_dummy_shapes():
    from fuseinfer.models.bundled import resolve_model

    cfg = ModelConfig.from_folder(resolve_model("qwen3-30b-a3b"))
    assert (cfg.arch, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads,
            cfg.head_dim, cfg.vocab_size, cfg.max_position) == \
        ("qwen3_moe", 2048, 48, 32, 4, 128, 151936, 40960)
    assert cfg.moe is not None and (cfg.moe.num_experts, cfg.moe.top_k,
                                    cfg.moe.intermediate_size, cfg.moe.norm_topk_prob) \
        == (128, 8, 768, True)
    assert cfg.moe.sparse_layers == frozenset(range(48)) and cfg.rope.base == 1e6
    assert set(cfg.eos_token_ids) == {151643, 151645}
    # 2 layers, 8 experts and a small vocabulary keep the CPU build small; the per-layer
    # shapes are the real ones.
    small = replace(cfg, num_layers=2, vocab_size=512,
                    moe=replace(cfg.moe, num_experts=8, sparse_layers=frozenset({0, 1})))
    w = dummy_weights(small, torch.bfloat16, "cpu")
    for layer in w.layers:
        assert layer.moe is not None and layer.gate_up is None
        assert layer.moe.w13.shape == (8, 2 * 768, 2048) and layer.moe.w2.shape == (8, 2048, 768)
        assert layer.moe.gate.shape == (8, 2048) and layer.qkv.shape == (
            (32 + 2 * 4) * 128, 2048)
        assert layer.moe.w13.dtype == torch.bfloat16
        assert 0.015 < float(layer.moe.w13.float().std()) < 0.025
    assert not torch.equal(w.layers[0].moe.w13, w.layers[1].moe.w13)
