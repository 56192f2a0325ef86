"""FP8 block-quantized models on the CPU (the ops' reference implementations): a tiny FP8
checkpoint written to disk (e4m3 weights + weight_scale_inv, quantization_config) against
the same weights dequantized, run by our float path and by transformers; `quantize=True`
(`--quantization fp8`) on a float checkpoint; dummy FP8 weights through 36 layers; the
fusion switches; and the errors a bad checkpoint gets.

Only the activations' 1 x 128 FP8 quantization (and the GEMM's bf16 output) separates the
FP8 model from its dequantized twin. One e4m3 quantization costs ~2.5% relative error per
GEMM input; through the 2-layer tiny models the teacher-forced logits were measured
(4 prompts x Qwen3/Llama) at 4.2-6.6% relative (||d|| / ||ref||), top-1 agreement
0.80-1.00 (random weights give near-flat logits, so top-1 is a loose measure here).
Quantizing the weights at load as well: 6.4-9.4%, top-1 0.78-0.93. Tolerances: below.
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_checkpoint import (
    FP8_QUANT,
    FP8_SHAPE,
    block_quantize,
    fp8_tiny_model,
    save_fp8_checkpoint,
)

from fuseinfer.models.config import ModelConfig
from fuseinfer.models.decoder import DecoderModel, ForwardBatch, Fusions
from fuseinfer.models.fp8_linear import Fp8Weight, quantize_blockwise
from fuseinfer.models.kv_cache import KvCacheConfig, PagedKvCache
from fuseinfer.models.loader import dummy_weights, load_weights
from fuseinfer.ops import AttentionShape, PagedAttention

PAGE = 4
REL_TOL = 0.10  # relative logits error of activation quantization (measured 0.042-0.066)
TOP1_MIN = 0.75  # share of positions whose argmax agrees (measured 0.80-1.00)
ONLINE_REL_TOL = 0.15  # weights quantized at load too (measured 0.064-0.094)
ONLINE_TOP1_MIN = 0.70  # (measured 0.78-0.93)
TOKENS = 64
FUSED = Fusions()  # every fusion on


def _model(config: ModelConfig, weights, fusions: Fusions = FUSED) -> DecoderModel:
    c = config
    kv = PagedKvCache(KvCacheConfig(c.num_layers, c.num_kv_heads, c.head_dim, PAGE,
                                    torch.float32), 64, "cpu")
    attn = PagedAttention(AttentionShape(c.num_heads, c.num_kv_heads, c.head_dim, PAGE), "cpu")
    return DecoderModel(c, weights, attn, kv, fusions)


def teacher_forced(model: DecoderModel, tokens: list[int]) -> torch.Tensor:
    """Logits [T, vocab] of every position of one prompt (pages 1.. of the cache)."""
    n = len(tokens)
    pages = -(-n // PAGE)
    table = torch.zeros(1, 32, dtype=torch.int32)
    table[0, :pages] = torch.arange(1, pages + 1)
    plan = model.attention.plan_prefill([n], [n], table)
    loc = torch.arange(n) + PAGE  # page 0 is the pad page
    batch = ForwardBatch(torch.tensor(tokens), torch.arange(n), loc, plan, torch.arange(n))
    return model.forward(batch).float()


def _load(folder, quantize=False, fusions=FUSED):
    cfg = ModelConfig.from_folder(folder)
    return _model(cfg, load_weights(folder, cfg, torch.float32, "cpu", quantize), fusions)


def _compare(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    assert torch.isfinite(got).all()
    rel = float((got - want).norm() / want.norm())
    top1 = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    return rel, top1


@pytest.fixture(params=["qwen3", "llama"])
def fp8_case(request, tmp_path):
    fp8, deq = tmp_path / "fp8", tmp_path / "deq"
    hf = save_fp8_checkpoint(fp8, deq, fp8_tiny_model(request.param))
    return fp8, deq, hf


def test_fp8_checkpoint_matches_its_dequantized_weights(fp8_case):
    fp8, deq, hf = fp8_case
    model = _load(fp8)
    layer = model.weights.layers[0]
    assert all(isinstance(w, Fp8Weight) for w in (layer.qkv, layer.o, layer.gate_up,
                                                   layer.down))
    assert isinstance(model.weights.lm_head, torch.Tensor)  # lm_head stays float
    tokens = torch.randint(0, FP8_SHAPE["vocab_size"], (TOKENS,)).tolist()
    got = teacher_forced(model, tokens)
    ours = teacher_forced(_load(deq), tokens)  # our float path, dequantized weights
    with torch.no_grad():
        theirs = hf(torch.tensor([tokens])).logits[0].float()
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)  # the twin is exact
    rel, top1 = _compare(got, theirs)
    assert 0 < rel < REL_TOL and top1 >= TOP1_MIN, (rel, top1)


def test_fp8_decode_step_reads_the_cache_like_prefill(fp8_case):
    """A decode step (1 token, the rest from the paged cache) gives the logits the full
    prefill gives at that position: activation scales are per token, so rows agree."""
    fp8, _, _ = fp8_case
    tokens = torch.randint(0, FP8_SHAPE["vocab_size"], (9,)).tolist()
    full = teacher_forced(_load(fp8), tokens)[-1]
    model = _load(fp8)
    teacher_forced(model, tokens[:-1])
    table = torch.zeros(1, 32, dtype=torch.int32)
    table[0, :3] = torch.arange(1, 4)
    n = len(tokens)
    batch = ForwardBatch(torch.tensor(tokens[-1:]), torch.tensor([n - 1]),
                         torch.tensor([PAGE + n - 1]),
                         model.attention.plan_decode([n], table), torch.tensor([0]))
    torch.testing.assert_close(model.forward(batch)[0].float(), full, rtol=2e-2, atol=2e-2)


def test_fusion_switches_give_the_same_logits(fp8_case):
    fp8, _, _ = fp8_case
    tokens = torch.randint(0, FP8_SHAPE["vocab_size"], (21,)).tolist()
    fused = teacher_forced(_load(fp8), tokens)
    for fusions in (Fusions(fused_norm_quant=False), Fusions(fused_silu_mul_quant=False),
                    Fusions(fused_norm_quant=False, fused_silu_mul_quant=False,
                            fused_add_rmsnorm=False, fused_silu_mul=False)):
        plain = teacher_forced(_load(fp8, fusions=fusions), tokens)
        rel, top1 = _compare(plain, fused)
        assert rel < 1e-2 and top1 >= 0.95, (fusions, rel, top1)


def test_quantize_at_load_stays_close_to_float(tmp_path):
    hf = fp8_tiny_model("qwen3")
    hf.save_pretrained(tmp_path, safe_serialization=True)
    tokens = torch.randint(0, FP8_SHAPE["vocab_size"], (TOKENS,)).tolist()
    model = _load(tmp_path, quantize=True)
    assert isinstance(model.weights.layers[1].gate_up, Fp8Weight)
    rel, top1 = _compare(teacher_forced(model, tokens), teacher_forced(_load(tmp_path), tokens))
    assert 0 < rel < ONLINE_REL_TOL and top1 >= ONLINE_TOP1_MIN, (rel, top1)


def test_quantizer_matches_block_by_block_math():
    w = torch.randn(300, 256) * torch.logspace(-3, 1, 300)[:, None]  # ragged N, wide range
    w[128:256, :128] = 0  # an all-zero block keeps a finite scale
    q, s = quantize_blockwise(w)
    want_q, want_s = block_quantize(w)
    torch.testing.assert_close(s, want_s, rtol=1e-6, atol=0)
    assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8))
    assert s.min() > 0 and torch.isfinite(q.float()).all()


def test_modules_to_not_convert_stay_float(tmp_path):
    fp8, deq = tmp_path / "fp8", tmp_path / "deq"
    hf = save_fp8_checkpoint(fp8, deq, fp8_tiny_model("llama"),
                             keep_float=("layers.0.mlp.down_proj",))
    model = _load(fp8)
    assert isinstance(model.weights.layers[0].down, torch.Tensor)
    assert isinstance(model.weights.layers[1].down, Fp8Weight)
    tokens = torch.randint(0, FP8_SHAPE["vocab_size"], (TOKENS,)).tolist()
    with torch.no_grad():
        want = hf(torch.tensor([tokens])).logits[0].float()
    rel, top1 = _compare(teacher_forced(model, tokens), want)
    assert rel < REL_TOL and top1 >= TOP1_MIN, (rel, top1)


def test_dummy_fp8_weights_stay_finite_through_36_layers():
    cfg = ModelConfig.from_dict({
        "architectures": ["Qwen3ForCausalLM"], "vocab_size": 512, "hidden_size": 512,
        "intermediate_size": 1536, "num_hidden_layers": 36, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 128, "max_position_embeddings": 256,
        "quantization_config": FP8_QUANT})
    weights = dummy_weights(cfg, torch.float32, "cpu", seed=3)
    w = weights.layers[35].gate_up
    assert isinstance(w, Fp8Weight) and w.q.dtype == torch.float8_e4m3fn
    assert 0.015 < float(w.dequantize().std()) < 0.025  # the float dummy's std 0.02
    logits = teacher_forced(_model(cfg, weights), list(range(0, 500, 37)))
    assert torch.isfinite(logits).all() and 0 < float(logits.std()) < 100


def _bad(tmp_path, **changes):
    save_fp8_checkpoint(tmp_path / "m", tmp_path / "d", fp8_tiny_model("qwen3"))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["quantization_config"].update(changes)
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    return tmp_path / "m"


@pytest.mark.parametrize("field, value", [("quant_method", "awq"),
                                          ("weight_block_size", [64, 64]),
                                          ("activation_scheme", "static"), ("fmt", "e5m2"),
                                          ("modules_to_not_convert", "lm_head")])
def test_bad_quantization_config_names_the_field(tmp_path, field, value):
    folder = _bad(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=f"quantization_config.{field}"):
        ModelConfig.from_folder(folder)


def test_bad_fp8_tensors_fail_clearly(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _bad(tmp_path)
    path = folder / "model.safetensors"
    state = load_file(str(path))
    name = "model.layers.0.self_attn.o_proj.weight"
    good = state[name + "_scale_inv"]
    state[name + "_scale_inv"] = good[:, :1].contiguous()
    save_file(state, str(path))
    cfg = ModelConfig.from_folder(folder)
    with pytest.raises(ValueError, match="o_proj.weight_scale_inv: must be"):
        load_weights(folder, cfg, torch.float32, "cpu")
    del state[name + "_scale_inv"]
    save_file(state, str(path))
    with pytest.raises(KeyError, match="o_proj.weight_scale_inv not found"):
        load_weights(folder, cfg, torch.float32, "cpu")
    state[name + "_scale_inv"] = good
    save_file(state, str(path))
    (folder / "config.json").write_text(json.dumps(
        {k: v for k, v in json.loads((folder / "config.json").read_text()).items()
         if k != "quantization_config"}))
    with pytest.raises(ValueError, match="no quantization_config"):
        load_weights(folder, ModelConfig.from_folder(folder), torch.float32, "cpu")


def test_fused_parts_whose_scales_cannot_line_up_are_refused(tmp_path):
    """k_proj of 64 rows puts v_proj's rows at offset 320, inside a 128-row block: stacked
    block scales would be wrong, so loading stops; quantizing at load has no such limit."""
    import transformers

    torch.manual_seed(2)
    shape = dict(FP8_SHAPE, num_key_value_heads=1)
    model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**shape)).float().eval()
    save_fp8_checkpoint(tmp_path / "m", tmp_path / "d", model)
    cfg = ModelConfig.from_folder(tmp_path / "m")
    with pytest.raises(ValueError, match="k_proj.weight: 64 rows is not a multiple of 128"):
        load_weights(tmp_path / "m", cfg, torch.float32, "cpu")
    quantized = _load(tmp_path / "d", quantize=True)
    assert quantized.weights.layers[0].qkv.shape == (4 * 64 + 2 * 64, 256)


def test_engine_runs_fp8_with_quantization_option(tmp_path, isolated_cache):
    from fuseinfer import LLM, SamplingParams

    save_fp8_checkpoint(tmp_path / "m", tmp_path / "d", fp8_tiny_model("qwen3"))
    params = SamplingParams(max_new_tokens=4, ignore_eos=True)
    for folder, extra in ((tmp_path / "m", {}), (tmp_path / "d", {"quantization": "fp8"}),
                          (tmp_path / "m", {"load_format": "dummy",
                                            "disable_fused_norm_quant": True,
                                            "disable_fused_silu_mul_quant": True})):
        with LLM(folder, device="cpu", page_size=4, **extra) as llm:
            assert isinstance(llm.engine.runner.model.weights.layers[0].qkv, Fp8Weight)
            assert len(llm.generate([[1, 2, 3]], params)[0].token_ids) == 4


def test_bundled_fp8_config_and_bench_options():
    """qwen3-8b-fp8 resolves to an FP8 config; `bench latency` and `bench offline` take
    the new options through to EngineArgs."""
    import argparse

    from fuseinfer.bench.e2e import latency, offline
    from fuseinfer.models.bundled import resolve_model

    cfg = ModelConfig.from_folder(resolve_model("qwen3-8b-fp8"))
    plain = ModelConfig.from_folder(resolve_model("qwen3-8b"))
    assert cfg.quantization is not None and cfg.quantization.converts("model.layers.0.mlp")
    assert plain.quantization is None and cfg.num_layers == plain.num_layers == 36
    for module in (latency, offline):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        ns = parser.parse_args(["--model", "qwen3-8b", "--load-format", "dummy",
                                "--quantization", "fp8", "--disable-fused-norm-quant",
                                "--disable-fused-silu-mul-quant"])
        args = offline.engine_args(ns)
        assert (args.quantization, args.disable_fused_norm_quant,
                args.disable_fused_silu_mul_quant) == ("fp8", True, True)
