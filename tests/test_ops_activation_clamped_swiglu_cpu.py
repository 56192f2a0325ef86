"""clamped_swiglu_and_mul on the CPU: the op and its reference against float64 math written
here (GPT-OSS's clamped SwiGLU), the argument errors, the fake impl, and the Triton kernel run
by Triton's interpreter against the float64 math (poisoned outputs, strided rows)."""

from __future__ import annotations

import os

import pytest
import torch

import fuseinfer  # noqa: F401  (registers the ops)
from fuseinfer.ops import clamped_swiglu_and_mul
from fuseinfer.ops.activation.clamped_swiglu_and_mul import (
    launch_clamped_swiglu_and_mul,
    reference_clamped_swiglu_and_mul,
)

needs_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="a GPU is present: the GPU suite runs these kernels natively")

TOL = {torch.bfloat16: 8e-3, torch.float16: 1e-3, torch.float32: 1e-6}


def float64_clamped(x: torch.Tensor, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    xd = x.double()
    inner = xd.size(-1) // 2
    gate, up = xd[:, :inner], xd[:, inner:]
    g = torch.where(gate > limit, torch.full_like(gate, limit), gate)
    u = torch.where(up > limit, limit, torch.where(up < -limit, -limit, up))
    return (u + 1.0) * g / (1.0 + torch.exp(-alpha * g))


def test_reference_is_float32_math_and_clamps():
    x = 6 * torch.randn(9, 2 * 32, dtype=torch.float64)  # many past +-7
    assert (x.abs() > 7).float().mean() > 0.1
    got = reference_clamped_swiglu_and_mul(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), float64_clamped(x), rtol=1e-6, atol=1e-6)
    # the gate is clamped from above only: a very negative gate is not lifted to -7
    y = torch.tensor([[-30.0, 0.5]])
    assert reference_clamped_swiglu_and_mul(y).abs().item() < 1e-10  # -7 would give ~7e-5
    assert float(reference_clamped_swiglu_and_mul(torch.tensor([[30.0, 30.0]]))) == \
        pytest.approx(8 * 7 / (1 + torch.exp(torch.tensor(-1.702 * 7)).item()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_op_matches_float64(dtype):
    x = (torch.randn(7, 2 * 40) * 5).to(dtype)
    out = clamped_swiglu_and_mul(x, 1.5, 3.0)
    assert out.dtype == dtype and out.shape == (7, 40)
    torch.testing.assert_close(out.double(), float64_clamped(x, 1.5, 3.0), rtol=TOL[dtype],
                               atol=TOL[dtype])
    assert not torch.allclose(out.double(), float64_clamped(x), rtol=0.05, atol=0.05)


def test_writes_into_a_strided_out():
    x = 4 * torch.randn(4, 2 * 16)
    buf = torch.full((4, 20), float("nan"))
    out = clamped_swiglu_and_mul(x, out=buf[:, 2:18])
    torch.testing.assert_close(out.double(), float64_clamped(x), rtol=1e-6, atol=1e-6)
    assert torch.isnan(buf[:, :2]).all() and torch.isnan(buf[:, 18:]).all()


def test_errors_and_meta():
    op = torch.ops.fuseinfer.clamped_swiglu_and_mul
    with pytest.raises(ValueError, match="clamped_swiglu_and_mul: input must be"):
        clamped_swiglu_and_mul(torch.randn(4, 7))
    with pytest.raises(ValueError, match="clamped_swiglu_and_mul: input must be bfloat16"):
        clamped_swiglu_and_mul(torch.randn(4, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="clamped_swiglu_and_mul: out must be"):
        op(torch.empty(4, 5), torch.randn(4, 8))
    with pytest.raises(ValueError, match="out must be torch.float32"):
        op(torch.empty(4, 4, dtype=torch.float16), torch.randn(4, 8))
    with pytest.raises(ValueError, match="contiguous last dim"):
        clamped_swiglu_and_mul(torch.randn(8, 4).t())
    with pytest.raises(ValueError, match="clamped_swiglu_and_mul: limit must be"):
        clamped_swiglu_and_mul(torch.randn(4, 8), limit=-1.0)
    with pytest.raises(ValueError, match="clamped_swiglu_and_mul: alpha must be"):
        clamped_swiglu_and_mul(torch.randn(4, 8), alpha=float("nan"))
    meta = clamped_swiglu_and_mul(torch.empty(3, 10, device="meta", dtype=torch.bfloat16))
    assert meta.shape == (3, 5) and meta.device.type == "meta"
    assert meta.dtype == torch.bfloat16


@needs_interpreter
@pytest.mark.parametrize("rows, inner", [(1, 8), (3, 40), (2, 1100)])
def test_kernel_interpreted(rows, inner):
    x = (6 * torch.randn(rows, 2 * inner + 6))[:, :2 * inner]  # strided rows, clamps hit
    out = torch.full((rows, inner), float("nan"))
    launch_clamped_swiglu_and_mul(out, x, 1.702, 7.0, pdl=False)
    torch.testing.assert_close(out.double(), float64_clamped(x), rtol=1e-5, atol=1e-5)
    out16 = torch.full((rows, inner), float("nan"), dtype=torch.bfloat16)
    launch_clamped_swiglu_and_mul(out16, x.bfloat16(), 0.8, 2.5, pdl=False)
    torch.testing.assert_close(out16.double(), float64_clamped(x.bfloat16(), 0.8, 2.5),
                               rtol=2e-2, atol=2e-2)
