"""fp8_blockwise_grouped_mm and fused_moe's CUTLASS-path plumbing on the CPU: the op's
float32 reference against per-row math written here (each row looks its expert up and
multiplies by that expert's dequantized weight), rows no expert covers left alone, the
argument errors, the `moe` entry's grouped rules, and launch_fused_moe_grouped (sorting,
gathering, the weighted combine; its GEMMs on the CPU reference) under Triton's
interpreter."""

from __future__ import annotations

import os

import pytest
import torch

from fuseinfer.dispatch import TableError
from fuseinfer.dispatch.schema import parse_dataclass
from fuseinfer.ops import fp8_blockwise_grouped_mm
from fuseinfer.ops.moe.moe_dispatch import MOE_BUILTIN, MoeDispatch

FP8 = torch.float8_e4m3fn

needs_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="a GPU is present: the GPU suite runs these kernels natively")


def grouped_case(counts: list[int], n: int, k: int):
    """Rows sorted by expert (counts[e] rows for expert e, plus 3 spare rows at the end)."""
    e = len(counts)
    rows = sum(counts) + 3
    a_q = (4 * torch.randn(rows, k)).to(FP8)
    a_scales = (0.5 + torch.rand(rows, k // 128)) * 2.0 ** -4
    b_q = (4 * torch.randn(e, n, k)).to(FP8)
    b_scales = (0.5 + torch.rand(e, -(-n // 128), k // 128)) * 2.0 ** -4
    offsets = torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), dtype=torch.int32)
    return a_q, a_scales, b_q, b_scales, offsets


def per_row(a_q, a_scales, b_q, b_scales, offsets, row):
    """Row `row` of the product, found through its expert, in float64."""
    e = int(torch.searchsorted(offsets[1:], torch.tensor(row), right=True))
    n = b_q.shape[1]
    a = a_q[row].double() * a_scales[row].double().repeat_interleave(128)
    sb = b_scales[e].double().repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)
    return (b_q[e].double() * sb) @ a


@pytest.mark.parametrize("counts, n, k", [([3, 0, 5, 1], 136, 256), ([0, 7], 256, 128),
                                          ([2, 2, 2, 2, 2, 2], 8, 384)])
def test_grouped_mm_matches_per_row_math(counts, n, k):
    a_q, a_scales, b_q, b_scales, offsets = grouped_case(counts, n, k)
    out = torch.full((a_q.shape[0], n), float("nan"), dtype=torch.bfloat16)
    fp8_blockwise_grouped_mm(a_q, a_scales, b_q, b_scales, offsets, out=out)
    covered = int(offsets[-1])
    for row in range(covered):
        want = per_row(a_q, a_scales, b_q, b_scales, offsets, row)
        torch.testing.assert_close(out[row].double(), want, rtol=1e-2, atol=1e-2)
    assert torch.isnan(out[covered:].float()).all()  # rows no expert covers: untouched


def test_grouped_mm_errors_name_the_argument():
    a_q, a_scales, b_q, b_scales, offsets = grouped_case([2, 3], 128, 256)
    cases = [
        (dict(a_scales=a_scales.t().contiguous().t()), "a_scales"),  # M-major
        (dict(b_scales=b_scales[:, :, :1]), "b_scales"),
        (dict(expert_offsets=offsets.long()), "expert_offsets"),
        (dict(b_q=b_q[:, :, :128].contiguous()), "b_q"),
        (dict(config="sm90_nonexistent"), "config"),
    ]
    for change, name in cases:
        args = dict(a_q=a_q, a_scales=a_scales, b_q=b_q, b_scales=b_scales,
                    expert_offsets=offsets) | change
        with pytest.raises(ValueError, match=name):
            fp8_blockwise_grouped_mm(**args)


def test_grouped_mm_fake_gives_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    real = grouped_case([2, 3], 136, 256)
    with FakeTensorMode() as mode:
        out = fp8_blockwise_grouped_mm(*(mode.from_tensor(x) for x in real),
                                       out_dtype=torch.float16)
    assert out.shape == (8, 136) and out.dtype == torch.float16


def test_moe_entry_grouped_rules():
    entry = parse_entry({**_entry_json(), "fp8_backend": "cutlass", "fp8_grouped": [
        {"max_rows": 64, "config": "sm90_grouped_swap_128x32_c1x1"},
        {"max_rows": None, "config": "sm90_grouped_ping_64x128_c1x2"}]})
    assert entry.fp8_backend == "cutlass"
    assert entry.grouped_config(64) == "sm90_grouped_swap_128x32_c1x1"
    assert entry.grouped_config(65) == "sm90_grouped_ping_64x128_c1x2"
    assert entry.fp8_grouped_config(64) == "sm90_grouped_swap_128x32_c1x1"
    assert parse_entry(_entry_json()).fp8_backend == "triton"  # both fields may be left out
    assert parse_entry(_entry_json()).fp8_grouped_config(64) is None
    mixed = parse_entry({**_entry_json(), "fp8_backend": "cutlass", "fp8_grouped": [
        {"max_rows": 2048, "config": "triton"},
        {"max_rows": None, "config": "sm90_grouped_coop_128x128_c1x1"}]})
    assert mixed.fp8_grouped_config(2048) is None  # this bucket stays on Triton
    assert mixed.fp8_grouped_config(2049) == "sm90_grouped_coop_128x128_c1x1"
    bad = [({"fp8_backend": "cublas"}, "fp8_backend"),
           ({"fp8_grouped": [{"max_rows": 8, "config": "sm90_grouped_coop_128x128_c1x1"}]},
            "fp8_grouped"),
           ({"fp8_grouped": [{"max_rows": None, "config": "sm90_coop_128x128_c1x1"}]},
            "config")]
    for change, where in bad:
        with pytest.raises(TableError, match=where):
            parse_entry({**_entry_json(), **change})


def parse_entry(data: dict) -> MoeDispatch:
    return parse_dataclass(MoeDispatch, data, "moe")


def _entry_json() -> dict:
    rule = {"max_tokens": None, "block_m": 16, "block_n": 64, "block_k": 64, "group_m": 1,
            "num_warps": 4, "num_stages": 3}
    return {"source": "test", "enable_pdl": True, "rules": [rule], "fp8_rules": [rule]}


@needs_interpreter
@pytest.mark.parametrize("t, e, k", [(5, 4, 2), (17, 6, 3)])
def test_fused_moe_grouped_path_interpreted(t, e, k):
    from test_ops_moe_cpu import fp8_weights, random_moe, rel_err  # same folder

    from fuseinfer.ops.moe.fused_moe import launch_fused_moe_grouped, reference_fused_moe

    h, inner = 128, 256
    hidden, w13, w2, weights, ids = random_moe(t, h, inner, e, k, torch.bfloat16)
    ids[0, 0] = -1  # masked slot
    ids[1, -1] = e  # a slot a shared expert takes
    q13, s13 = fp8_weights(w13.float())
    q2, s2 = fp8_weights(w2.float())
    out = torch.full((t, h), float("nan"), dtype=torch.bfloat16)
    launch_fused_moe_grouped(out, hidden, q13, q2, weights, ids, s13, s2,
                             MOE_BUILTIN.grouped_config(t * k), pdl=False)
    want = reference_fused_moe(hidden, q13, q2, weights, ids, "fp8_block", s13, s2)
    # gate_up and each slot's row are bf16 here (the reference keeps float32)
    assert rel_err(out, want) < 2e-2
