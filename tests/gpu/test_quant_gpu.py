"""per_token_group_quant_fp8 and its int8 twin on the GPU (Triton, the hardware casts)
against their float32 references (checked against float64 in the CPU suite): bit for bit
over model shapes, dtypes, group sizes, strided rows, power-of-two and M-major scales; PDL
on and off give the same bits; it replays inside a CUDA graph. The fused producers match
within one e4m3 step (their exp / rsqrt differ from torch's in the last float32 bit)."""

from __future__ import annotations

import pytest
import torch

from fuseinfer.ops import (
    fused_add_rmsnorm_quant_fp8,
    per_token_group_quant_fp8,
    per_token_group_quant_int8,
    silu_and_mul_quant_fp8,
)
from fuseinfer.ops.quant.fused_add_rmsnorm_quant_fp8 import (
    reference_fused_add_rmsnorm_quant_fp8,
)
from fuseinfer.ops.quant.per_token_group_quant_fp8 import reference_per_token_group_quant_fp8
from fuseinfer.ops.quant.per_token_group_quant_int8 import reference_per_token_group_quant_int8
from fuseinfer.ops.quant.silu_and_mul_quant_fp8 import reference_silu_and_mul_quant_fp8


def _bits(q: torch.Tensor) -> torch.Tensor:
    return q.view(torch.uint8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows, k", [(1, 7168), (13, 2048), (300, 7168), (4096, 1536)])
@pytest.mark.parametrize("ue8m0, column_major", [(False, False), (True, True)])
def test_matches_the_reference_bit_for_bit(dtype, rows, k, ue8m0, column_major):
    x = (torch.randn(rows, k + 64, device="cuda") * 11).to(dtype)[:, :k]  # strided rows
    x[0, :128] = 0.0
    want_q, want_s = reference_per_token_group_quant_fp8(x, 128, ue8m0)
    got = []
    for pdl in (True, False):
        q, s = per_token_group_quant_fp8(x, 128, column_major_scales=column_major,
                                         scale_ue8m0=ue8m0, enable_pdl=pdl)
        got.append((q, s))
        assert torch.equal(s, want_s)
        assert torch.equal(_bits(q), _bits(want_q))
    if column_major:
        assert got[0][1].stride() == (1, rows)


@pytest.mark.parametrize("group", [32, 64, 256, 1024])
def test_group_sizes(group):
    x = torch.randn(37, 4096, device="cuda", dtype=torch.bfloat16) * 3
    q, s = per_token_group_quant_fp8(x, group)
    want_q, want_s = reference_per_token_group_quant_fp8(x, group)
    assert torch.equal(s, want_s) and torch.equal(_bits(q), _bits(want_q))


def test_replays_in_a_cuda_graph():
    x = torch.randn(64, 7168, device="cuda", dtype=torch.bfloat16)
    q = torch.empty(64, 7168, device="cuda", dtype=torch.float8_e4m3fn)
    s = torch.empty(64, 56, device="cuda")
    torch.ops.fuseinfer.per_token_group_quant_fp8(q, s, x, 128)  # compile outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        torch.ops.fuseinfer.per_token_group_quant_fp8(q, s, x, 128)
    x.copy_(torch.randn_like(x) * 5)
    s.fill_(float("nan"))
    graph.replay()
    want_q, want_s = reference_per_token_group_quant_fp8(x, 128)
    assert torch.equal(s, want_s) and torch.equal(_bits(q), _bits(want_q))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows, inner", [(1, 12288), (77, 3072), (2048, 18432)])
def test_fused_swiglu_quant_matches_the_reference(dtype, rows, inner):
    x = (torch.randn(rows, 2 * inner + 32, device="cuda") * 3).to(dtype)[:, :2 * inner]
    want_q, want_s = reference_silu_and_mul_quant_fp8(x, 128)
    outs = []
    for pdl in (True, False):
        q, s = silu_and_mul_quant_fp8(x, 128, column_major_scales=True, enable_pdl=pdl)
        outs.append(q)
        # the kernel's exp may differ from torch's in the last float32 bit: a value can
        # cross an fp8 rounding boundary (one e4m3 step), rarely
        torch.testing.assert_close(s, want_s, rtol=1e-6, atol=0.0)
        diff = (q.float() - want_q.float()).abs()
        assert (diff <= want_q.float().abs() * 2.0 ** -3 + 2.0 ** -9).all()
        assert (diff > 0).float().mean() < 1e-3
    assert torch.equal(_bits(outs[0]), _bits(outs[1]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows, hidden", [(1, 7168), (33, 4096), (4096, 2048), (7, 16384)])
def test_fused_norm_quant_matches_the_reference(dtype, rows, hidden):
    x = torch.randn(rows, hidden + 64, device="cuda").to(dtype)[:, :hidden]
    res0 = (torch.randn(rows, hidden, device="cuda") * 4).to(dtype)
    w = (1 + 0.3 * torch.randn(hidden, device="cuda")).to(dtype)
    want_q, want_s, want_res = reference_fused_add_rmsnorm_quant_fp8(x, res0, w, 128, 1e-6)
    outs = []
    for pdl in (True, False):
        res = res0.clone()
        q, s = fused_add_rmsnorm_quant_fp8(x, res, w, 128, 1e-6, column_major_scales=True,
                                           enable_pdl=pdl)
        outs.append(q)
        assert torch.equal(res, want_res)  # the add is rounded once, like the reference
        # the kernel's rsqrt and sum order differ from torch's in the last float32 bits
        torch.testing.assert_close(s, want_s, rtol=1e-5, atol=0.0)
        diff = (q.float() - want_q.float()).abs()
        assert (diff <= want_q.float().abs() * 2.0 ** -3 + 2.0 ** -9).all()
        assert (diff > 0).float().mean() < 1e-2
    assert torch.equal(_bits(outs[0]), _bits(outs[1]))


@pytest.mark.parametrize("rows, k", [(1, 7168), (300, 2048), (4096, 4096)])
def test_int8_matches_the_reference_bit_for_bit(rows, k):
    x = (torch.randn(rows, k, device="cuda") * 7).to(torch.bfloat16)
    want_q, want_s = reference_per_token_group_quant_int8(x, 128)
    q, s = per_token_group_quant_int8(x, 128, column_major_scales=True)
    assert torch.equal(s, want_s) and torch.equal(q, want_q)
