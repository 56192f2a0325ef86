"""fused_moe and moe_align_block_size on the CPU: the float32 references against float64
math written here (a per-token loop over the routed experts), the argument errors, the fake
impls, and the Triton kernels run by Triton's interpreter against the references."""

from __future__ import annotations

import os

import pytest
import torch

from fuseinfer.ops import fused_moe
from fuseinfer.ops.moe.fused_moe import reference_fused_moe

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
    from fuseinfer.ops.moe.fused_moe import dequantize_block_weights
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
