"""FlashInfer's calls as the bench suites make them (bench/flashinfer_baselines.py) against our
ops on small random shapes: argument order, the cos/sin cache layout, the strided qkv rows,
the page-table mapping (page sizes 1, 16 and 64, ragged lengths, GQA groups with and without
its decode tensor cores, a sliding window), the FP8 GEMMs' scale layouts, the small-M bf16
GEMM, and the suites' check-then-time path, CUDA-graph capture included. Skipped where
FlashInfer (an optional baseline) is not installed."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fuseinfer.bench import (
    attention_baselines,
    flashinfer_baselines,
    fp8_gemm_baselines,
    rope_baselines,
)
from fuseinfer.bench.suites import attention, fp8_gemm, linear, norm, rope
from fuseinfer.bench.timing import TimingConfig


@pytest.fixture(autouse=True, scope="module")
def _flashinfer_installed():
    # FlashInfer is an optional baseline: checked when these GPU tests run, not when the
    # CPU suite collects (and deselects) them
    pytest.importorskip("flashinfer")

QUICK = TimingConfig(repeats=2, target_graph_ms=0.2)
REL = 1e-2  # bf16 outputs of the same math


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    err = flashinfer_baselines.rel_err(got, want)
    assert err == err, "NaN"
    return err


# ---- norm ---------------------------------------------------------------------------------
@pytest.mark.parametrize("op", flashinfer_baselines.NORM_OPS)
@pytest.mark.parametrize("tokens, hidden", [(1, 4096), (7, 2880), (33, 1024), (300, 8192)])
@pytest.mark.parametrize("pdl", [True, False])
def test_norm_wrapper_matches_ours(op, tokens, hidden, pdl):
    shape = norm.Shape(tokens, hidden)
    ours = norm._make_sets(shape, torch.bfloat16, 1)[0]
    theirs = {name: t.clone() for name, t in ours.items()}
    norm._ours(op, [ours], pdl)[0]()
    norm._ours(op, [theirs], pdl, flashinfer_baselines.norm(op))[0]()
    for name in ("x", "r") if "fused" in op else ("y",):
        assert _rel(theirs[name], ours[name]) < REL, name
        torch.testing.assert_close(theirs[name].float(), ours[name].float(), rtol=2e-2,
                                   atol=2e-2)


def test_norm_suite_times_flashinfer():
    rows = norm.run([norm.Shape(8, 4096)], list(flashinfer_baselines.NORM_OPS),
                    ["flashinfer"], None, config=QUICK)
    for row in rows:
        assert "flashinfer_error" not in row, row
        assert row["vs_flashinfer"] > 0 and row["flashinfer_rel_err"] < REL
        assert row["flashinfer_timing"] == "cuda_graph"  # replayed as ours is


# ---- rope ---------------------------------------------------------------------------------
ROPE_MODELS = [rope.MODELS["Llama-3-8B"], rope.MODELS["GPT-OSS-120B"],
               rope.MODELS["DeepSeek-V3"],  # interleaved, one key head, no cache
               rope.Model("partial", 8, 2, 128, 64, True, 10_000.0),
               rope.Model("partial-gptj", 8, 2, 128, 32, False, 10_000.0)]


@pytest.mark.parametrize("model", ROPE_MODELS, ids=lambda m: m.name)
@pytest.mark.parametrize("tokens", [1, 7, 300])
def test_rope_wrapper_matches_ours_on_strided_qkv(model, tokens):
    case = rope.Case("rope+kv" if model.kv_cache else "rope", model, tokens)
    err = rope.check(case, torch.bfloat16, None, "cuda",
                     reference=rope_baselines.flashinfer_rope)
    assert err < REL


def test_rope_suite_times_flashinfer():
    rows = rope.run([rope.MODELS["Llama-3-8B"], rope.MODELS["DeepSeek-V3"]], [8],
                    ["flashinfer"], None, config=QUICK)
    for row in rows:
        if row["op"] == "store_kv":
            assert "vs_flashinfer" not in row
            continue
        assert "flashinfer_error" not in row, row
        assert row["vs_flashinfer"] > 0 and row["flashinfer_timing"] == "cuda_graph"


# ---- silu_and_mul -------------------------------------------------------------------------
@pytest.mark.parametrize("rows, inner", [(1, 3072), (7, 14336), (300, 1536)])
def test_silu_and_mul_wrapper_matches_ours(rows, inner):
    x = torch.randn(rows, 2 * inner, device="cuda", dtype=torch.bfloat16)
    ours = torch.empty(rows, inner, device="cuda", dtype=torch.bfloat16)
    theirs = torch.full_like(ours, float("nan"))
    torch.ops.fuseinfer.silu_and_mul(ours, x)
    flashinfer_baselines.silu_and_mul(theirs, x)
    assert _rel(theirs, ours) < REL


# ---- small-M matmul -----------------------------------------------------------------------
@pytest.mark.parametrize("m, n, k", [(1, 4096, 1024), (5, 1024, 3072), (16, 6144, 4096),
                                     (64, 2048, 1024)])
@pytest.mark.parametrize("pdl", [True, False])
def test_small_m_matmul_wrapper_matches_the_float_product(m, n, k, pdl):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
    theirs = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    flashinfer_baselines.small_m_matmul(theirs, x, w, pdl)
    assert _rel(theirs, x.double() @ w.double().t()) < REL


def test_gemm_suite_times_flashinfer():
    shape = linear.Shape("test", "o", 1024, 2048)
    rows = linear.run([shape], [1, 8, 128], None, config=QUICK)
    for row in rows[:2]:  # M <= 64: ours and FlashInfer, checked then timed
        assert "flashinfer_error" not in row, row
        assert row["vs_flashinfer"] > 0 and row["flashinfer_rel_err"] < REL
        assert row["flashinfer_timing"] == "cuda_graph"
    assert "flashinfer_us" not in rows[2]  # past 64 rows only cuBLAS runs


# ---- paged attention ----------------------------------------------------------------------
ATTENTION_MODELS = [attention.Model("gqa4-128", 32, 8, 128),  # decode on tensor cores
                    attention.Model("mha-64", 8, 8, 64),  # decode on CUDA cores
                    attention.Model("gqa8-64-win", 64, 8, 64, window_left=127),
                    # GPT-OSS: sinks, full and windowed (FlashInfer's attention-sink variant)
                    attention.Model("gqa8-64-sinks", 64, 8, 64, sinks=True),
                    attention.Model("gqa8-64-sinks-win", 64, 8, 64, sinks=True,
                                    window_left=127)]


def _attention_rel_err(case: attention.Case, page_size: int) -> float:
    m = case.model
    x = attention.make_inputs(case, page_size, torch.bfloat16)
    ours = x.attn.run(x.plan, x.q, x.kv.k_cache, x.kv.v_cache, sinks=x.sinks,
                      window_left=m.window_left)
    run = flashinfer_baselines.plan_paged_attention(
        case.kind, case.q_lens, case.kv_lens, x.kv.page_table, m.q_heads, m.kv_heads,
        m.head_dim, page_size, torch.bfloat16, sm_scale=m.head_dim ** -0.5,
        window_left=m.window_left, sinks=x.sinks)
    out = torch.full_like(x.q, float("nan"))
    run(x.q, x.kv.k_cache, x.kv.v_cache, out)
    return _rel(out, ours)


@pytest.mark.parametrize("model", ATTENTION_MODELS, ids=lambda m: m.name)
@pytest.mark.parametrize("page_size", [1, 16, 64])
@pytest.mark.parametrize("kv_lens", [(1,), (300, 1, 1000), (4096,) * 3])
def test_paged_decode_wrapper_matches_ours(model, page_size, kv_lens):
    case = attention.Case("decode", model, "t", (1,) * len(kv_lens), kv_lens)
    assert _attention_rel_err(case, page_size) < REL


@pytest.mark.parametrize("model", ATTENTION_MODELS, ids=lambda m: m.name)
@pytest.mark.parametrize("page_size", [1, 16, 64])
@pytest.mark.parametrize("q_lens, kv_lens", [((300,), (300,)), ((17, 200), (333, 200)),
                                             ((1, 64, 5), (1, 1000, 70))])
def test_paged_prefill_wrapper_matches_ours(model, page_size, q_lens, kv_lens):
    case = attention.Case("prefill", model, "t", q_lens, kv_lens)
    assert _attention_rel_err(case, page_size) < REL


def test_sinks_change_the_answer_on_these_shapes():
    """The sink cases above would pass with sinks dropped if sinks barely mattered here."""
    m = ATTENTION_MODELS[3]
    case = attention.Case("prefill", m, "t", (17, 200), (333, 200))
    x = attention.make_inputs(case, 16, torch.bfloat16)
    with_sinks = x.attn.run(x.plan, x.q, x.kv.k_cache, x.kv.v_cache, sinks=x.sinks)
    without = x.attn.run(x.plan, x.q, x.kv.k_cache, x.kv.v_cache)
    assert _rel(without, with_sinks) > 3 * REL


@pytest.mark.parametrize("model", ["Llama-3-8B", "GPT-OSS", "GPT-OSS-win128"])
@pytest.mark.parametrize("kind, q_lens, kv_lens", [("decode", (1,) * 4, (2048,) * 4),
                                                   ("prefill", (512,), (1024,))])
def test_attention_suite_times_flashinfer(model, kind, q_lens, kv_lens):
    case = attention.Case(kind, attention.MODELS[model], "t", q_lens, kv_lens)
    x = attention.make_inputs(case, 64, torch.bfloat16)
    row: dict[str, Any] = {"us": 10.0}
    attention_baselines.time_flashinfer(row, case, x, QUICK)
    assert "flashinfer_error" not in row, row
    assert row["vs_flashinfer"] > 0 and row["flashinfer_rel_err"] < REL
    assert row["flashinfer_timing"] == "cuda_graph"


# ---- FP8 GEMM -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["flashinfer", "flashinfer_tensor"])
@pytest.mark.parametrize("m, n, k", [(1, 2112, 7168), (13, 4096, 512), (33, 1024, 1536),
                                     (300, 2048, 1024)])
def test_fp8_gemm_wrappers_match_the_reference(name, m, n, k):
    """Both sides of the swap-AB threshold (M < 32), an unpadded scale pitch (13, 33), N not
    a multiple of 128 (2112): the activation-scale layout the Hopper GEMM reads by pointer."""
    ops = fp8_gemm_baselines.make_operands(m, n, k)
    ops.out.fill_(float("nan"))
    call = fp8_gemm_baselines.PREPARE[name](ops)
    err = fp8_gemm_baselines.checked_rel_err(call, ops, name)
    assert err < fp8_gemm_baselines.AGREE_REL_ERR, err


def test_fp8_gemm_suite_times_flashinfer():
    shape = fp8_gemm.GemmShape("square", "2048x2048", 2048, 2048)
    rows = fp8_gemm.run([shape], [4, 256], ["flashinfer", "flashinfer_tensor"],
                        fp8_gemm.Peaks(None, None), config=QUICK)
    for row in rows:
        for name in ("flashinfer", "flashinfer_tensor"):
            assert f"{name}_error" not in row, row
            assert row[f"vs_{name}"] > 0 and row[f"{name}_rel_err"] < 2e-2
