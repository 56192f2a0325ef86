"""fused_moe's GPT-OSS features on the CPU: quant="mxfp4" (W4A16), expert biases and the
clamped SwiGLU. The op (its CPU reference) and the Triton kernels under the interpreter are
checked against float64 math written here token by token, with weights dequantized from
fp4_format's primitives (the E2M1 table, the nibble order, E8M0); the in-kernel E2M1/E8M0
decode is checked bit-exact over every byte and scale; argument errors name the argument;
the `moe` entry's mxfp4 rules validate."""

from __future__ import annotations

import os

import pytest
import torch
import triton
import triton.language as tl

import fuseinfer  # noqa: F401  (registers the ops)
from fuseinfer.ops import fused_moe
from fuseinfer.ops.quant.fp4_format import e2m1_table, e8m0_to_float, unpack_nibbles
from fuseinfer.triton.mxfp4 import mxfp4_tile

needs_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="a GPU is present: the GPU suite runs these kernels natively")

ALPHA, LIMIT = 1.702, 7.0


def dequant64(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """[N, K/2] bytes, [N, K/32] E8M0 -> [N, K] float64: low nibble first, 32 per scale."""
    codes = unpack_nibbles(packed)
    assert torch.equal(codes[:, 0], packed[:, 0] & 15)  # the even element: the low nibble
    values = e2m1_table()[codes.long()].double()
    n, k = values.shape
    return (values.view(n, k // 32, 32) * e8m0_to_float(scales).double()[:, :, None]).view(n, k)


def float64_moe(hidden, w13, w2, weights, ids, *, s13=None, s2=None, b13=None, b2=None,
                activation="silu", alpha=ALPHA, limit=LIMIT):
    """out[t] = sum_j w[t, j] * (w2[e] @ act(w13[e] @ x + b13[e]) + b2[e]), token by token."""
    t_count, h = hidden.shape
    e_count = w13.shape[0]
    out = torch.zeros(t_count, h, dtype=torch.float64)
    for t in range(t_count):
        x = hidden[t].double()
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            if not 0 <= e < e_count:
                continue
            a13 = dequant64(w13[e], s13[e]) if s13 is not None else w13[e].double()
            a2 = dequant64(w2[e], s2[e]) if s2 is not None else w2[e].double()
            gate_up = a13 @ x
            if b13 is not None:
                gate_up = gate_up + b13[e].double()
            inner = gate_up.shape[0] // 2
            gate, up = gate_up[:inner], gate_up[inner:]
            if activation == "clamped_swiglu":
                g = torch.minimum(gate, torch.tensor(limit, dtype=torch.float64))
                u = up.clamp(-limit, limit)
                act = (u + 1) * g / (1 + torch.exp(-alpha * g))
            else:
                act = gate / (1 + torch.exp(-gate)) * up
            y = a2 @ act
            if b2 is not None:
                y = y + b2[e].double()
            out[t] += float(weights[t, j]) * y
    return out


def mxfp4_moe(t, h, inner, e, k, dtype=torch.float32, bias_dtype=torch.float32):
    """Fresh random MXFP4 experts (every code byte, scales 118..122: weights ~ 1/sqrt(H)),
    biases, routing with a masked slot and a slot for an expert outside [0, E)."""
    hidden = torch.randn(t, h).to(dtype)
    w13 = torch.randint(0, 256, (e, 2 * inner, h // 2), dtype=torch.uint8)
    s13 = torch.randint(118, 123, (e, 2 * inner, h // 32), dtype=torch.uint8)
    w2 = torch.randint(0, 256, (e, h, inner // 2), dtype=torch.uint8)
    s2 = torch.randint(118, 123, (e, h, inner // 32), dtype=torch.uint8)
    b13 = torch.randn(e, 2 * inner).to(bias_dtype)
    b2 = (0.5 * torch.randn(e, h)).to(bias_dtype)
    ids = torch.stack([torch.randperm(e)[:k] for _ in range(t)]).to(torch.int32)
    if t > 2:
        ids[1, 0] = -1
        ids[2, -1] = e
    weights = torch.rand(t, k)
    return hidden, w13, s13, w2, s2, b13, b2, weights, ids


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    assert not torch.isnan(got).any()
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def test_fp4_format_nibble_order_and_values():
    packed = torch.tensor([[0x2F, 0x71]], dtype=torch.uint8)  # lo 0xF, hi 0x2; lo 1, hi 7
    scales = torch.tensor([[128]], dtype=torch.uint8)
    got = dequant64(torch.cat([packed, torch.zeros(1, 14, dtype=torch.uint8)], 1), scales)
    assert got[0, :4].tolist() == [-12.0, 2.0, 1.0, 12.0]  # x 2^(128-127)
    assert (got[0, 4:] == 0).all()


@pytest.mark.parametrize("activation", ["silu", "clamped_swiglu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mxfp4_op_on_cpu_matches_float64(activation, dtype):
    hidden, w13, s13, w2, s2, b13, b2, weights, ids = mxfp4_moe(9, 96, 64, 6, 3, dtype)
    out = torch.full((9, 96), float("nan"), dtype=dtype)  # poisoned
    got = fused_moe(hidden, w13, w2, weights, ids, activation=activation, quant="mxfp4",
                    w13_scales=s13, w2_scales=s2, w13_bias=b13, w2_bias=b2, out=out)
    assert got is out and out.dtype == dtype
    want = float64_moe(hidden, w13, w2, weights, ids, s13=s13, s2=s2, b13=b13, b2=b2,
                       activation=activation)
    assert want.norm() > 1
    assert rel_err(out, want) < (1e-2 if dtype == torch.bfloat16 else 1e-6)
    # a dropped bias or a plain SwiGLU would not pass
    wrong = float64_moe(hidden, w13, w2, weights, ids, s13=s13, s2=s2, b13=b13,
                        activation=activation)
    assert rel_err(out, wrong) > 5e-2


def test_clamped_swiglu_and_biases_on_unquantized_weights():
    h, inner, e = 64, 48, 4
    hidden = 4 * torch.randn(7, h)  # large enough that the clamp at 2.0 bites
    w13 = torch.randn(e, 2 * inner, h) / h ** 0.5
    w2 = torch.randn(e, h, inner) / inner ** 0.5
    b13, b2 = torch.randn(e, 2 * inner).bfloat16(), torch.randn(e, h).bfloat16()
    ids = torch.stack([torch.randperm(e)[:2] for _ in range(7)]).to(torch.int32)
    weights = torch.rand(7, 2)
    out = fused_moe(hidden, w13, w2, weights, ids, activation="clamped_swiglu",
                    w13_bias=b13.float(), w2_bias=b2.float(), swiglu_alpha=1.2,
                    swiglu_limit=2.0)
    want = float64_moe(hidden, w13, w2, weights, ids, b13=b13, b2=b2,
                       activation="clamped_swiglu", alpha=1.2, limit=2.0)
    assert rel_err(out, want) < 1e-6
    default = float64_moe(hidden, w13, w2, weights, ids, b13=b13, b2=b2,
                          activation="clamped_swiglu")
    assert rel_err(out, default) > 1e-2  # alpha and limit are used
    silu_bias = fused_moe(hidden.bfloat16(), w13.bfloat16(), w2.bfloat16(), weights, ids,
                          w13_bias=b13, w2_bias=b2)
    want = float64_moe(hidden.bfloat16(), w13.bfloat16(), w2.bfloat16(), weights, ids,
                       b13=b13, b2=b2)
    assert rel_err(silu_bias, want) < 1e-2


def _args():
    hidden, w13, s13, w2, s2, b13, b2, weights, ids = mxfp4_moe(3, 64, 32, 4, 2,
                                                                torch.bfloat16)
    return dict(hidden=hidden, w13=w13, w2=w2, topk_weights=weights, topk_ids=ids,
                quant="mxfp4", w13_scales=s13, w2_scales=s2, w13_bias=b13, w2_bias=b2,
                activation="clamped_swiglu")


@pytest.mark.parametrize("change, name", [
    (lambda a: dict(w13=a["w13"].view(torch.int8)), "w13"),
    (lambda a: dict(w13=a["w13"][:, :, :16].contiguous()), "w13"),
    (lambda a: dict(w2=a["w2"].view(torch.int8)), "w2"),
    (lambda a: dict(w2=a["w2"][:, :32].contiguous()), "w2"),
    (lambda a: dict(w13_scales=a["w13_scales"].float()), "w13_scales"),
    (lambda a: dict(w13_scales=a["w13_scales"][:, :, :1].contiguous()), "w13_scales"),
    (lambda a: dict(w13_scales=None), "w13_scales"),
    (lambda a: dict(w2_scales=a["w2_scales"].to(torch.int32)), "w2_scales"),
    (lambda a: dict(w2_scales=a["w2_scales"][:1].contiguous()), "w2_scales"),
    (lambda a: dict(w2_scales=None), "w2_scales"),
    (lambda a: dict(w13_bias=a["w13_bias"].half()), "w13_bias"),
    (lambda a: dict(w13_bias=a["w13_bias"][:, :32].contiguous()), "w13_bias"),
    (lambda a: dict(w13_bias=torch.zeros(128, 4, dtype=torch.bfloat16).t()), "w13_bias"),
    (lambda a: dict(w2_bias=a["w2_bias"].to(torch.float64)), "w2_bias"),
    (lambda a: dict(w2_bias=a["w2_bias"][:3].contiguous()), "w2_bias"),
    (lambda a: dict(activation="gelu"), "activation"),
    (lambda a: dict(swiglu_limit=0.0), "swiglu_limit"),
    (lambda a: dict(swiglu_limit=float("nan")), "swiglu_limit"),
    (lambda a: dict(swiglu_alpha=float("inf")), "swiglu_alpha"),
    (lambda a: dict(quant="mxfp8"), "quant"),
    (lambda a: dict(hidden=torch.randn(3, 48, dtype=torch.bfloat16),
                    w13=torch.zeros(4, 64, 24, dtype=torch.uint8)), "hidden"),
    (lambda a: dict(w13=torch.zeros(4, 40, 32, dtype=torch.uint8)), "w13"),
])
def test_errors_name_the_argument(change, name):
    args = _args()
    args.update(change(args))
    with pytest.raises(ValueError, match=f"fused_moe: {name} "):
        fused_moe(**args)


def test_scales_without_a_quant_and_bias_on_the_wrong_device():
    args = _args()
    with pytest.raises(ValueError, match="fused_moe: w13_scales are only taken"):
        fused_moe(args["hidden"], torch.randn(4, 64, 64).bfloat16(),
                  torch.randn(4, 64, 32).bfloat16(), args["topk_weights"], args["topk_ids"],
                  w13_scales=args["w13_scales"])
    args["w2_bias"] = args["w2_bias"].to("meta")
    with pytest.raises(ValueError, match="fused_moe: w2_bias must be on cpu"):
        fused_moe(**args)


def test_fake_impl_gives_shapes_for_mxfp4():
    meta = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in _args().items()}
    out = fused_moe(**meta)
    assert out.shape == (3, 64) and out.dtype == torch.bfloat16 and out.device.type == "meta"


def test_traces_under_torch_compile():
    args = _args()

    def layer(hidden, w13, w2, weights, ids, s13, s2, b13, b2):
        return fused_moe(hidden, w13, w2, weights, ids, quant="mxfp4", w13_scales=s13,
                         w2_scales=s2, w13_bias=b13, w2_bias=b2, activation="clamped_swiglu")

    inputs = [args[n] for n in ("hidden", "w13", "w2", "topk_weights", "topk_ids",
                                "w13_scales", "w2_scales", "w13_bias", "w2_bias")]
    got = torch.compile(layer, fullgraph=True, backend="aot_eager")(*inputs)
    assert torch.equal(got, layer(*inputs))


# --- the Triton kernels under the interpreter -----------------------------------------

@triton.jit
def decode(P, S, Out, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One [BLOCK_N, BLOCK_K] tile through the GEMM's decode (rows contiguous)."""
    rn = tl.arange(0, BLOCK_N)
    p = tl.load(P + rn[:, None] * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)[None, :])
    s = tl.load(S + rn[:, None] * (BLOCK_K // 32) + tl.arange(0, BLOCK_K // 32)[None, :])
    w = mxfp4_tile(p, s, BLOCK_N, BLOCK_K, tl.float32)
    tl.store(Out + rn[:, None] * BLOCK_K + tl.arange(0, BLOCK_K)[None, :], w)


@needs_interpreter
def test_in_kernel_decode_is_bit_exact():
    from fuseinfer.ops.quant.fp4_format import dequantize_mxfp4

    # every byte in every nibble pair, under every scale 0..255 (0: subnormal, 255: NaN)
    packed = torch.arange(256, dtype=torch.uint8).repeat(256, 1).view(256, 2, 128)
    packed = packed.reshape(512, 128)
    scales = torch.arange(256, dtype=torch.int32).repeat_interleave(2).view(512, 1)
    scales = scales.repeat(1, 8).to(torch.uint8)
    out = torch.full((512, 256), 7.0)
    decode[(1,)](packed, scales, out, BLOCK_N=512, BLOCK_K=256)
    want = dequantize_mxfp4(packed, scales)
    assert torch.equal(out.isnan(), want.isnan()) and want.isnan().any()
    ok = ~want.isnan()
    assert torch.equal(out[ok], want[ok])
    assert torch.equal(torch.signbit(out[ok]), torch.signbit(want[ok]))  # -0.0 kept


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t, h, inner, e, k, block", [
    (3, 64, 64, 4, 2, (16, 32, 32)),      # one scale block per k step
    (11, 96, 160, 5, 4, (16, 64, 64)),    # K tails: 96 and 160 are not multiples of 64
    (33, 96, 64, 6, 2, (32, 32, 256)),    # BLOCK_K past K
    (1, 128, 96, 4, 1, (16, 16, 128))])
@pytest.mark.parametrize("split_dot", [False, True], ids=["interleaved", "split_dot"])
def test_mxfp4_kernels_interpreted(t, h, inner, e, k, block, dtype, split_dot):
    from fuseinfer.ops.moe.fused_moe import launch_fused_moe
    from fuseinfer.ops.moe.moe_dispatch import Mxfp4LaunchRule

    hidden, w13, s13, w2, s2, b13, b2, weights, ids = mxfp4_moe(t, h, inner, e, k, dtype,
                                                                dtype)
    out = torch.full((t, h), float("nan"), dtype=dtype)
    rule = Mxfp4LaunchRule(None, *block, group_m=2, num_warps=4, num_stages=2,
                           split_dot=split_dot)
    rule.validate("test")
    launch_fused_moe(out, hidden, w13, w2, weights, ids, "mxfp4", s13, s2, rule, pdl=False,
                     activation="clamped_swiglu", w13_bias=b13, w2_bias=b2)
    want = float64_moe(hidden, w13, w2, weights, ids, s13=s13, s2=s2, b13=b13, b2=b2,
                       activation="clamped_swiglu")
    # fp32: exact weights, fp32 intermediates; bf16: gate_up, act and rows are bf16 (the
    # interpreter rounds to bf16 by truncation)
    assert rel_err(out, want) < (2e-2 if dtype == torch.bfloat16 else 1e-5)


@needs_interpreter
@pytest.mark.parametrize("quant", [None, "fp8_block"])
def test_biases_and_clamped_swiglu_on_the_other_quants_interpreted(quant):
    from test_ops_moe_cpu import fp8_weights  # same folder

    from fuseinfer.ops.moe.fused_moe import dequantize_block_weights, launch_fused_moe
    from fuseinfer.ops.moe.fused_moe_reference import reference_fused_moe
    from fuseinfer.ops.moe.moe_dispatch import MoeLaunchRule

    t, h, inner, e, k = 13, 128, 128, 4, 2
    hidden = torch.randn(t, h)
    w13 = torch.randn(e, 2 * inner, h) / h ** 0.5
    w2 = torch.randn(e, h, inner) / inner ** 0.5
    b13, b2 = torch.randn(e, 2 * inner), torch.randn(e, h)
    ids = torch.stack([torch.randperm(e)[:k] for _ in range(t)]).to(torch.int32)
    weights = torch.rand(t, k)
    scales: tuple = (None, None)
    ref13, ref2 = w13, w2
    if quant:
        (w13, s13), (w2, s2) = fp8_weights(w13), fp8_weights(w2)
        scales = (s13, s2)
        ref13, ref2 = dequantize_block_weights(w13, s13), dequantize_block_weights(w2, s2)
    out = torch.full((t, h), float("nan"))
    rule = MoeLaunchRule(None, 16, 64, 64 if quant is None else 128, 1, 4, 2)
    launch_fused_moe(out, hidden, w13, w2, weights, ids, quant, *scales, rule, pdl=False,
                     activation="clamped_swiglu", w13_bias=b13, w2_bias=b2)
    if quant is None:
        want = float64_moe(hidden, ref13, ref2, weights, ids, b13=b13, b2=b2,
                           activation="clamped_swiglu")
        assert rel_err(out, want) < 1e-5
    else:  # activations quantized to fp8: against the reference, then loosely float64
        want = reference_fused_moe(hidden, w13, w2, weights, ids, quant, *scales,
                                   activation="clamped_swiglu", w13_bias=b13, w2_bias=b2)
        assert rel_err(out, want) < 1e-4
        loose = float64_moe(hidden, ref13, ref2, weights, ids, b13=b13, b2=b2,
                            activation="clamped_swiglu")
        assert rel_err(out, loose) < 0.06


# --- the `moe` entry's mxfp4 rules ----------------------------------------------------

def test_mxfp4_rules_builtin_and_validation():
    from fuseinfer.dispatch import TableError
    from fuseinfer.dispatch.schema import parse_dataclass, to_json
    from fuseinfer.ops.moe.moe_dispatch import (
        MOE_BUILTIN,
        MXFP4_BUILTIN_SOURCE,
        MoeDispatch,
        Mxfp4LaunchRule,
    )

    assert "not measured" in MOE_BUILTIN.mxfp4_source == MXFP4_BUILTIN_SOURCE
    small = MOE_BUILTIN.rule(1, "mxfp4")
    assert isinstance(small, Mxfp4LaunchRule) and small.block_m == 16
    assert small.block_k in (128, 256) and small.num_stages in (3, 4)
    assert MOE_BUILTIN.rule(32, "mxfp4") is small
    assert MOE_BUILTIN.rule(100_000, "mxfp4") is MOE_BUILTIN.mxfp4_rules[-1]
    assert all(r.block_k % 32 == 0 for r in MOE_BUILTIN.mxfp4_rules)
    entry = to_json(MOE_BUILTIN)
    old = {k: v for k, v in entry.items() if not k.startswith("mxfp4")}  # an older table
    parsed = parse_dataclass(MoeDispatch, old, "moe")
    assert parsed.mxfp4_rules == MOE_BUILTIN.mxfp4_rules
    assert parsed.mxfp4_source == MXFP4_BUILTIN_SOURCE
    for block_k in (16, 512, 96):
        bad = to_json(MOE_BUILTIN)
        bad["mxfp4_rules"][0]["block_k"] = block_k
        with pytest.raises(TableError, match=r"mxfp4_rules\[0\].block_k"):
            parse_dataclass(MoeDispatch, bad, "moe")
    bad = to_json(MOE_BUILTIN)
    bad["mxfp4_rules"][-1]["max_tokens"] = 4096
    with pytest.raises(TableError, match="mxfp4_rules: the last rule"):
        parse_dataclass(MoeDispatch, bad, "moe")
    bf16 = to_json(MOE_BUILTIN)
    bf16["rules"][0]["block_k"] = 256  # the 256 k step is mxfp4's only
    with pytest.raises(TableError, match=r"moe.rules\[0\].block_k"):
        parse_dataclass(MoeDispatch, bf16, "moe")
