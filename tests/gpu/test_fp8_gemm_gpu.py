"""fp8_blockwise_mm on the GPU: every CUTLASS configuration the build holds against the
float32 reference (itself checked against float64 in the CPU suite) over small and odd M,
N not a multiple of 128 and bf16/fp16 outputs; the dispatch table's choice; the scale
layouts the op converts (row-major activation scales, unpadded columns, K-major weight
scales); PDL on and off; CUDA-graph replay; the Triton fallback; clear errors."""

from __future__ import annotations

import pytest
import torch

from fuseinfer.ops import fp8_blockwise_mm, fp8_weight_scales_for_mm, per_token_group_quant_fp8
from fuseinfer.ops.gemm.fp8_blockwise_mm import (
    built_configs,
    launch_triton_fp8_blockwise_mm,
    reference_fp8_blockwise_mm,
)
from fuseinfer.ops.gemm.fp8_gemm_dispatch import GEMV_MAX_M, TRITON_GEMV, effective

FP8 = torch.float8_e4m3fn
TOL = 1e-2  # bf16/fp16 rounding of the output; the fp32 accumulation order differs


def _weights(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random e4m3 weights and per-block scales in the HF layout (row-major)."""
    w = torch.randn(n, k, device="cuda") * 200
    q = w.clamp(-448, 448).to(FP8)
    scales = torch.rand(-(-n // 128), k // 128, device="cuda") * 0.01 + 0.001
    return q, scales


def _activations(m: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 4
    return per_token_group_quant_fp8(x, 128, column_major_scales=True)


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all()
    return ((out.float() - ref).norm() / ref.norm()).item()


def _poisoned(m: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.full((m, n), float("nan"), device="cuda", dtype=dtype)


@pytest.fixture(scope="module")
def configs() -> list[str]:
    names = built_configs()
    major = torch.cuda.get_device_capability()[0]
    assert names[-1] == TRITON_GEMV, names
    assert names[:-1] and all(c.startswith(f"sm{major}0_") for c in names[:-1]), names
    return names


SHAPES = [(1, 2112, 7168), (3, 4096, 512), (16, 384, 1536), (17, 7168, 2048),
          (64, 2112, 1024), (100, 640, 4096), (256, 4096, 7168), (1000, 24576, 1536)]


@pytest.mark.parametrize("m, n, k", SHAPES)
def test_every_configuration_matches_the_reference(configs, m, n, k):
    a_q, a_s = _activations(m, k)
    b_q, b_s = _weights(n, k)
    b_s = fp8_weight_scales_for_mm(b_s)
    ref = reference_fp8_blockwise_mm(a_q, a_s, b_q, b_s)
    for config in configs:
        out = _poisoned(m, n, torch.bfloat16)
        if config == TRITON_GEMV and m > GEMV_MAX_M:
            with pytest.raises(ValueError, match="at most"):
                fp8_blockwise_mm(a_q, a_s, b_q, b_s, out=out, config=config)
            continue
        fp8_blockwise_mm(a_q, a_s, b_q, b_s, out=out, config=config)
        assert _rel_err(out, ref) < TOL, config


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 8, 33, 130, 2048])
def test_the_table_choice_for_each_m_bucket(dtype, m):
    n, k = 2112, 7168
    a_q, a_s = _activations(m, k)
    b_q, b_s = _weights(n, k)
    ref = reference_fp8_blockwise_mm(a_q, a_s, b_q, b_s)
    out = fp8_blockwise_mm(a_q, a_s, b_q, b_s, out_dtype=dtype)
    assert out.dtype == dtype and out.shape == (m, n)
    assert _rel_err(out, ref) < TOL, effective().config_for(m, n, k)


def test_scale_layouts_are_converted_not_misread():
    m, n, k = 37, 1024, 1024
    a_q, a_s = _activations(m, k)
    b_q, b_s = _weights(n, k)
    ref = reference_fp8_blockwise_mm(a_q, a_s, b_q, b_s)
    row_major = a_s.contiguous()                       # [M, G] K-major
    unpadded = a_s.t().contiguous().t()                # M-major, column stride 37
    assert unpadded.stride() == (1, m)
    for scales in (row_major, unpadded):
        for weight_scales in (b_s, fp8_weight_scales_for_mm(b_s)):
            out = fp8_blockwise_mm(a_q, scales, b_q, weight_scales)
            assert _rel_err(out, ref) < TOL


def test_strided_rows_and_an_output_view():
    m, n, k = 24, 256, 512
    a_q, a_s = _activations(m, k + 128)
    a_q = a_q[:, :k]  # row stride k + 128
    a_s = a_s[:, : k // 128]
    b_q, b_s = _weights(n, k)
    ref = reference_fp8_blockwise_mm(a_q, a_s, b_q, b_s)
    wide = _poisoned(m, n + 64, torch.bfloat16)
    fp8_blockwise_mm(a_q, a_s, b_q, b_s, out=wide[:, :n])
    assert _rel_err(wide[:, :n], ref) < TOL
    assert torch.isnan(wide[:, n:]).all()  # nothing written outside the view


def test_pdl_on_and_off_and_graph_replay(configs):
    m, n, k = 8, 2048, 2048
    a_q, a_s = _activations(m, k)
    b_q, b_s = _weights(n, k)
    b_s = fp8_weight_scales_for_mm(b_s)
    for config in configs:
        on = fp8_blockwise_mm(a_q, a_s, b_q, b_s, config=config, enable_pdl=True)
        off = fp8_blockwise_mm(a_q, a_s, b_q, b_s, config=config, enable_pdl=False)
        assert torch.equal(on, off), config
    out = _poisoned(m, n, torch.bfloat16)
    fp8_blockwise_mm(a_q, a_s, b_q, b_s, out=out)  # warm up (builds, allocates)
    out.fill_(float("nan"))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fp8_blockwise_mm(a_q, a_s, b_q, b_s, out=out)
    fresh_q, fresh_s = _activations(m, k)
    a_q.copy_(fresh_q)
    a_s.copy_(fresh_s)
    graph.replay()
    torch.cuda.synchronize()
    assert _rel_err(out, reference_fp8_blockwise_mm(a_q, a_s, b_q, b_s)) < TOL


def test_triton_fallback_matches_the_reference():
    for m, n, k in [(1, 300, 256), (70, 130, 512)]:  # N % 8 != 0 stays off CUTLASS
        a_q, a_s = _activations(m, k)
        b_q, b_s = _weights(n, k)
        ref = reference_fp8_blockwise_mm(a_q, a_s, b_q, b_s)
        assert _rel_err(fp8_blockwise_mm(a_q, a_s, b_q, b_s), ref) < TOL
        out = _poisoned(m, n, torch.float16)
        launch_triton_fp8_blockwise_mm(out, a_q, a_s, b_q, b_s)
        assert _rel_err(out, ref) < TOL


def test_empty_m_and_errors():
    b_q, b_s = _weights(256, 256)
    a_q, a_s = _activations(0, 256)
    assert fp8_blockwise_mm(a_q, a_s, b_q, b_s).shape == (0, 256)
    a_q, a_s = _activations(4, 256)
    with pytest.raises((ValueError, RuntimeError), match="no FP8 GEMM configuration"):
        fp8_blockwise_mm(a_q, a_s, b_q, b_s, config="sm90_nonexistent")
    with pytest.raises(ValueError, match="b_scales"):
        fp8_blockwise_mm(a_q, a_s, b_q, b_s[:, :1])
