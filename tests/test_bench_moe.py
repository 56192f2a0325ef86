"""`fuseinfer bench moe` on the CPU: the model table, the torch routing and layer baselines
against the ops' float32 references, the per-expert oracle against reference_fused_moe,
the byte and FLOP counts, and the whole suite loop host-timed (ours or a baseline that
disagrees or fails is reported, never timed), its table and its options."""

from __future__ import annotations

import argparse

import pytest
import torch

import fuseinfer  # noqa: F401  (registers the ops)
from fuseinfer.bench import moe_baselines as mb
from fuseinfer.bench import moe_grouped
from fuseinfer.bench.registry import find_suite
from fuseinfer.bench.report import format_table
from fuseinfer.bench.suites import moe as suite
from fuseinfer.bench.timing import time_eager_cpu
from fuseinfer.ops.moe.fused_moe import reference_fused_moe

TINY = mb.MoeModel("tiny", 16, 4, 256, 128, renormalize=True)
GROUPED = mb.MoeModel("tiny-grouped", 32, 4, 256, 128, groups=4, topk_group=2, scaling=2.5)
AFTER = mb.MoeModel("tiny-after", 8, 2, 192, 128, softmax_after_topk=True)
OSS = mb.MoeModel("tiny-oss", 8, 4, 160, 96, softmax_after_topk=True,
                  activation="clamped_swiglu", bias=True, mxfp4=True)  # off the 128 grid
HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")


def test_models_are_the_real_configs():
    qwen, oss, ds = (mb.MODELS[n] for n in ("Qwen3-30B-A3B", "GPT-OSS-20B", "DeepSeek-V3"))
    assert (qwen.experts, qwen.topk, qwen.hidden, qwen.inter) == (128, 8, 2048, 768)
    assert qwen.renormalize and qwen.router == "topk_softmax"
    assert (oss.experts, oss.topk, oss.hidden, oss.inter) == (32, 4, 2880, 2880)
    assert oss.softmax_after_topk and not oss.renormalize
    assert (oss.activation, oss.bias, oss.mxfp4) == ("clamped_swiglu", True, True)
    big = mb.MODELS["GPT-OSS-120B"]
    assert (big.experts, big.topk, big.hidden, big.inter) == (128, 4, 2880, 2880)
    assert (big.activation, big.bias, big.mxfp4) == ("clamped_swiglu", True, True)
    assert not (qwen.bias or qwen.mxfp4 or ds.bias) and qwen.activation == "silu"
    assert (ds.experts, ds.topk, ds.hidden, ds.inter) == (256, 8, 7168, 2048)
    assert (ds.groups, ds.topk_group, ds.scaling, ds.router) == (8, 4, 2.5, "moe_fused_gate")
    assert suite.TOKENS == (1, 8, 32, 128, 512, 2048, 8192)


@pytest.mark.parametrize("model", [TINY, GROUPED, AFTER], ids=lambda m: m.name)
def test_torch_routing_matches_the_op_and_a_wrong_one_does_not(model):
    logits, bias = mb.make_logits(model, 37, "cpu")
    got = mb.torch_routing(model)(logits, bias)
    assert mb.routing_rel_err(model, logits, bias, got) < 1e-6
    w = torch.empty(37, model.topk)
    ids = torch.empty(37, model.topk, dtype=torch.int32)
    mb.ours_routing(model, logits, bias, w, ids, None)  # the CPU op
    assert mb.routing_rel_err(model, logits, bias, (w, ids)) == 0.0
    worst = ids.clone()
    worst[:, 0] = (ids[:, 0] + 1) % model.experts  # best expert swapped out
    assert mb.routing_rel_err(model, logits, bias, (w, worst)) > 1e-2
    assert mb.routing_rel_err(model, logits, bias, (w.flip(-1), ids)) > 1e-2
    assert mb.routing_rel_err(model, logits, bias, (w, ids - 100)) == float("inf")


def test_routing_check_accepts_either_expert_of_a_tie():
    logits = torch.zeros(1, TINY.experts, dtype=torch.bfloat16)
    logits[0, :6] = torch.tensor([3.0, 2.0, 2.0, 2.0, 2.0, 1.0])
    bias = torch.zeros(TINY.experts)
    w, ids = mb.reference_routing(TINY, logits, bias)
    assert ids.tolist() == [[0, 1, 2, 3]]
    tied = torch.tensor([[0, 4, 2, 1]], dtype=torch.int32)  # 4 ties with 3
    assert mb.routing_rel_err(TINY, logits, bias, (w, tied)) == 0.0


@pytest.mark.parametrize("model, quant", [(TINY, None), (TINY, "fp8_block"), (OSS, None),
                                          (OSS, "mxfp4"), (TINY, "mxfp4")],
                         ids=lambda x: getattr(x, "name", str(x)))
def test_per_expert_oracle_is_reference_fused_moe(model, quant):
    weights = mb.make_weights(model, quant, "cpu")
    hidden = torch.randn(9, model.hidden, dtype=torch.bfloat16)
    logits, bias = mb.make_logits(model, 9, "cpu")
    tw, ids = mb.reference_routing(model, logits, bias)
    ids[2, 1] = -1  # a masked slot contributes nothing
    kw = weights.op_kwargs()
    want = reference_fused_moe(hidden, weights.w13, weights.w2, tw, ids, kw.pop("quant"),
                               kw.pop("w13_scales"), kw.pop("w2_scales"), **kw)
    got = mb.reference_layer(hidden, weights, tw, ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert want.norm() > 0
    assert (weights.w13_bias is not None) == model.bias


def test_mxfp4_weights_and_their_bf16_copy():
    weights = mb.make_weights(OSS, "mxfp4", "cpu")
    assert weights.w13.dtype == weights.w2.dtype == torch.uint8
    assert weights.w13.shape == (8, 192, 80) and weights.w13_scales.shape == (8, 192, 5)
    assert weights.w2.shape == (8, 160, 48) and weights.w2_scales.shape == (8, 160, 3)
    assert weights.w13_bias.shape == (8, 192) and weights.w2_bias.shape == (8, 160)
    lo, hi = int(weights.w13_scales.min()), int(weights.w13_scales.max())
    assert mb.MX_SCALES[0] <= lo < hi <= mb.MX_SCALES[1]
    bf16 = mb.dequantized_bf16(weights)
    assert bf16.quant is None and bf16.w13.dtype == torch.bfloat16
    assert bf16.w13_bias is weights.w13_bias and bf16.activation == "clamped_swiglu"
    from fuseinfer.ops.quant.fp4_format import dequantize_mxfp4
    assert torch.equal(bf16.w2[3].float(), dequantize_mxfp4(weights.w2[3], weights.w2_scales[3]))
    hidden = torch.randn(6, OSS.hidden, dtype=torch.bfloat16)
    routing = mb.reference_routing(OSS, *mb.make_logits(OSS, 6, "cpu"))
    # the same values: the bf16 layer's oracle is the mxfp4 one
    torch.testing.assert_close(mb.reference_layer(hidden, bf16, *routing),
                               mb.reference_layer(hidden, weights, *routing), rtol=0, atol=0)


def test_fp8_weights_are_block_quantized_close_to_bf16():
    torch.manual_seed(0)
    weights = mb.make_weights(TINY, "fp8_block", "cpu")
    assert weights.w13.dtype == torch.float8_e4m3fn and weights.w2.dtype == torch.float8_e4m3fn
    assert weights.w13_scales.shape == (16, 2, 2) and weights.w2_scales.shape == (16, 2, 1)


@pytest.mark.skipif(not HAS_GROUPED_MM, reason="this torch has no _grouped_mm")
@pytest.mark.parametrize("model", [TINY, AFTER], ids=lambda m: m.name)
def test_torch_pipeline_matches_the_oracle(model):
    weights = mb.make_weights(model, None, "cpu")
    hidden = torch.randn(70, model.hidden, dtype=torch.bfloat16)
    routing = mb.reference_routing(model, *mb.make_logits(model, 70, "cpu"))
    out = mb.torch_layer(weights)(hidden, routing)
    assert out.shape == hidden.shape and out.dtype == torch.bfloat16
    assert mb.layer_rel_err(out, hidden, weights, routing) < 1e-2
    assert mb.layer_rel_err(2 * out, hidden, weights, routing) > 0.5


def test_torch_pipeline_refuses_fp8_weights():
    with pytest.raises(NotImplementedError, match="bf16"):
        mb.torch_layer(mb.make_weights(TINY, "fp8_block", "cpu"))
    with pytest.raises(NotImplementedError, match="bf16"):
        mb.torch_layer(mb.make_weights(OSS, "mxfp4", "cpu"))


@pytest.mark.skipif(not HAS_GROUPED_MM, reason="this torch has no _grouped_mm")
def test_torch_pipeline_has_biases_and_the_clamped_swiglu():
    weights = mb.dequantized_bf16(mb.make_weights(OSS, "mxfp4", "cpu"))
    hidden = 3 * torch.randn(40, OSS.hidden, dtype=torch.bfloat16)
    routing = mb.reference_routing(OSS, *mb.make_logits(OSS, 40, "cpu"))
    out = mb.torch_layer(weights)(hidden, routing)
    assert mb.layer_rel_err(out, hidden, weights, routing) < 2e-2
    no_bias = mb.LayerWeights(weights.w13, weights.w2, activation="clamped_swiglu")
    assert mb.layer_rel_err(out, hidden, no_bias, routing) > 5e-2


def test_flashinfer_weights_refuse_what_it_is_not_wired_for():
    with pytest.raises(NotImplementedError, match="without biases"):
        mb.flashinfer_weights(mb.make_weights(OSS, None, "cpu"))
    with pytest.raises(NotImplementedError, match="mxfp4"):
        mb.flashinfer_weights(mb.make_weights(TINY, "mxfp4", "cpu"))


def test_counts_and_check_tokens():
    qwen, ds = mb.MODELS["Qwen3-30B-A3B"], mb.MODELS["DeepSeek-V3"]
    assert mb.expert_bytes(qwen, None) == 3 * 2048 * 768 * 2
    assert mb.expert_bytes(ds, "fp8_block") == 3 * 7168 * 2048 + 4 * (32 * 56 + 56 * 16)
    assert mb.layer_flops(qwen, 4) == 2 * 4 * 8 * (2 * 768 * 2048 + 2048 * 768)
    oss = mb.MODELS["GPT-OSS-120B"]
    assert mb.expert_bytes(oss, "mxfp4") == 3 * 2880 * 2880 // 2 + 3 * 2880 * 90 + 2 * 3 * 2880
    assert mb.expert_bytes(oss, None) == 3 * 2880 * 2880 * 2 + 2 * 3 * 2880
    assert mb.check_tokens(5).tolist() == list(range(5))
    picked = mb.check_tokens(8192)
    assert len(picked) == mb.CHECK_TOKENS and picked[0] == 0 and picked[-1] == 8191


# ---- the suite loop, host-timed ----------------------------------------------------------
@pytest.fixture
def cpu_suite(monkeypatch):
    timed: list[int] = []

    def host_timed(calls, config):
        timed.append(len(calls))
        return time_eager_cpu(lambda: [call() for call in calls], repeats=1)

    monkeypatch.setattr(suite, "time_calls", host_timed)
    monkeypatch.setattr(moe_grouped, "time_calls", host_timed)
    monkeypatch.setattr(suite, "buffer_sets", lambda *args, **kwargs: 2)
    monkeypatch.setattr(suite, "dispatched_block_m", lambda tokens, quant: 16)
    return timed


def _run(ops, baselines, quants=(None,), models=(TINY,), tokens=(3, 70)):
    return suite.run(list(models), list(tokens), list(ops), list(baselines), list(quants),
                     1000.0, device="cpu")


def test_rows_for_every_op_with_rates_and_ratios(cpu_suite):
    baselines = ["eager", "torch", "flashinfer"] if HAS_GROUPED_MM else ["eager", "flashinfer"]
    rows = _run(suite.DEFAULT_OPS, baselines, quants=(None, "fp8_block"))
    assert [(r["kind"], r.get("quant"), r["tokens"]) for r in rows] == [
        ("routing", None, 3), ("routing", None, 70), ("align", None, 3), ("align", None, 70),
        ("layer", "bf16", 3), ("layer", "bf16", 70), ("layer", "fp8_block", 3),
        ("layer", "fp8_block", 70)]
    for row in rows:
        assert row["us"] > 0 and row["timing"] == "cpu" and row["rel_err"] <= 2e-2, row
        assert row.get("not_timed") is None
    routing = rows[0]
    assert routing["op"] == "topk_softmax"
    assert routing["vs_eager"] == pytest.approx(routing["eager_us"] / routing["us"])
    assert rows[2]["op"] == "moe_align_block_size" and rows[2]["block_m"] == 16
    for row in rows[4:]:
        assert 1 <= row["experts_hit"] <= min(16, 4 * row["tokens"])
        assert row["weight_gbps"] == pytest.approx(
            row["experts_hit"] * mb.expert_bytes(TINY, row["shape"] if row["shape"] !=
                                                 "bf16" else None) / row["us"] / 1e3)
        assert row["pct_copy"] == pytest.approx(100 * row["weight_gbps"] / 1000.0)
        assert row["tflops"] == pytest.approx(mb.layer_flops(TINY, row["tokens"])
                                              / row["us"] / 1e6)
        assert suite.FLASHINFER_NOTE in row["note"]
    if HAS_GROUPED_MM:
        assert rows[4]["vs_torch"] == pytest.approx(rows[4]["torch_us"] / rows[4]["us"])
        assert rows[4]["torch_timing"] == "cpu"
    assert "vs_torch" not in rows[6] and "bf16 rows only" in rows[6]["note"]
    table = format_table(rows, suite.COLUMNS)
    assert "moe_fused_gate" not in table and "fp8_block" in table and "x torch" in table


def test_grouped_routing_row_uses_moe_fused_gate(cpu_suite):
    row = _run(["routing"], ["eager"], models=(GROUPED,), tokens=(5,))[0]
    assert row["op"] == "moe_fused_gate" and row["rel_err"] == 0.0 and row["eager_us"] > 0


def test_our_mismatch_is_reported_not_timed(cpu_suite, monkeypatch):
    def wrong(model, logits, bias, weights, ids, pdl):
        weights.zero_()
        ids.zero_()

    monkeypatch.setattr(mb, "ours_routing", wrong)
    row = _run(["routing"], ["eager"], tokens=(4,))[0]
    assert row["note"].startswith("MISMATCH") and "us" not in row and "eager_us" not in row
    assert cpu_suite == []  # nothing was timed


def test_a_disagreeing_or_failing_baseline_is_not_timed(cpu_suite, monkeypatch):
    eager = mb.torch_routing

    def doubled(model):
        fn = eager(model)
        return lambda x, b: (2 * fn(x, b)[0], fn(x, b)[1])

    monkeypatch.setattr(mb, "torch_routing", doubled)
    row = _run(["routing"], ["eager"], tokens=(4,))[0]
    assert "disagrees" in row["eager_error"] and "eager_us" not in row
    assert row["not_timed"] == "eager" and row["us"] > 0

    def broken(weights):
        raise RuntimeError("_grouped_mm: unsupported here")

    monkeypatch.setattr(mb, "torch_layer", broken)
    row = _run(["layer"], ["torch"], tokens=(4,))[0]
    assert row["torch_error"] == "RuntimeError: _grouped_mm: unsupported here"
    assert "torch_us" not in row and row["not_timed"] == "torch" and row["us"] > 0


def test_mxfp4_rows_time_ours_against_the_bf16_dequant_layer(cpu_suite):
    baselines = ["torch", "flashinfer", "bf16_dequant", "eager"] if HAS_GROUPED_MM \
        else ["flashinfer", "bf16_dequant"]
    rows = _run(["layer"], baselines, quants=(None, "mxfp4"), models=(OSS,), tokens=(3, 70))
    assert [(r["quant"], r["tokens"]) for r in rows] == [("bf16", 3), ("bf16", 70),
                                                        ("mxfp4", 3), ("mxfp4", 70)]
    for row in rows:
        assert row["us"] > 0 and row["rel_err"] <= 2e-2
        assert row["activation"] == "clamped_swiglu" and row["bias"] is True
        assert "flashinfer" in row["note"] and "flashinfer_us" not in row
        assert row["weight_gbps"] == pytest.approx(
            row["experts_hit"] * mb.expert_bytes(OSS, None if row["quant"] == "bf16"
                                                 else "mxfp4") / row["us"] / 1e3)
        if HAS_GROUPED_MM:
            assert row["vs_torch"] == pytest.approx(row["torch_us"] / row["us"])
    for row in rows[2:]:
        assert row["backend"] == "triton" and row["bf16_dequant_rel_err"] <= 2e-2
        assert row["vs_bf16_dequant"] == pytest.approx(row["bf16_dequant_us"] / row["us"])
        assert row.get("not_timed") is None
        if HAS_GROUPED_MM:
            assert "dequantized bf16" in row["note"]
    assert "vs_bf16_dequant" not in rows[0] and "bf16_dequant_error" not in rows[0]
    table = format_table(rows, suite.COLUMNS)
    assert "mxfp4" in table and "x bf16 dequant" in table


def test_a_wrong_bf16_dequant_twin_is_not_timed(cpu_suite, monkeypatch):
    real = mb.dequantized_bf16

    def broken(weights):
        twin = real(weights)
        twin.w2_bias = None  # a twin that drops a bias disagrees with the mxfp4 oracle
        return twin

    monkeypatch.setattr(mb, "dequantized_bf16", broken)
    row = _run(["layer"], ["bf16_dequant"], quants=("mxfp4",), models=(OSS,), tokens=(9,))[0]
    assert "disagrees" in row["bf16_dequant_error"] and "bf16_dequant_us" not in row
    assert row["not_timed"] == "bf16_dequant" and row["us"] > 0


def test_fp8_rows_of_a_model_off_the_128_grid_are_notes(cpu_suite):
    rows = _run(["layer"], [], quants=("fp8_block",), models=(AFTER,), tokens=(1, 8))
    assert [r["tokens"] for r in rows] == [1, 8]
    assert all("multiples of 128" in r["note"] and "us" not in r for r in rows)


def test_grouped_rows_check_time_and_report_what_cannot_run(cpu_suite):
    rows = suite.run([TINY], [1], ["grouped"], ["torch_fp8_row", "torch_bf16"], [None],
                     1000.0, device="cpu", per_expert=(3, 16))
    assert [r["per_expert"] for r in rows] == [3, 16]
    for row in rows:
        assert row["rel_err"] < 2e-2 and row["us"] > 0, row
        assert row["tflops"] == pytest.approx(2 * row["rows"] * 256 * 256 / row["us"] / 1e6)
        # each torch baseline is timed with its ratio or reported with its error
        for name in ("torch_fp8_row", "torch_bf16"):
            assert (f"vs_{name}" in row) != (f"{name}_error" in row), row


def test_grouped_mismatch_is_not_timed(cpu_suite, monkeypatch):
    def wrong(case, config, pdl):
        return lambda: case.out.fill_(1.0)

    monkeypatch.setattr(moe_grouped, "ours", wrong)
    row = suite.run([TINY], [1], ["grouped"], [], [None], 1000.0, device="cpu",
                    per_expert=(4,))[0]
    assert row["note"].startswith("MISMATCH") and "us" not in row


def test_options_and_quick_args():
    parser = argparse.ArgumentParser()
    suite.add_arguments(parser)
    args = parser.parse_args(["--models", "DeepSeek-V3", "--ops", "layer", "--quant",
                              "none", "fp8_block", "mxfp4", "--record"])
    assert args.models == ["DeepSeek-V3"] and args.quant == ["none", "fp8_block", "mxfp4"]
    assert suite.QUANTS["mxfp4"] == "mxfp4"
    assert args.record and args.baselines == list(mb.BASELINES) + ["torch_fp8_row",
                                                                   "torch_bf16"]
    assert "bf16_dequant" in args.baselines
    assert args.fp8_backend == ["table"] and args.per_expert is None
    quick = parser.parse_args(list(find_suite("moe").quick_args or ()))
    assert quick.models == ["Qwen3-30B-A3B"] and quick.tokens == [1, 128, 4096]
    assert quick.quant == ["none"] and not quick.record
    with pytest.raises(SystemExit):
        parser.parse_args(["--quant", "int4"])


def test_unknown_names_exit_before_anything_runs(monkeypatch):
    parser = argparse.ArgumentParser()
    suite.add_arguments(parser)
    for bad in (["--models", "Mixtral"], ["--ops", "gemm"], ["--baselines", "vllm"]):
        with pytest.raises(SystemExit, match="unknown"):
            suite.run_command(parser.parse_args(bad))
