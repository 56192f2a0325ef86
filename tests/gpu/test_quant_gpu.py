"""The quant family on the GPU against the float32 references (checked against float64 in
the CPU suite). per_token_group_quant_fp8 and its int8 twin bit for bit over model shapes,
dtypes, group sizes, strided rows, power-of-two and M-major scales (padded column stride,
padding never written); PDL on and off give the same bits; it replays inside a CUDA graph.
The C++ group kernel (csrc/quant) in both builds: precise bit for bit; --use_fast_math
within one ulp of the scale and one e4m3 step of a value (its division is approximate).
The public op follows the dispatch table and falls back to Triton for misaligned rows.
per_token_quant_fp8 and per_tensor_quant_fp8 (dynamic and static) bit for bit. The fused
producers match within one e4m3 step (their exp / rsqrt differ from torch's in the last
float32 bit)."""

from __future__ import annotations

import pytest
import torch

from fuseinfer.ops import (
    fused_add_rmsnorm_quant_fp8,
    per_tensor_quant_fp8,
    per_token_group_quant_fp8,
    per_token_group_quant_int8,
    per_token_quant_fp8,
    silu_and_mul_quant_fp8,
)
from fuseinfer.ops.quant.fused_add_rmsnorm_quant_fp8 import (
    reference_fused_add_rmsnorm_quant_fp8,
)
from fuseinfer.ops.quant.group_quant_cuda import fast_math_choice
from fuseinfer.ops.quant.per_tensor_quant_fp8 import reference_per_tensor_quant_fp8
from fuseinfer.ops.quant.per_token_group_quant_fp8 import reference_per_token_group_quant_fp8
from fuseinfer.ops.quant.per_token_group_quant_int8 import reference_per_token_group_quant_int8
from fuseinfer.ops.quant.per_token_quant_fp8 import reference_per_token_quant_fp8
from fuseinfer.ops.quant.silu_and_mul_quant_fp8 import reference_silu_and_mul_quant_fp8


def _bits(q: torch.Tensor) -> torch.Tensor:
    return q.view(torch.uint8)


def _assert_values(q: torch.Tensor, want_q: torch.Tensor, x: torch.Tensor) -> None:
    """The public op's values: the reference's bits where the device's table runs the
    precise CUDA kernel or the Triton one, one e4m3 step at most where it runs fast math."""
    if fast_math_choice(q, x):
        _assert_one_step_at_most(q, want_q)
    else:
        assert torch.equal(_bits(q), _bits(want_q))


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
        _assert_values(q, want_q, x)
    if column_major:
        assert got[0][1].stride() == (1, -(-rows // 4) * 4)


@pytest.mark.parametrize("group", [32, 64, 256, 1024])
def test_group_sizes(group):
    x = torch.randn(37, 4096, device="cuda", dtype=torch.bfloat16) * 3
    q, s = per_token_group_quant_fp8(x, group)
    want_q, want_s = reference_per_token_group_quant_fp8(x, group)
    assert torch.equal(s, want_s)
    _assert_values(q, want_q, x)


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
    assert torch.equal(s, want_s)
    _assert_values(q, want_q, x)


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


# ---- the C++ group kernel (csrc/quant), precise and fast-math builds --------------------

def _cuda_group_quant(x: torch.Tensor, group: int, ue8m0: bool, column_major: bool,
                      fast_math: bool, pdl: bool | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, scales, the scales' whole storage) from the C++ kernel, outputs poisoned."""
    rows, k = x.shape
    q = torch.full((rows, k), float("nan"), device="cuda").to(torch.float8_e4m3fn)
    pad = -(-rows // 4) * 4
    storage = torch.full((k // group, pad) if column_major else (rows, k // group),
                         float("nan"), device="cuda")
    scales = storage[:, :rows].t() if column_major else storage
    torch.ops.fuseinfer._per_token_group_quant_fp8_cuda(q, scales, x, group, ue8m0, pdl,
                                                        fast_math)
    return q, scales, storage


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("group", [16, 32, 64, 128, 256, 512, 1024])
@pytest.mark.parametrize("rows", [1, 7, 301, 9001])  # 9001: a grid of thousands of blocks
def test_cuda_precise_matches_the_reference_bit_for_bit(dtype, group, rows):
    k = 4 * max(group, 256)
    x = (torch.randn(rows, k + 64, device="cuda") * 11).to(dtype)[:, :k]  # strided rows
    x[0, :group] = 0.0
    for ue8m0, column_major in ((False, False), (True, True), (False, True)):
        want_q, want_s = reference_per_token_group_quant_fp8(x, group, ue8m0)
        q, s, storage = _cuda_group_quant(x, group, ue8m0, column_major, fast_math=False)
        assert torch.equal(s, want_s), (ue8m0, column_major)
        assert torch.equal(_bits(q), _bits(want_q)), (ue8m0, column_major)
        if column_major:  # the padding rows of the M-major scales are never written
            assert storage[:, rows:].isnan().all()


@pytest.mark.parametrize("rows", [5, 9001])
def test_cuda_precise_an_infinite_input_poisons_only_its_group(rows):
    # The group's scale turns infinite: its finite values quantize to 0 and the infinity to
    # NaN (inf / inf), as in the reference; every other group is untouched.
    x = (torch.randn(rows, 4096, device="cuda") * 5).to(torch.bfloat16)
    x[rows // 2, 130] = float("inf")
    want_q, want_s = reference_per_token_group_quant_fp8(x, 128)
    q, s, _ = _cuda_group_quant(x, 128, False, False, fast_math=False)
    assert torch.equal(s, want_s) and torch.isinf(s[rows // 2, 1])
    bad = q[rows // 2, 128:256].float()
    assert bad[2].isnan() and (bad[:2] == 0).all() and (bad[3:] == 0).all()
    q[rows // 2, 128:256] = 0
    want_q[rows // 2, 128:256] = 0
    assert torch.equal(_bits(q), _bits(want_q))


def _assert_one_step_at_most(q: torch.Tensor, want_q: torch.Tensor) -> None:
    """Fast-math values: each the reference's or its e4m3 neighbour, and rarely not equal."""
    diff = (q.double() - want_q.double()).abs()
    assert not q.float().isnan().any()
    assert (diff <= want_q.double().abs() * 2.0 ** -3 + 2.0 ** -9).all()
    assert (diff > 0).double().mean() < 1e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("group", [32, 128, 1024])
@pytest.mark.parametrize("ue8m0", [False, True])
def test_cuda_fast_math_has_exact_scales_and_values_one_step_at_most(dtype, group, ue8m0):
    # --use_fast_math approximates each value's division by its scale; the scale itself is
    # an IEEE division in both builds, so the scales (UE8M0 too) are the reference's bits.
    x = (torch.randn(523, 7168, device="cuda") * 11).to(dtype)
    want_q, want_s = reference_per_token_group_quant_fp8(x, group, ue8m0)
    q, s, _ = _cuda_group_quant(x, group, ue8m0, False, fast_math=True)
    assert torch.equal(s, want_s)
    _assert_one_step_at_most(q, want_q)


@pytest.mark.parametrize("fast_math", [False, True])
def test_cuda_pdl_on_and_off_give_the_same_bits(fast_math):
    x = torch.randn(1000, 5120, device="cuda", dtype=torch.bfloat16) * 4
    on = _cuda_group_quant(x, 128, False, True, fast_math, pdl=True)
    off = _cuda_group_quant(x, 128, False, True, fast_math, pdl=False)
    assert torch.equal(on[1], off[1]) and torch.equal(_bits(on[0]), _bits(off[0]))


def test_cuda_kernel_replays_in_a_cuda_graph():
    x = torch.randn(96, 18432, device="cuda", dtype=torch.bfloat16)
    q = torch.empty(96, 18432, device="cuda", dtype=torch.float8_e4m3fn)
    s = torch.empty(144, 96, device="cuda").t()
    op = torch.ops.fuseinfer._per_token_group_quant_fp8_cuda
    op(q, s, x, 128, False, None, False)  # build and load outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        op(q, s, x, 128, False, None, False)
    x.copy_(torch.randn_like(x) * 5)
    s.fill_(float("nan"))
    graph.replay()
    want_q, want_s = reference_per_token_group_quant_fp8(x, 128)
    assert torch.equal(s, want_s) and torch.equal(_bits(q), _bits(want_q))


def test_cuda_kernel_refuses_misaligned_rows():
    x = torch.randn(4, 264, device="cuda", dtype=torch.bfloat16)[:, 4:260]
    q = torch.empty(4, 256, device="cuda", dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="_per_token_group_quant_fp8_cuda: input"):
        torch.ops.fuseinfer._per_token_group_quant_fp8_cuda(
            q, torch.empty(4, 2, device="cuda"), x, 128, False, None, False)


def _kernel_names(fn) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if "CUDA" in str(e.device_type)]


def test_public_op_follows_the_table_and_falls_back_to_triton(monkeypatch):
    from fuseinfer.ops.quant import group_quant_cuda
    from fuseinfer.ops.quant.dispatch import QuantDispatch

    x = torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16)
    per_token_group_quant_fp8(x, 128)  # load both paths before profiling
    monkeypatch.setattr(group_quant_cuda, "effective",
                        lambda device: QuantDispatch("test", "cuda", False))
    names = _kernel_names(lambda: per_token_group_quant_fp8(x, 128))
    assert any("group_quant_fp8_kernel" in n and "precise" in n for n in names), names
    monkeypatch.setattr(group_quant_cuda, "effective",
                        lambda device: QuantDispatch("test", "cuda", True))
    names = _kernel_names(lambda: per_token_group_quant_fp8(x, 128))
    assert any("group_quant_fp8_kernel" in n and "fast_math" in n for n in names), names
    monkeypatch.setattr(group_quant_cuda, "effective",
                        lambda device: QuantDispatch("test", "triton", False))
    names = _kernel_names(lambda: per_token_group_quant_fp8(x, 128))
    assert any("per_token_group_quant_kernel" in n for n in names), names
    monkeypatch.undo()
    # rows starting 8 bytes off a 16-byte boundary: Triton, still exact
    odd = torch.randn(64, 4096 + 8, device="cuda", dtype=torch.bfloat16)[:, 4:4100]
    names = _kernel_names(lambda: per_token_group_quant_fp8(odd, 128))
    assert any("per_token_group_quant_kernel" in n for n in names), names
    q, s = per_token_group_quant_fp8(odd, 128)
    want_q, want_s = reference_per_token_group_quant_fp8(odd, 128)
    assert torch.equal(s, want_s) and torch.equal(_bits(q), _bits(want_q))


# ---- per_token_quant_fp8 and per_tensor_quant_fp8 ---------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows, k", [(1, 7168), (77, 18432), (4096, 2048), (5, 100)])
def test_per_token_matches_the_reference_bit_for_bit(dtype, rows, k):
    x = (torch.randn(rows, k + 32, device="cuda") * 9).to(dtype)[:, :k]
    x[0] = 0.0
    want_q, want_s = reference_per_token_quant_fp8(x)
    for pdl in (True, False):
        q, s = per_token_quant_fp8(x, enable_pdl=pdl)
        assert torch.equal(s, want_s) and torch.equal(_bits(q), _bits(want_q))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows, k", [(1, 7168), (300, 5120), (8192, 4096), (3, 100)])
def test_per_tensor_matches_the_reference_bit_for_bit(dtype, rows, k):
    x = (torch.randn(rows, k + 32, device="cuda") * 9).to(dtype)[:, :k]
    want_q, want_s = reference_per_tensor_quant_fp8(x)
    for pdl in (True, False):
        q, s = per_tensor_quant_fp8(x, enable_pdl=pdl)
        assert torch.equal(s, want_s) and torch.equal(_bits(q), _bits(want_q))
    given = torch.tensor([0.015], device="cuda")
    q, s = per_tensor_quant_fp8(x, given)
    want_q, _ = reference_per_tensor_quant_fp8(x, given)
    assert s is given and torch.equal(_bits(q), _bits(want_q))


def test_dynamic_per_tensor_replays_in_a_cuda_graph():
    x = torch.randn(512, 7168, device="cuda", dtype=torch.bfloat16)
    q = torch.empty(512, 7168, device="cuda", dtype=torch.float8_e4m3fn)
    s = torch.empty(1, device="cuda")
    torch.ops.fuseinfer.per_tensor_quant_fp8(q, s, x)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        torch.ops.fuseinfer.per_tensor_quant_fp8(q, s, x)
    # a larger amax than at capture: the scale is reduced on the device at every replay
    x.copy_(torch.randn_like(x) * 13)
    s.fill_(float("nan"))
    graph.replay()
    want_q, want_s = reference_per_tensor_quant_fp8(x)
    assert torch.equal(s, want_s) and torch.equal(_bits(q), _bits(want_q))
