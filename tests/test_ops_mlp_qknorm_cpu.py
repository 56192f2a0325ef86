"""silu_and_mul, qk_rmsnorm and small_batch_linear on the CPU: the references against
independent formulas, the ops' argument errors and meta shapes, and the Triton kernels run
by Triton's interpreter against the references on small shapes (poisoned outputs, strided
views)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from fuseinfer.ops import qk_rmsnorm, silu_and_mul
from fuseinfer.ops.activation.silu_and_mul import launch_silu_and_mul, reference_silu_and_mul
from fuseinfer.ops.norm.qk_rmsnorm import launch_qk_rmsnorm, reference_qk_rmsnorm

needs_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="a GPU is present: the GPU suite runs these kernels natively")


def test_silu_and_mul_reference_and_op():
    x = torch.randn(5, 2 * 24, dtype=torch.float64)
    gate, up = x[:, :24], x[:, 24:]
    want = gate * torch.sigmoid(gate) * up
    torch.testing.assert_close(reference_silu_and_mul(x).double(), want, rtol=1e-6,
                               atol=1e-6)
    xb = x.to(torch.bfloat16)
    out = silu_and_mul(xb)
    assert out.dtype == torch.bfloat16 and out.shape == (5, 24)
    torch.testing.assert_close(out.float(), reference_silu_and_mul(xb).bfloat16().float())


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
    meta = silu_and_mul(torch.empty(3, 10, device="meta"))
    assert meta.shape == (3, 5) and meta.device.type == "meta"


def _qk_case(tokens=3, hq=4, hk=2, d=16, dtype=torch.float32):
    qkv = torch.randn(tokens, (hq + 2 * hk) * d).to(dtype)
    wq, wk = (torch.randn(d) * 0.5 + 1).to(dtype), (torch.randn(d) * 0.5 + 1).to(dtype)
    return qkv, wq, wk


def test_qk_rmsnorm_reference_matches_per_head_rmsnorm():
    qkv, wq, wk = _qk_case()
    q, k = qkv[:, :64].reshape(3, 4, 16), qkv[:, 64:96].reshape(3, 2, 16)
    want_q = F.rms_norm(q.double(), (16,), wq.double(), 1e-6)
    want_k = F.rms_norm(k.double(), (16,), wk.double(), 1e-6)
    got = reference_qk_rmsnorm(qkv[:, :96], wq, wk, 4, 1e-6).view(3, 6, 16).double()
    torch.testing.assert_close(got[:, :4], want_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[:, 4:], want_k, rtol=1e-5, atol=1e-5)


def test_qk_rmsnorm_op_in_place_on_a_strided_view():
    qkv, wq, wk = _qk_case(dtype=torch.bfloat16)
    v_before = qkv[:, 96:].clone()
    want = reference_qk_rmsnorm(qkv[:, :96], wq, wk, 4, 1e-6)
    qk_rmsnorm(qkv[:, :96], wq, wk, 4)
    torch.testing.assert_close(qkv[:, :96].float(), want.bfloat16().float())
    assert torch.equal(qkv[:, 96:], v_before)  # the v columns are untouched


@pytest.mark.parametrize("bad, match", [
    (dict(num_q_heads=6), "num_q_heads must be in"),
    (dict(num_q_heads=0), "num_q_heads must be in"),
    (dict(k_weight=torch.ones(8)), "must be the same 1-D"),
    (dict(qk=torch.randn(3, 90)), "qk must be"),
    (dict(eps=0.0), "eps must be > 0"),
    (dict(q_weight=torch.ones(16, dtype=torch.float16), k_weight=torch.ones(16,
          dtype=torch.float16)), "must have qk's dtype"),
])
def test_qk_rmsnorm_errors(bad, match):
    qkv, wq, wk = _qk_case()
    args = dict(qk=qkv[:, :96], q_weight=wq, k_weight=wk, num_q_heads=4, eps=1e-6) | bad
    with pytest.raises(ValueError, match=match):
        qk_rmsnorm(**args)


def test_qk_rmsnorm_meta():
    qk = torch.empty(2, 96, device="meta")
    qk_rmsnorm(qk, torch.empty(16, device="meta"), torch.empty(16, device="meta"), 4)


@needs_interpreter
@pytest.mark.parametrize("rows, inner", [(1, 8), (3, 40), (2, 1100)])
def test_silu_and_mul_kernel_interpreted(rows, inner):
    x = torch.randn(rows, 2 * inner + 6)[:, :2 * inner]  # strided rows
    out = torch.full((rows, inner), float("nan"))
    launch_silu_and_mul(out, x, pdl=False)
    torch.testing.assert_close(out, reference_silu_and_mul(x), rtol=1e-5, atol=1e-5)


@needs_interpreter
@pytest.mark.parametrize("hq, hk, d", [(4, 2, 16), (16, 8, 32), (2, 1, 64)])
def test_qk_rmsnorm_kernel_interpreted(hq, hk, d):
    qkv, wq, wk = _qk_case(tokens=3, hq=hq, hk=hk, d=d)
    width = (hq + hk) * d
    v_before = qkv[:, width:].clone()
    want = reference_qk_rmsnorm(qkv[:, :width], wq, wk, hq, 1e-6)
    launch_qk_rmsnorm(qkv[:, :width], wq, wk, hq, 1e-6, pdl=False)
    torch.testing.assert_close(qkv[:, :width], want, rtol=1e-5, atol=1e-5)
    assert torch.equal(qkv[:, width:], v_before)


def test_small_batch_linear_op_and_errors():
    from fuseinfer.ops import small_batch_linear

    x, w = torch.randn(3, 40, dtype=torch.float64), torch.randn(24, 40, dtype=torch.float64)
    xb, wb = x.to(torch.bfloat16), w.to(torch.bfloat16)
    out = small_batch_linear(xb, wb)
    want = (xb.double() @ wb.double().t()).to(torch.bfloat16)
    torch.testing.assert_close(out, want)
    with pytest.raises(ValueError, match="M <= 8"):
        small_batch_linear(torch.randn(9, 40), torch.randn(24, 40))
    with pytest.raises(ValueError, match=r"weight must be \[N, 40\]"):
        small_batch_linear(torch.randn(2, 40), torch.randn(24, 41))
    with pytest.raises(ValueError, match="share a float dtype"):
        small_batch_linear(torch.randn(2, 40), torch.randn(24, 40, dtype=torch.float16))
    with pytest.raises(ValueError, match="contiguous last dim"):
        small_batch_linear(torch.randn(2, 40), torch.randn(40, 24).t())
    assert small_batch_linear(torch.empty(2, 40, device="meta"),
                              torch.empty(24, 40, device="meta")).shape == (2, 24)


@needs_interpreter
@pytest.mark.parametrize("m, n, k", [(1, 37, 1000), (8, 70, 64), (5, 16, 3000)])
def test_small_batch_linear_kernel_interpreted(m, n, k):
    from fuseinfer.ops.linear.small_batch_linear import (
        launch_small_batch_linear,
        reference_small_batch_linear,
    )

    x = torch.randn(m, k + 8)[:, :k]  # strided rows
    w = torch.randn(n, k)
    out = torch.full((m, n), float("nan"))
    launch_small_batch_linear(out, x, w, pdl=False)
    torch.testing.assert_close(out, reference_small_batch_linear(x, w)[0], rtol=1e-4, atol=1e-3)


def test_small_batch_linear_with_silu_mul():
    from fuseinfer.ops import small_batch_linear
    from fuseinfer.ops.activation.silu_and_mul import reference_silu_and_mul

    x, w = torch.randn(2, 2 * 24), torch.randn(10, 24)
    want = reference_silu_and_mul(x) @ w.t()
    torch.testing.assert_close(small_batch_linear(x, w, silu_mul=True), want)
    with pytest.raises(ValueError, match=r"weight must be \[N, 24\]"):
        small_batch_linear(x, torch.randn(10, 48), silu_mul=True)


@needs_interpreter
def test_small_batch_linear_silu_mul_kernel_interpreted():
    from fuseinfer.ops.linear.small_batch_linear import (
        launch_small_batch_linear,
        reference_small_batch_linear,
    )

    x, w = torch.randn(3, 2 * 300), torch.randn(20, 300)
    out = torch.full((3, 20), float("nan"))
    launch_small_batch_linear(out, x, w, pdl=False, silu_mul=True)
    torch.testing.assert_close(out, reference_small_batch_linear(x, w, silu_mul=True)[0],
                               rtol=1e-4, atol=1e-3)


def test_small_batch_linear_norm_prologues():
    from fuseinfer.ops import small_batch_linear
    from fuseinfer.ops.norm.rmsnorm import reference_rmsnorm

    x, res, w = torch.randn(2, 32), torch.randn(2, 32), torch.randn(12, 32)
    nw = torch.rand(32) + 0.5
    torch.testing.assert_close(small_batch_linear(x, w, norm_weight=nw),
                               reference_rmsnorm(x, nw, 1e-6) @ w.t())
    out, new_res = small_batch_linear(x, w, norm_weight=nw, residual=res)
    torch.testing.assert_close(new_res, x + res)
    torch.testing.assert_close(out, reference_rmsnorm(x + res, nw, 1e-6) @ w.t())
    with pytest.raises(ValueError, match="needs norm_weight"):
        torch.ops.fuseinfer.small_batch_linear(torch.empty(2, 12), x, w, residual=res,
                                               residual_out=torch.empty(2, 32))
    with pytest.raises(ValueError, match="must not be residual"):
        torch.ops.fuseinfer.small_batch_linear(torch.empty(2, 12), x, w, norm_weight=nw,
                                               residual=res, residual_out=res)
    with pytest.raises(ValueError, match="norm_weight must be"):
        small_batch_linear(x, w, norm_weight=torch.ones(31))


@needs_interpreter
@pytest.mark.parametrize("with_residual", [False, True])
def test_small_batch_linear_norm_kernel_interpreted(with_residual):
    from fuseinfer.ops.linear.small_batch_linear import (
        launch_small_batch_linear,
        reference_small_batch_linear,
    )

    x, w = torch.randn(3, 300), torch.randn(40, 300)
    nw, res = torch.rand(300) + 0.5, torch.randn(3, 300)
    out = torch.full((3, 40), float("nan"))
    res_out = torch.full((3, 300), float("nan")) if with_residual else None
    launch_small_batch_linear(out, x, w, pdl=False, norm_weight=nw,
                              residual=res if with_residual else None, residual_out=res_out)
    want, want_res = reference_small_batch_linear(x, w, norm_weight=nw,
                                                  residual=res if with_residual else None)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-3)
    if with_residual:
        torch.testing.assert_close(res_out, want_res)
