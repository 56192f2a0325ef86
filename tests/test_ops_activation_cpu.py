"""silu_and_mul on the CPU: the op and its reference against float64 math written here,
the argument errors, the fake impl, and the Triton kernel run by Triton's interpreter
against the reference (poisoned outputs, strided rows)."""

from __future__ import annotations

import os

import pytest
import torch

from fuseinfer.ops import silu_and_mul
from fuseinfer.ops.activation.silu_and_mul import launch_silu_and_mul, reference_silu_and_mul

needs_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="a GPU is present: the GPU suite runs these kernels natively")

TOL = {torch.bfloat16: 8e-3, torch.float16: 1e-3, torch.float32: 1e-6}


def float64_swiglu(x: torch.Tensor) -> torch.Tensor:
    """gate / (1 + e^-gate) * up in float64, for x = [gate | up]."""
    xd = x.double()
    inner = xd.size(-1) // 2
    gate, up = xd[:, :inner], xd[:, inner:]
    return gate / (1.0 + torch.exp(-gate)) * up


def test_silu_and_mul_reference_is_float32_math():
    x = torch.randn(5, 2 * 24, dtype=torch.float64)
    got = reference_silu_and_mul(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), float64_swiglu(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_silu_and_mul_op_matches_float64(dtype):
    x = (torch.randn(7, 2 * 40) * 3).to(dtype)
    want = float64_swiglu(x)
    out = silu_and_mul(x)
    assert out.dtype == dtype and out.shape == (7, 40)
    torch.testing.assert_close(out.double(), want, rtol=TOL[dtype], atol=TOL[dtype])
    if dtype != torch.float32:
        # fp32 math rounded once: almost every element is the float64 value rounded to
        # dtype (near-ties aside); an intermediate rounding to dtype would miss many.
        mismatched = (out != want.to(dtype)).float().mean().item()
        assert mismatched < 0.02, f"{mismatched:.1%} of elements are not rounded once"


def test_silu_and_mul_writes_into_a_strided_out():
    x = torch.randn(4, 2 * 16, dtype=torch.float32)
    buf = torch.full((4, 20), float("nan"))
    out = silu_and_mul(x, out=buf[:, 2:18])
    torch.testing.assert_close(out.double(), float64_swiglu(x), rtol=1e-6, atol=1e-6)
    assert torch.isnan(buf[:, :2]).all() and torch.isnan(buf[:, 18:]).all()


def test_silu_and_mul_errors_and_meta():
    with pytest.raises(ValueError, match="silu_and_mul: input must be"):
        silu_and_mul(torch.randn(4, 7))
    with pytest.raises(ValueError, match="out must be"):
        torch.ops.fuseinfer.silu_and_mul(torch.empty(4, 5), torch.randn(4, 8))
    with pytest.raises(ValueError, match="out must be torch.float32"):
        torch.ops.fuseinfer.silu_and_mul(torch.empty(4, 4, dtype=torch.float16),
                                         torch.randn(4, 8))
    with pytest.raises(ValueError, match="contiguous last dim"):
        silu_and_mul(torch.randn(8, 4).t())
    meta = silu_and_mul(torch.empty(3, 10, device="meta", dtype=torch.bfloat16))
    assert meta.shape == (3, 5) and meta.device.type == "meta"
    assert meta.dtype == torch.bfloat16


@needs_interpreter
@pytest.mark.parametrize("rows, inner", [(1, 8), (3, 40), (2, 1100)])
def test_silu_and_mul_kernel_interpreted(rows, inner):
    x = torch.randn(rows, 2 * inner + 6)[:, :2 * inner]  # strided rows
    out = torch.full((rows, inner), float("nan"))
    launch_silu_and_mul(out, x, pdl=False)
    torch.testing.assert_close(out, reference_silu_and_mul(x), rtol=1e-5, atol=1e-5)
