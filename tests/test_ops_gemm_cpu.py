"""fp8_blockwise_mm on the CPU: the op against float64 math written here (both operands
dequantized block by block), output dtypes, argument errors naming the argument, shapes
from the fake impl, the scale-layout helpers the CUDA path uses, the Triton kernel under
the interpreter (poisoned output), and the fp8_gemm dispatch entry (rule order, bounds,
validation of the menu and of the catch-all rule)."""

from __future__ import annotations

import os

import pytest
import torch

from fuseinfer.dispatch import TableError
from fuseinfer.dispatch.schema import parse_dataclass
from fuseinfer.ops import fp8_blockwise_mm, fp8_weight_scales_for_mm
from fuseinfer.ops.gemm.fp8_blockwise_mm import (
    launch_fp8_gemv,
    launch_triton_fp8_blockwise_mm,
    tma_aligned_activation_scales,
)
from fuseinfer.ops.gemm.fp8_gemm_dispatch import (
    CONFIGS,
    FP8_GEMM_BUILTIN,
    Fp8GemmDispatch,
    Fp8GemmRule,
)

FP8 = torch.float8_e4m3fn
needs_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="a GPU is present: the GPU suite runs this kernel natively")


def _operands(m: int, n: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a_q = (torch.randn(m, k, generator=g) * 60).clamp(-448, 448).to(FP8)
    a_s = torch.rand(m, k // 128, generator=g) * 0.1 + 0.01
    b_q = (torch.randn(n, k, generator=g) * 60).clamp(-448, 448).to(FP8)
    b_s = torch.rand(-(-n // 128), k // 128, generator=g) * 0.1 + 0.01
    return a_q, a_s, b_q, b_s


def float64_blockwise_mm(a_q, a_s, b_q, b_s) -> torch.Tensor:
    """Sum over k blocks of (scaled partial products), in float64, written out loop-wise."""
    m, k = a_q.shape
    n = b_q.shape[0]
    a = a_q.double()
    b = b_q.double()
    out = torch.zeros(m, n, dtype=torch.float64)
    for g in range(k // 128):
        part = a[:, g * 128:(g + 1) * 128] @ b[:, g * 128:(g + 1) * 128].t()
        row_scale = a_s[:, g].double()[:, None]
        col_scale = b_s[torch.arange(n) // 128, g].double()[None, :]
        out += part * row_scale * col_scale
    return out


@pytest.mark.parametrize("m, n, k", [(1, 128, 128), (5, 200, 384), (33, 2112 // 8, 256)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matches_float64_math(m, n, k, dtype):
    a_q, a_s, b_q, b_s = _operands(m, n, k)
    out = torch.full((m, n), float("nan"), dtype=dtype)
    fp8_blockwise_mm(a_q, a_s, b_q, b_s, out=out)
    want = float64_blockwise_mm(a_q, a_s, b_q, b_s)
    err = ((out.double() - want).norm() / want.norm()).item()
    assert err < 4e-3 and torch.isfinite(out).all()
    assert fp8_blockwise_mm(a_q, a_s, b_q, b_s, out_dtype=dtype).dtype == dtype


def test_zero_tokens():
    a_q, a_s, b_q, b_s = _operands(0, 256, 256)
    assert fp8_blockwise_mm(a_q, a_s, b_q, b_s).shape == (0, 256)


@pytest.mark.parametrize("change, arg", [
    (lambda a, s, b, t: (a.float(), s, b, t), "a_q"),
    (lambda a, s, b, t: (a[:, :100], s, b, t), "a_q"),
    (lambda a, s, b, t: (a, s, b[:, :128], t), "b_q"),
    (lambda a, s, b, t: (a, s[:, :1], b, t), "a_scales"),
    (lambda a, s, b, t: (a, s.double(), b, t), "a_scales"),
    (lambda a, s, b, t: (a, s, b, t[:1]), "b_scales"),
])
def test_errors_name_the_argument(change, arg):
    a_q, a_s, b_q, b_s = _operands(4, 256, 256)
    with pytest.raises(ValueError, match=f"fp8_blockwise_mm: {arg}"):
        fp8_blockwise_mm(*change(a_q, a_s, b_q, b_s))


def test_bad_output_is_an_error():
    a_q, a_s, b_q, b_s = _operands(4, 256, 256)
    for out in (torch.empty(4, 255, dtype=torch.bfloat16), torch.empty(4, 256)):
        with pytest.raises(ValueError, match="fp8_blockwise_mm: out"):
            fp8_blockwise_mm(a_q, a_s, b_q, b_s, out=out)


def test_fake_impl_gives_shapes_without_data():
    a_q = torch.empty(7, 512, dtype=FP8, device="meta")
    b_q = torch.empty(300, 512, dtype=FP8, device="meta")
    out = fp8_blockwise_mm(a_q, torch.empty(7, 4, device="meta"), b_q,
                           torch.empty(3, 4, device="meta"), out_dtype=torch.float16)
    assert out.device.type == "meta" and out.shape == (7, 300) and out.dtype == torch.float16


def test_scale_layout_helpers_keep_values_and_give_the_kernel_layouts():
    _, a_s, _, b_s = _operands(6, 300, 512)
    aligned = tma_aligned_activation_scales(a_s)  # row-major in: an M-major padded copy
    assert torch.equal(aligned, a_s) and aligned.stride() == (1, 8)
    assert tma_aligned_activation_scales(aligned) is aligned  # already right: no copy
    n_major = fp8_weight_scales_for_mm(b_s)
    assert torch.equal(n_major, b_s) and n_major.stride() == (1, 3)
    # K = 128: one column, whose stride the kernels' check still wants to be the row count
    # (a transpose-contiguous-transpose leaves (1, 1) there)
    for shape in ((5, 1), (1, 4)):
        col = torch.rand(shape)
        n_major = fp8_weight_scales_for_mm(col)
        assert torch.equal(n_major, col) and n_major.stride() == (1, shape[0])
    # the kernels read whole padded columns: a last one past the storage means a copy
    tail = torch.as_strided(torch.rand(30), (6, 4), (1, 8))
    assert tma_aligned_activation_scales(tail).data_ptr() != tail.data_ptr()


@needs_interpreter
@pytest.mark.parametrize("m, n, k", [(3, 192, 256), (17, 130, 128)])
def test_interpreted_triton_kernel_matches_float64(m, n, k):
    a_q, a_s, b_q, b_s = _operands(m, n, k, seed=3)
    out = torch.full((m, n), float("nan"), dtype=torch.bfloat16)
    launch_triton_fp8_blockwise_mm(out, a_q, a_s.t().contiguous().t(), b_q, b_s)
    want = float64_blockwise_mm(a_q, a_s, b_q, b_s)
    assert ((out.double() - want).norm() / want.norm()).item() < 8e-3


@needs_interpreter
@pytest.mark.parametrize("m, n, k", [(1, 200, 384), (16, 130, 256)])
def test_interpreted_gemv_kernel_matches_float64(m, n, k):
    a_q, a_s, b_q, b_s = _operands(m, n, k, seed=5)
    out = torch.full((m + 1, n), float("nan"), dtype=torch.bfloat16)
    launch_fp8_gemv(out[:m], a_q, a_s.t().contiguous().t(), b_q, b_s, pdl=False)
    want = float64_blockwise_mm(a_q, a_s, b_q, b_s)
    assert ((out[:m].double() - want).norm() / want.norm()).item() < 8e-3
    assert torch.isnan(out[m:]).all()  # rows past M untouched


def test_rules_pick_by_m_then_n_and_k_over_n():
    table = Fp8GemmDispatch("test", True, (
        Fp8GemmRule(16, "sm90_swap_128x16_c1x1_streamk"),
        Fp8GemmRule(None, "sm90_coop_128x128_c1x1_streamk", max_n=4096, min_k_over_n=3.0),
        Fp8GemmRule(None, "sm90_coop_128x128_c1x2"),
    ))
    assert table.config_for(16, 7168, 7168) == "sm90_swap_128x16_c1x1_streamk"
    assert table.config_for(17, 2048, 7168) == "sm90_coop_128x128_c1x1_streamk"
    assert table.config_for(17, 4096, 7168) == "sm90_coop_128x128_c1x2"  # K < 3 N
    assert table.config_for(4096, 7168, 16384) == "sm90_coop_128x128_c1x2"  # N too big
    assert all(FP8_GEMM_BUILTIN.config_for(m, 7168, 7168) in CONFIGS for m in (1, 64, 9999))


@pytest.mark.parametrize("rules, message", [
    ([{"max_m": 16, "config": "sm90_nope"}, {"max_m": None, "config": "sm90_coop_128x128_c1x1"}],
     "unknown FP8 GEMM configuration"),
    ([{"max_m": 16, "config": "sm90_coop_128x128_c1x1"}], "last rule must hold"),
    ([{"max_m": 16, "config": "sm100_1sm_128x128_c1x1"},
      {"max_m": None, "config": "sm90_coop_128x128_c1x1"}], "one arch only"),
    ([{"max_m": 0, "config": "sm90_coop_128x128_c1x1"}], "max_m"),
    ([{"max_m": 32, "config": "triton_gemv"},
      {"max_m": None, "config": "sm90_coop_128x128_c1x1"}], "at most 16 tokens"),
])
def test_table_validation(rules, message):
    with pytest.raises(TableError, match=message):
        parse_dataclass(Fp8GemmDispatch, {"source": "t", "enable_pdl": True, "rules": rules},
                        "fp8_gemm")


def test_gemv_rule_mixes_with_one_arch():
    table = parse_dataclass(Fp8GemmDispatch, {"source": "t", "enable_pdl": True, "rules": [
        {"max_m": 8, "config": "triton_gemv"},
        {"max_m": None, "config": "sm100_1sm_128x128_c1x1"}]}, "fp8_gemm")
    assert table.config_for(8, 4096, 4096) == "triton_gemv"
    assert table.config_for(9, 4096, 4096) == "sm100_1sm_128x128_c1x1"
