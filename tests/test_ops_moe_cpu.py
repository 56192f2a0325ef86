"""fused_moe and moe_align_block_size on the CPU: the float32 references against float64
math written here (a per-token loop over the routed experts), the argument errors, the fake
impls, and the Triton kernels run by Triton's interpreter against the references."""

from __future__ import annotations

import os

import pytest
import torch

from fuseinfer.ops import fused_moe, moe_align_block_size
from fuseinfer.ops.moe.fused_moe import dequantize_block_weights, reference_fused_moe
from fuseinfer.ops.moe.moe_align_block_size import launch_moe_align_block_size, max_padded_rows

needs_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="a GPU is present: the GPU suite runs these kernels natively")

FP8 = torch.float8_e4m3fn


def float64_moe(hidden, w13, w2, weights, ids):
    """out[t] = sum_j w[t, j] * w2[e] @ (silu(gate) * up), token by token, in float64.
    Ids outside [0, E) contribute nothing."""
    t_count, h = hidden.shape
    e_count, inner = w13.shape[0], w2.shape[2]
    out = torch.zeros(t_count, h, dtype=torch.float64)
    for t in range(t_count):
        x = hidden[t].double()
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            if not 0 <= e < e_count:
                continue
            gate_up = w13[e].double() @ x
            gate, up = gate_up[:inner], gate_up[inner:]
            act = gate / (1.0 + torch.exp(-gate)) * up
            out[t] += float(weights[t, j]) * (w2[e].double() @ act)
    return out


def random_moe(t, h, inner, e, k, dtype=torch.float32):
    hidden = torch.randn(t, h).to(dtype)
    w13 = (torch.randn(e, 2 * inner, h) / h ** 0.5).to(dtype)
    w2 = (torch.randn(e, h, inner) / inner ** 0.5).to(dtype)
    ids = torch.stack([torch.randperm(e)[:k] for _ in range(t)]).to(torch.int32) \
        if t else torch.empty(0, k, dtype=torch.int32)
    weights = torch.rand(t, k, dtype=torch.float32)
    return hidden, w13, w2, weights, ids


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    assert not torch.isnan(got).any()
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def test_reference_matches_float64_loop():
    hidden, w13, w2, weights, ids = random_moe(9, 64, 48, 6, 2, torch.float64)
    ids[3, 1] = -1   # masked slot
    ids[5, 0] = 6    # "shared expert" slot: outside [0, E)
    got = reference_fused_moe(hidden, w13, w2, weights, ids)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), float64_moe(hidden, w13, w2, weights, ids),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_op_on_cpu_matches_float64(dtype):
    hidden, w13, w2, weights, ids = random_moe(7, 64, 32, 4, 2, dtype)
    out = fused_moe(hidden, w13, w2, weights, ids)
    assert out.dtype == dtype and out.shape == (7, 64)
    want = float64_moe(hidden, w13, w2, weights, ids)
    assert rel_err(out, want) < (1e-2 if dtype == torch.bfloat16 else 1e-6)


def fp8_weights(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise FP8 of w [E, N, K]: (q, scales [E, ceil(N/128), K/128]), in plain torch."""
    e, n, k = w.shape
    nb = -(-n // 128)
    padded = torch.zeros(e, nb * 128, k)
    padded[:, :n] = w.float()
    blocks = padded.view(e, nb, 128, k // 128, 128)
    scales = blocks.abs().amax(dim=(2, 4)).clamp_min(1e-10) / 448.0
    q = (blocks / scales[:, :, None, :, None]).view(e, nb * 128, k)[:, :n].to(FP8)
    return q, scales


def test_fp8_reference_is_close_to_the_unquantized_math():
    hidden, w13, w2, weights, ids = random_moe(5, 128, 128, 4, 2)
    w13_q, s13 = fp8_weights(w13)
    w2_q, s2 = fp8_weights(w2)
    got = fused_moe(hidden, w13_q, w2_q, weights, ids, quant="fp8_block",
                    w13_scales=s13, w2_scales=s2)
    # against float64 math on the dequantized weights: only the activation rounding left
    want = float64_moe(hidden, dequantize_block_weights(w13_q, s13),
                       dequantize_block_weights(w2_q, s2), weights, ids)
    assert rel_err(got, want) < 0.06
    assert rel_err(got, float64_moe(hidden, w13, w2, weights, ids)) < 0.1


def test_fused_moe_errors_name_the_argument():
    hidden, w13, w2, weights, ids = random_moe(3, 64, 32, 4, 2)
    with pytest.raises(ValueError, match="fused_moe: w13 must be"):
        fused_moe(hidden, w13[:, :, :32], w2, weights, ids)
    with pytest.raises(ValueError, match="fused_moe: w2 must be"):
        fused_moe(hidden, w13, w2[:, :, :16], weights, ids)
    with pytest.raises(ValueError, match="fused_moe: topk_ids must be"):
        fused_moe(hidden, w13, w2, weights, ids.float())
    with pytest.raises(ValueError, match="fused_moe: topk_weights must be"):
        fused_moe(hidden, w13, w2, weights.half(), ids)
    with pytest.raises(ValueError, match="fused_moe: activation must be"):
        fused_moe(hidden, w13, w2, weights, ids, activation="gelu")
    with pytest.raises(ValueError, match="fused_moe: quant must be"):
        fused_moe(hidden, w13, w2, weights, ids, quant="int8")
    with pytest.raises(ValueError, match="fused_moe: w13 must be torch.float8_e4m3fn"):
        fused_moe(hidden, w13, w2, weights, ids, quant="fp8_block")
    with pytest.raises(ValueError, match="fused_moe: out must be"):
        fused_moe(hidden, w13, w2, weights, ids, out=torch.empty(3, 64, dtype=torch.half))
    h128, w13b, w2b, wb, idb = random_moe(3, 128, 128, 4, 2)
    q13, s13 = fp8_weights(w13b)
    q2, s2 = fp8_weights(w2b)
    with pytest.raises(ValueError, match="fused_moe: w2_scales is required"):
        fused_moe(h128, q13, q2, wb, idb, quant="fp8_block", w13_scales=s13)
    with pytest.raises(ValueError, match="fused_moe: w13_scales must be float32"):
        fused_moe(h128, q13, q2, wb, idb, quant="fp8_block", w13_scales=s13[:, :1],
                  w2_scales=s2)
    with pytest.raises(ValueError, match="fused_moe: a_group_size must be 128"):
        fused_moe(h128, q13, q2, wb, idb, quant="fp8_block", w13_scales=s13, w2_scales=s2,
                  a_group_size=64)


def test_fused_moe_fake_gives_shapes():
    meta = dict(device="meta")
    out = fused_moe(torch.empty(5, 64, dtype=torch.bfloat16, **meta),
                    torch.empty(8, 96, 64, dtype=torch.bfloat16, **meta),
                    torch.empty(8, 64, 48, dtype=torch.bfloat16, **meta),
                    torch.empty(5, 2, **meta), torch.empty(5, 2, dtype=torch.int32, **meta))
    assert out.shape == (5, 64) and out.dtype == torch.bfloat16 and out.device.type == "meta"



def test_moe_ops_trace_under_torch_compile():
    def moe(hidden, w13, w2, weights, ids):
        return (fused_moe(hidden, w13, w2, weights, ids),
                *moe_align_block_size(ids, w13.shape[0], 16))

    args = random_moe(6, 64, 32, 4, 2)
    got = torch.compile(moe, fullgraph=True, backend="aot_eager")(*args)
    for a, b in zip(got, moe(*args), strict=True):
        assert torch.equal(a, b)

# --- moe_align_block_size -------------------------------------------------------------

def expected_alignment(ids: torch.Tensor, e_count: int, block: int):
    """Built from the definition: segments by expert, rows ascending, padded per expert."""
    flat = ids.reshape(-1).tolist()
    rows = len(flat)
    sorted_ids: list[int] = []
    expert_ids: list[int] = []
    for e in range(e_count):
        mine = [r for r, x in enumerate(flat) if x == e]
        if not mine:
            continue
        padded = -(-len(mine) // block) * block
        sorted_ids += mine + [rows] * (padded - len(mine))
        expert_ids += [e] * (padded // block)
    return sorted_ids, expert_ids, rows + e_count * (block - 1)


def check_alignment(outs, ids, e_count, block):
    sorted_ids, expert_ids, total = outs
    want_sorted, want_experts, capacity = expected_alignment(ids, e_count, block)
    assert sorted_ids.dtype == expert_ids.dtype == total.dtype == torch.int32
    assert sorted_ids.shape == (capacity,) and expert_ids.shape == (capacity // block,)
    n = len(want_sorted)
    assert int(total[0]) == n and n % block == 0
    assert sorted_ids[:n].tolist() == want_sorted
    assert (sorted_ids[n:] == ids.numel()).all()  # the sentinel after the last segment
    assert expert_ids[:n // block].tolist() == want_experts
    assert (expert_ids[n // block:] == -1).all()


@pytest.mark.parametrize("t, k, e, block", [(5, 2, 4, 4), (33, 4, 8, 16), (1, 1, 3, 1),
                                            (0, 2, 4, 16), (64, 8, 6, 64)])
def test_align_matches_the_definition(t, k, e, block):
    ids = torch.randint(0, e, (t, k), dtype=torch.int32)
    check_alignment(moe_align_block_size(ids, e, block), ids, e, block)


def test_align_drops_ids_outside_the_experts_and_is_stable():
    ids = torch.tensor([[2, -1], [0, 2], [4, 2], [0, 0]], dtype=torch.int32)  # E = 4
    sorted_ids, expert_ids, total = moe_align_block_size(ids, 4, 2)
    # expert 0: rows 2, 6, 7 (+1 pad); expert 2: rows 0, 3, 5 (+1 pad); -1 and 4 dropped
    assert int(total[0]) == 8
    assert sorted_ids[:8].tolist() == [2, 6, 7, 8, 0, 3, 5, 8]
    assert expert_ids[:4].tolist() == [0, 0, 2, 2]
    check_alignment((sorted_ids, expert_ids, total), ids, 4, 2)


def test_align_errors_and_meta():
    with pytest.raises(ValueError, match="moe_align_block_size: topk_ids must be int32"):
        moe_align_block_size(torch.zeros(3, 2), 4, 16)
    with pytest.raises(ValueError, match="moe_align_block_size: num_experts must be"):
        moe_align_block_size(torch.zeros(3, 2, dtype=torch.int32), 0, 16)
    with pytest.raises(ValueError, match="moe_align_block_size: sorted_token_ids must be"):
        torch.ops.fuseinfer.moe_align_block_size(
            torch.empty(5, dtype=torch.int32), torch.empty(2, dtype=torch.int32),
            torch.empty(1, dtype=torch.int32), torch.zeros(3, 2, dtype=torch.int32), 4, 16)
    s, x, n = moe_align_block_size(torch.empty(7, 2, dtype=torch.int32, device="meta"), 8, 16)
    assert s.shape == (14 + 8 * 15,) and x.shape == ((14 + 8 * 15) // 16,) and n.shape == (1,)
    assert s.device.type == "meta"


@needs_interpreter
@pytest.mark.parametrize("t, k, e, block", [(5, 2, 4, 4), (70, 4, 8, 16), (1, 1, 5, 16),
                                            (0, 2, 4, 16), (600, 2, 3, 8)])
def test_align_kernels_interpreted(t, k, e, block):
    ids = torch.randint(-1, e + 1, (t, k), dtype=torch.int32)  # some -1 and E slots
    capacity = max_padded_rows(t * k, e, block)
    outs = (torch.full((capacity,), -7, dtype=torch.int32),  # poisoned
            torch.full((capacity // block,), -7, dtype=torch.int32),
            torch.full((1,), -7, dtype=torch.int32))
    launch_moe_align_block_size(*outs, ids, e, block, pdl=False)
    check_alignment(outs, ids, e, block)


# --- fused_moe's Triton kernels under the interpreter ---------------------------------

@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("t, h, inner, e, k, block", [(3, 64, 64, 4, 2, (16, 32, 32)),
                                                      (19, 96, 80, 6, 3, (16, 64, 32)),
                                                      (40, 128, 64, 8, 2, (32, 64, 64)),
                                                      (1, 64, 64, 5, 1, (16, 16, 16))])
def test_fused_moe_kernels_interpreted(t, h, inner, e, k, block, dtype):
    from fuseinfer.ops.moe.fused_moe import launch_fused_moe
    from fuseinfer.ops.moe.moe_dispatch import MoeLaunchRule
    hidden, w13, w2, weights, ids = random_moe(t, h, inner, e, k, dtype)
    if t > 2:
        ids[1, 0] = -1      # masked slot
        ids[2, -1] = e      # a slot some other path (a shared expert) takes
    out = torch.full((t, h), float("nan"), dtype=dtype)
    rule = MoeLaunchRule(None, *block, group_m=2, num_warps=4, num_stages=2)
    launch_fused_moe(out, hidden, w13, w2, weights, ids, None, None, None, rule, pdl=False)
    want = reference_fused_moe(hidden, w13, w2, weights, ids)
    if dtype == torch.float32:
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    else:
        # gate_up, the activation and each slot's row are bf16 (and the interpreter rounds
        # to bf16 by truncation)
        assert rel_err(out, want) < 1.5e-2
        torch.testing.assert_close(out.float(), want, rtol=5e-2, atol=5e-2)


@needs_interpreter
@pytest.mark.parametrize("t, e, k, block", [(5, 4, 2, (16, 64, 128)),
                                            (23, 6, 3, (32, 128, 64))])
def test_fused_moe_fp8_kernels_interpreted(t, e, k, block):
    from fuseinfer.ops.moe.fused_moe import launch_fused_moe
    from fuseinfer.ops.moe.moe_dispatch import MoeLaunchRule
    # float32 hidden: every intermediate stays fp32, so the kernels see the reference's
    # exact activations (the interpreter rounds fp32 -> bf16 by truncation; a GPU does not)
    h, inner = 128, 128 if t < 10 else 256
    hidden, w13, w2, weights, ids = random_moe(t, h, inner, e, k)
    ids[0, 0] = -1
    q13, s13 = fp8_weights(w13)
    q2, s2 = fp8_weights(w2)
    out = torch.full((t, h), float("nan"))
    rule = MoeLaunchRule(None, *block, group_m=1, num_warps=4, num_stages=2)
    launch_fused_moe(out, hidden, q13, q2, weights, ids, "fp8_block", s13, s2, rule,
                     pdl=False)
    want = reference_fused_moe(hidden, q13, q2, weights, ids, "fp8_block", s13, s2)
    assert rel_err(out, want) < 1e-4


# --- the `moe` dispatch entry ---------------------------------------------------------

def test_moe_entry_rules_and_validation(tmp_path):
    import json

    from fuseinfer.dispatch import GpuIdentity, TableError, lookup
    from fuseinfer.dispatch.schema import to_json
    from fuseinfer.ops.moe.moe_dispatch import MOE_BUILTIN

    assert MOE_BUILTIN.rule(1, None).block_m == 16
    assert MOE_BUILTIN.rule(10_000, None).max_tokens is None
    assert MOE_BUILTIN.rule(4, "fp8_block") in MOE_BUILTIN.fp8_rules
    entry = to_json(MOE_BUILTIN)
    entry["rules"][0]["block_k"] = 256  # past the 128 a k step may span
    (tmp_path / "h200.json").write_text(json.dumps({"key": "h200", "ops": {"moe": entry}}))
    h200 = GpuIdentity(name="NVIDIA H200", sm_count=132, major=9, minor=0,
                       memory_bytes=141 << 30)
    with pytest.raises(TableError, match=r"moe.rules\[0\].block_k"):
        lookup("moe", h200, tmp_path)
    entry = to_json(MOE_BUILTIN)
    entry["fp8_rules"][-1]["max_tokens"] = 64
    (tmp_path / "h200.json").write_text(json.dumps({"key": "h200", "ops": {"moe": entry}}))
    with pytest.raises(TableError, match="last rule must have max_tokens null"):
        lookup("moe", h200, tmp_path)
    entry = to_json(MOE_BUILTIN)
    entry["rules"][0]["block_m"] = 32
    (tmp_path / "h200.json").write_text(json.dumps({"key": "h200", "ops": {"moe": entry}}))
    assert lookup("moe", h200, tmp_path).entry.rule(1, None).block_m == 32


def test_moe_builtin_fallback_warns_once_naming_the_gpu_key(monkeypatch, tmp_path):
    import warnings

    import fuseinfer.dispatch as dispatch
    from fuseinfer.dispatch import GpuIdentity
    from fuseinfer.ops.moe import moe_dispatch

    h20 = GpuIdentity(name="NVIDIA H20", sm_count=78, major=9, minor=0, memory_bytes=96 << 30)
    monkeypatch.setattr(dispatch, "current_identity", lambda device=None: h20)
    monkeypatch.setattr(dispatch, "lookup",
                        lambda op, ident: dispatch.tables.lookup(op, ident, tmp_path))
    monkeypatch.setattr(moe_dispatch, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert moe_dispatch.effective(0) is moe_dispatch.MOE_BUILTIN
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "'h20'" in messages[0] and "moe" in messages[0]
