"""The `flashinfer` baseline of `fuseinfer bench moe` on the CPU: the experts' re-layout
for cutlass_fused_moe (checked through a fake computing from FlashInfer's documented
layout), the suite rows it gives, and the trimmed-module edits (bench/flashinfer_moe_build.py)
on sample text and, where the unpacked wheel is on this machine, on FlashInfer's files."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fuseinfer  # noqa: F401  (registers the ops)
from fuseinfer.bench import flashinfer_moe_build as build
from fuseinfer.bench import moe_baselines as mb
from fuseinfer.bench.report import format_table
from fuseinfer.bench.suites import moe as suite
from fuseinfer.bench.timing import time_eager_cpu
from fuseinfer.ops.quant.per_token_group_quant_fp8 import reference_per_token_group_quant_fp8

TINY = mb.MoeModel("tiny", 16, 4, 256, 128, renormalize=True)


def _quant_dequant(x: torch.Tensor) -> torch.Tensor:
    q, s = reference_per_token_group_quant_fp8(x, 128)
    return (q.float().view(x.shape[0], -1, 128) * s[..., None]).view(x.shape)


def _fake_fused_moe(calls: list[dict]) -> types.ModuleType:
    """flashinfer.fused_moe computing from cutlass_fused_moe's documented layout: fc1
    [E, 2I, H] with the up rows first, then the gate rows; fc2 [E, H, I]; fp8 block scale:
    bf16 input quantized per 1 x 128 inside, quant_scales [fc1 [E, 2I/128, H/128],
    fc2 [E, H/128, I/128]] float32."""
    def cutlass_fused_moe(input, token_selected_experts, token_final_scales,
                          fc1_expert_weights, fc2_expert_weights, output_dtype, quant_scales,
                          output=None, workspace_buffer=None,
                          use_deepseek_fp8_block_scale=False, **kwargs):
        calls.append({"workspace": workspace_buffer, "fp8": use_deepseek_fp8_block_scale})
        assert token_selected_experts.dtype == torch.int32
        assert token_final_scales.dtype == torch.float32 and output is not None
        assert input.dtype == torch.bfloat16 and output_dtype == torch.bfloat16
        fc1, fc2 = fc1_expert_weights.float(), fc2_expert_weights.float()
        if use_deepseek_fp8_block_scale:
            s1, s2 = quant_scales
            assert s1.dtype == s2.dtype == torch.float32
            fc1 = fc1 * s1.repeat_interleave(128, 1).repeat_interleave(128, 2)
            fc2 = fc2 * s2.repeat_interleave(128, 1).repeat_interleave(128, 2)
        else:
            assert quant_scales is None
        inner = fc2.shape[2]
        x = input.float()
        if use_deepseek_fp8_block_scale:
            x = _quant_dequant(x)
        out = torch.zeros(x.shape)
        for t in range(x.shape[0]):
            for slot in range(token_selected_experts.shape[1]):
                e = int(token_selected_experts[t, slot])
                h = fc1[e] @ x[t]
                act = F.silu(h[inner:]) * h[:inner]  # up first, then gate
                if use_deepseek_fp8_block_scale:
                    act = _quant_dequant(act[None])[0]
                out[t] += token_final_scales[t, slot] * (fc2[e] @ act)
        output.copy_(out)
        return [output]

    def cutlass_fused_moe_workspace_size(max_num_tokens, hidden_size, intermediate_size,
                                         num_experts_total, top_k, **kwargs):
        return max_num_tokens * top_k * (hidden_size + 2 * intermediate_size)

    module = types.ModuleType("flashinfer.fused_moe")
    module.cutlass_fused_moe = cutlass_fused_moe
    module.cutlass_fused_moe_workspace_size = cutlass_fused_moe_workspace_size
    return module


@pytest.fixture
def fake_flashinfer(monkeypatch):
    calls: list[dict] = []
    package = types.ModuleType("flashinfer")
    package.fused_moe = _fake_fused_moe(calls)
    monkeypatch.setitem(sys.modules, "flashinfer", package)
    monkeypatch.setitem(sys.modules, "flashinfer.fused_moe", package.fused_moe)
    monkeypatch.setattr(suite, "time_calls",
                        lambda calls, config: time_eager_cpu(lambda: [c() for c in calls],
                                                             repeats=1))
    monkeypatch.setattr(suite, "buffer_sets", lambda *args, **kwargs: 2)
    monkeypatch.setattr(suite, "dispatched_block_m", lambda tokens, quant: 16)
    return calls


@pytest.mark.parametrize("quant", [None, "fp8_block"])
def test_relayout_matches_the_reference_through_flashinfers_layout(fake_flashinfer, quant):
    torch.manual_seed(0)
    weights = mb.make_weights(TINY, quant, "cpu")
    fi = mb.flashinfer_weights(weights)
    inner = TINY.inter
    assert torch.equal(fi.fc1[:, :inner], weights.w13[:, inner:])  # up rows first
    assert torch.equal(fi.fc1[:, inner:], weights.w13[:, :inner])
    if quant:
        assert fi.fc1_scales.shape == weights.w13_scales.shape
        assert fi.fc1_scales.dtype == torch.float32
    layer = mb.flashinfer_layer(fi, TINY.topk, 16)
    hidden = torch.randn(5, TINY.hidden).to(torch.bfloat16)
    routing = mb.reference_routing(TINY, *mb.make_logits(TINY, 5, "cpu"))
    out = torch.full((5, TINY.hidden), float("nan"), dtype=torch.bfloat16)
    assert layer(hidden, routing, out) is out
    assert mb.layer_rel_err(out, hidden, weights, routing) < mb.LAYER_REL_ERR[quant]
    # the workspace is sized once (for the largest T) and handed to every call
    assert fake_flashinfer[0]["workspace"].numel() == 16 * 4 * (256 + 2 * 128)
    assert fake_flashinfer[0]["fp8"] == (quant is not None)
    # without the swap the fake's gate and up are exchanged: far from the reference
    wrong = mb.FlashinferWeights(weights.w13, weights.w2, quant, weights.w13_scales,
                                 weights.w2_scales)
    mb.flashinfer_layer(wrong, TINY.topk, 16)(hidden, routing, out)
    assert mb.layer_rel_err(out, hidden, weights, routing) > 0.3


def test_fp8_relayout_needs_block_multiples():
    w13 = torch.zeros(2, 2 * 96, 256).to(torch.float8_e4m3fn)
    w2 = torch.zeros(2, 256, 96).to(torch.float8_e4m3fn)
    weights = mb.LayerWeights(w13, w2, "fp8_block", torch.ones(2, 2, 2), torch.ones(2, 2, 1))
    with pytest.raises(NotImplementedError, match="multiples of 128"):
        mb.flashinfer_weights(weights)


def test_suite_rows_time_flashinfer_after_its_check(fake_flashinfer):
    rows = suite.run([TINY], [3, 9], ["layer"], ["flashinfer"], [None, "fp8_block"], 1000.0,
                     device="cpu")
    assert [(r["quant"], r["tokens"]) for r in rows] == [
        ("bf16", 3), ("bf16", 9), ("fp8_block", 3), ("fp8_block", 9)]
    for row in rows:
        assert row["flashinfer_us"] > 0 and row["flashinfer_timing"] == "cpu", row
        assert row["vs_flashinfer"] == pytest.approx(row["flashinfer_us"] / row["us"])
        quant = None if row["quant"] == "bf16" else row["quant"]
        assert row["flashinfer_rel_err"] < mb.LAYER_REL_ERR[quant]
        assert row.get("note") is None and row.get("not_timed") is None
    # one workspace per model and quant: sized for the largest T (9), not per row
    assert len({id(c["workspace"]) for c in fake_flashinfer}) == 2
    assert "x flashinfer" in format_table(rows, suite.COLUMNS)


def test_a_disagreeing_or_unbuildable_flashinfer_is_noted_not_timed(fake_flashinfer,
                                                                     monkeypatch):
    monkeypatch.setattr(mb, "_up_then_gate", lambda w: w.contiguous())  # the layout bug
    row = suite.run([TINY], [4], ["layer"], ["flashinfer"], [None], 1000.0, device="cpu")[0]
    assert "disagrees" in row["flashinfer_error"] and "flashinfer_us" not in row
    assert row["not_timed"] == "flashinfer" and row["note"].startswith("flashinfer: disagrees")
    assert row["us"] > 0

    def unbuildable(fi, topk, max_tokens):
        raise RuntimeError("ninja: build stopped")

    monkeypatch.setattr(mb, "flashinfer_layer", unbuildable)
    row = suite.run([TINY], [4], ["layer"], ["flashinfer"], [None], 1000.0, device="cpu")[0]
    assert row["note"] == "flashinfer: RuntimeError: ninja: build stopped"
    assert "flashinfer_us" not in row and row["us"] > 0


def test_without_flashinfer_the_rows_say_so(fake_flashinfer, monkeypatch):
    monkeypatch.setitem(sys.modules, "flashinfer", None)  # import flashinfer raises
    row = suite.run([TINY], [4], ["layer"], ["flashinfer"], [None], 1000.0, device="cpu")[0]
    assert row["note"] == suite.FLASHINFER_NOTE and "flashinfer_us" not in row


# ---- the trimmed module's edits ------------------------------------------------------------
INSTANTIATION = """// license
#include "cutlass_fused_moe_kernels.cuh"
namespace tensorrt_llm::kernels::cutlass_kernels {
template class CutlassMoeFCRunner<float, float>;
template class CutlassMoeFCRunner<__nv_bfloat16, __nv_bfloat16>;
template class CutlassMoeFCRunner<__nv_bfloat16, __nv_fp8_e4m3, __nv_bfloat16>;
template class CutlassMoeFCRunner<Fp4Type, Fp4Type, half>;
}
"""

BINDING = """  FusedMoeRunner(...) {
    mInnerDimMultiplier = 1;

    // keep consistent with cpp/tensorrt_llm/plugins/mixtureOfExperts/mixtureOfExpertsPlugin.cpp
    if (mActivationDtype == dl_float16 && mWeightDtype == dl_float16) {
      mKernelRunner = std::make_shared<kernels::CutlassMoeFCRunner<half, half>>();
    }
    else if (mActivationDtype == dl_bfloat16 && mWeightDtype == dl_bfloat16) {
      mKernelRunner = std::make_shared<kernels::CutlassMoeFCRunner<__nv_bfloat16, __nv_bfloat16>>();
    }
    else if (mActivationDtype == dl_bfloat16 && mWeightDtype == dl_float8_e4m3fn) {
      mKernelRunner = std::make_unique<kernels::CutlassMoeFCRunner<__nv_bfloat16, __nv_fp8_e4m3>>();
    }
    if (isFp8Quant()) {
      mKernelRunner = switch_output_type<__nv_fp8_e4m3, __nv_fp8_e4m3>(mOutputDtype);
    }
    if (!mKernelRunner) {
      TVM_FFI_ICHECK(false) << "Could not construct";
    }
"""


def test_instantiation_keeps_only_the_bf16_runners():
    out = build.patch_instantiation(INSTANTIATION)
    assert out.startswith('// license\n#include "cutlass_fused_moe_kernels.cuh"\n')
    runners = [line for line in out.splitlines() if line.startswith("template class")]
    assert runners == list(build.KEPT_RUNNERS)
    with pytest.raises(RuntimeError, match="0.7.2.post1"):
        build.patch_instantiation(INSTANTIATION.replace("__nv_fp8_e4m3, __nv_bfloat16>", ">"))


def test_binding_constructor_builds_only_the_kept_runners():
    out = build.patch_binding(BINDING)
    assert "half, half" not in out and "switch_output_type" not in out
    assert build.BINDING_BF16 in out and build.BINDING_FP8 in out
    assert out.index(build.BINDING_FP8) < out.index("if (!mKernelRunner)")
    assert "mInnerDimMultiplier = 1;" in out  # what precedes the branches is kept
    with pytest.raises(RuntimeError, match="binding"):
        build.patch_binding(BINDING.replace("// keep consistent", "// kept consistent"))


def test_generated_files_kept_by_their_instantiations(tmp_path):
    files = {
        "gemm_grouped/90/a_group7.generated.cu":
            "INSTANTIATE_TMA_WARP_SPECIALIZED_MOE_GEMM(Sm90, __nv_bfloat16, __nv_bfloat16,\n",
        "gemm_grouped/90/b_group21.generated.cu":
            "INSTANTIATE_TMA_WARP_SPECIALIZED_MOE_GEMM(Sm90, __nv_fp8_e4m3, __nv_fp8_e4m3,\n",
        "gemm_grouped/90/c_Mixed_group1.generated.cu":
            "INSTANTIATE_TMA_WARP_SPECIALIZED_MOE_GEMM(Sm90, __nv_bfloat16, __nv_bfloat16,\n",
        "gemm_grouped/80/d_M16_group0.generated.cu":
            "template void sm80_generic_fused_moe_gemm_kernelLauncher<cutlass::half_t, "
            "cutlass::half_t, 16>\n",
        "gemm_grouped/80/e_M16_group1.generated.cu":
            "template void sm80_generic_fused_moe_gemm_kernelLauncher<cutlass::half_t, "
            "cutlass::half_t, 16>\ntemplate void sm80_generic_fused_moe_gemm_kernelLauncher<"
            "cutlass::bfloat16_t, cutlass::bfloat16_t, 16>\n",
        "gemm/90/f_group5.generated.cu": "fpA_intB bf16\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    kept = [p.relative_to(tmp_path).as_posix() for p in build.generated_sources(tmp_path)]
    assert kept == ["gemm_grouped/80/e_M16_group1.generated.cu",
                    "gemm_grouped/90/a_group7.generated.cu"]


FULL = Path(os.environ.get("FLASHINFER_BUNDLE_WORK", "/tmp/flashinfer-bundle")) / "full"
CSRC = FULL / "flashinfer" / "data" / "csrc"


@pytest.mark.skipif(not CSRC.is_dir(), reason=f"the unpacked FlashInfer wheel ({FULL}, made by "
                    "microbench/flashinfer_bundle.sh) is not on this machine")
def test_edits_and_sources_against_the_unpacked_wheel():
    assert all((CSRC / s).is_file() for s in build.SOURCES), build.SOURCES
    assert all((CSRC / d).is_dir() for d in build.INCLUDE_DIRS)
    inst = build.patch_instantiation((CSRC / build.INSTANTIATION).read_text())
    assert [ln for ln in inst.splitlines() if ln.startswith("template class")] == list(
        build.KEPT_RUNNERS)
    binding = build.patch_binding((CSRC / build.BINDING).read_text())
    assert "CutlassMoeFCRunner<half, half>" not in binding
    assert "Could not construct fused moe op" in binding
    core = (FULL / "flashinfer" / "fused_moe" / "core.py").read_text()
    assert "def get_cutlass_fused_moe_module" in core  # what install() patches
    assert "gen_cutlass_fused_moe_sm90_module(use_fast_build).build_and_load()" in core
