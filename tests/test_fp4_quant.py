"""The FP4 / MX quantizers on the CPU (fuseinfer.ops.fp4_quant): nvfp4_quantize,
mxfp4_quantize and mxfp8_quantize against an independent numpy oracle written here (grids
enumerated from the format definitions, float32 steps in numpy, nearest with ties to the
even code), the rounding edge cases (ties, saturation, zero blocks, negative zero), the
swizzled scale layout against its offset formula, expert-grouped rows, round trips, the
argument errors, the fake impls under torch.compile and the dispatch entry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fuseinfer  # noqa: F401  (registers the ops)
from fuseinfer.dispatch import TableError
from fuseinfer.dispatch.schema import parse_dataclass
from fuseinfer.ops import mxfp4_quantize, mxfp8_quantize, nvfp4_quantize
from fuseinfer.ops.fp4_quant import scale_layout
from fuseinfer.ops.fp4_quant.dispatch import BUILTIN, Fp4QuantDispatch, effective
from fuseinfer.ops.fp4_quant.nvfp4_quantize import dequantize_nvfp4, global_scale_for
from fuseinfer.ops.quant.fp4_format import dequantize_mxfp4

F32 = np.float32


# ---- the oracle: grids from the bit definitions, nearest value, ties to the even code ----
def _e2m1_grid() -> np.ndarray:
    """Magnitudes of codes 0..7: exponent bits e (bias 1), mantissa bit m."""
    out = []
    for code in range(8):
        e, m = code >> 1, code & 1
        out.append(m * 0.5 if e == 0 else (1 + m / 2) * 2.0 ** (e - 1))
    return np.array(out)


def _e4m3_grid() -> np.ndarray:
    """Magnitudes of E4M3 (fn) codes 0..126 (bias 7, 3 mantissa bits; 127 is NaN)."""
    out = []
    for code in range(127):
        e, m = code >> 3, code & 7
        out.append(m / 8 * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))
    return np.array(out)


E2M1_GRID, E4M3_GRID = _e2m1_grid(), _e4m3_grid()


def _nearest_code(mag: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Index of the grid value nearest each magnitude (beyond the grid: the last); a tie
    between two neighbours goes to the even index."""
    d = np.abs(mag.astype(np.float64)[..., None] - grid)
    best = d.min(axis=-1, keepdims=True)
    tied = d == best
    idx = np.arange(grid.size)
    even = np.where(tied & (idx % 2 == 0), idx, grid.size + 1).min(axis=-1)
    first = np.argmax(tied, axis=-1)
    return np.where(even <= grid.size, even, first)


def oracle_e2m1(v: np.ndarray) -> np.ndarray:
    code = _nearest_code(np.abs(v), E2M1_GRID)
    return (code | (np.signbit(v) << 3)).astype(np.uint8)


def oracle_e4m3_value(v: np.ndarray) -> np.ndarray:
    return np.copysign(E4M3_GRID[_nearest_code(np.abs(v), E4M3_GRID)], v)


def oracle_e8m0(s: float) -> int:
    """Byte of the smallest power of two >= s (0: 2^-127)."""
    if s == 0:
        return 0
    mant, exp = math.frexp(s)  # s = mant * 2^exp, mant in [0.5, 1)
    ceil_log2 = exp - 1 if mant == 0.5 else exp
    return min(max(ceil_log2 + 127, 0), 254)


def _blocks(x: torch.Tensor, block: int) -> np.ndarray:
    m, k = x.shape
    return x.float().numpy().reshape(m, k // block, block)


def oracle_nvfp4(x: torch.Tensor, gs_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes [M, K] uint8, scale values [M, K/16] float64)."""
    b = _blocks(x, 16)
    amax = np.abs(b).max(axis=-1).astype(F32)
    gs = gs_rows.astype(F32)[:, None]
    sf_f = gs * (amax / F32(6))  # float32 steps
    sf = oracle_e4m3_value(np.minimum(sf_f, F32(448)).astype(np.float64)).astype(F32)
    factor = np.where(sf != 0, gs / np.where(sf != 0, sf, F32(1)), F32(0)).astype(F32)
    vals = (b * factor[..., None]).astype(F32)
    return oracle_e2m1(vals).reshape(x.shape), sf.astype(np.float64)


def oracle_mx(x: torch.Tensor, emax: float, n: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(values divided by their power-of-two scales [M, N] float64, E8M0 bytes)."""
    xs = x.float().numpy()
    if n is not None:
        xs = np.pad(xs, ((0, 0), (0, n - xs.shape[1])))
    m, k = xs.shape
    b = xs.reshape(m, k // 32, 32)
    amax = np.abs(b).max(axis=-1).astype(F32)
    s = amax / F32(emax)
    byte = np.vectorize(lambda v: oracle_e8m0(float(v)))(s).astype(np.uint8)
    scaled = b.astype(np.float64) / np.exp2(byte.astype(np.float64) - 127)[..., None]
    return scaled.reshape(m, k), byte


def _unpack(q: torch.Tensor) -> np.ndarray:
    p = q.numpy()
    return np.stack((p & 15, p >> 4), axis=-1).reshape(p.shape[0], -1)


def _data(m: int, k: int, dtype=torch.bfloat16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g).mul(20).add(0.01)
    return x.to(dtype)


# ---- the three ops against the oracle ----------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m, k", [(1, 64), (37, 256), (130, 160)])
def test_nvfp4_matches_the_oracle(dtype, m, k):
    x = _data(m, k, dtype, seed=m)
    gs = global_scale_for(x)
    q, s = nvfp4_quantize(x, gs, swizzled_scales=False)
    codes, sf = oracle_nvfp4(x, np.full(m, gs.item()))
    assert q.dtype == torch.uint8 and q.shape == (m, k // 2)
    assert s.dtype == torch.float8_e4m3fn and s.shape == (m, k // 16)
    np.testing.assert_array_equal(_unpack(q), codes)
    np.testing.assert_array_equal(s.float().numpy(), sf)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m, k", [(1, 32), (19, 256), (64, 2880)])
def test_mxfp4_matches_the_oracle(dtype, m, k):
    x = _data(m, k, dtype, seed=k)
    q, s = mxfp4_quantize(x)
    scaled, byte = oracle_mx(x, 6.0)
    assert s.dtype == torch.uint8 and s.shape == (m, k // 32)
    np.testing.assert_array_equal(s.numpy(), byte)
    np.testing.assert_array_equal(_unpack(q), oracle_e2m1(scaled))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m, k, n", [(3, 64, None), (21, 2880, 3072), (8, 96, 128)])
def test_mxfp8_matches_the_oracle_with_padding(dtype, m, k, n):
    x = _data(m, k, dtype, seed=k + 1)
    q, s = mxfp8_quantize(x, n)
    width = n or k
    scaled, byte = oracle_mx(x, 448.0, width)
    assert q.dtype == torch.float8_e4m3fn and q.shape == (m, width)
    np.testing.assert_array_equal(s.numpy(), byte)
    np.testing.assert_array_equal(q.float().numpy(), oracle_e4m3_value(scaled))
    if n:  # padded columns and their blocks: zeros, zero-amax scales
        assert not q[:, k:].float().any() and not s[:, k // 32:].any()


# ---- rounding edge cases -----------------------------------------------------------------
def test_e2m1_ties_round_to_the_even_code():
    # amax 6 in every block: scale 2^0, the values below are exactly at midpoints
    mids = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    row = torch.tensor(mids + [-m for m in mids] + [6.0] + [0.0] * 17)
    q, s = mxfp4_quantize(row.reshape(1, 32).to(torch.bfloat16))
    assert s.item() == 127
    codes = _unpack(q)[0]
    want = [0, 2, 2, 4, 4, 6, 6]  # 0, 1, 1, 2, 2, 4, 4
    assert codes[:7].tolist() == want
    assert codes[7:14].tolist() == [c | 8 for c in want]
    assert codes[14] == 7


def test_e2m1_just_off_the_ties_rounds_to_the_nearest():
    eps = 2.0 ** -7  # one bf16 step near 1
    row = torch.tensor([0.25 + eps / 4, 0.75 - eps, 1.25 + eps, 1.75 - eps, 2.5 + 2 * eps,
                        3.5 - 2 * eps, 5.0 + 4 * eps, 6.0] + [0.0] * 24)
    q, _ = mxfp4_quantize(row.reshape(1, 32).to(torch.bfloat16))
    assert _unpack(q)[0][:8].tolist() == [1, 1, 3, 3, 5, 5, 7, 7]


def test_nvfp4_saturates_values_past_six():
    # amax 6.375 with global scale 1: 6.375 / 6 = 1.0625 rounds to the e4m3 scale 1.0
    # (a tie, to even), so 6.375 / 1.0 saturates to 6 (code 7)
    x = torch.zeros(1, 16)
    x[0, 0], x[0, 1] = 6.375, -6.375
    q, s = nvfp4_quantize(x.to(torch.bfloat16), 1.0, swizzled_scales=False)
    assert s.float().item() == 1.0
    assert _unpack(q)[0][:2].tolist() == [7, 15]


def test_nvfp4_scale_saturates_at_448():
    x = torch.full((1, 16), 3.0, dtype=torch.bfloat16)
    _, s = nvfp4_quantize(x, 1e6, swizzled_scales=False)
    assert s.float().item() == 448.0


def test_zero_blocks_and_negative_zero():
    x = torch.zeros(2, 64)
    x[1, :16] = -0.0
    x[1, 32:48] = torch.randn(16)
    xb = x.to(torch.bfloat16)
    q, s = nvfp4_quantize(xb, 1.0, swizzled_scales=False)
    codes = _unpack(q)
    assert not s[0].float().any() and s[1, 2].float().item() > 0
    assert not codes[0].any() and (codes[1, :16] == 8).all()  # -0 keeps its sign
    q4, s4 = mxfp4_quantize(xb)
    assert s4[0].tolist() == [0, 0] and (_unpack(q4)[1, :16] == 8).all()
    q8, s8 = mxfp8_quantize(xb)
    assert s8[0].tolist() == [0, 0] and not q8[0].float().any()
    assert torch.signbit(q8[1, :16].float()).all()


# ---- scale layout --------------------------------------------------------------------------
def _formula(m: int, k: int, k_tiles: int) -> int:
    return (m // 128) * (k_tiles * 512) + (k // 4) * 512 + (m % 32) * 16 + \
        ((m % 128) // 32) * 4 + (k % 4)


@pytest.mark.parametrize("op, block", [("nvfp4", 16), ("mxfp4", 32), ("mxfp8", 32)])
def test_swizzled_scales_follow_the_offset_formula(op, block):
    m, k = 130, block * 6  # two row tiles, 6 scale columns padded to 8
    x = _data(m, k, seed=3)
    if op == "nvfp4":
        gs = global_scale_for(x)
        _, lin = nvfp4_quantize(x, gs, swizzled_scales=False)
        _, sw = nvfp4_quantize(x, gs)
    else:
        fn = mxfp4_quantize if op == "mxfp4" else mxfp8_quantize
        _, lin = fn(x)
        _, sw = fn(x, swizzled_scales=True)
    assert sw.shape == (256, 8) and sw.is_contiguous()
    flat = sw.view(torch.uint8).flatten()
    lin8 = lin.view(torch.uint8)
    covered = torch.zeros(flat.numel(), dtype=torch.bool)
    for r in range(m):
        for c in range(6):
            off = _formula(r, c, 2)
            assert flat[off] == lin8[r, c]
            covered[off] = True
    assert not flat[~covered].any()  # padding rows and columns are zero
    assert torch.equal(scale_layout.from_layout(sw.view(torch.uint8), m, 6, True), lin8)


def test_swizzle_and_unswizzle_are_inverse():
    t = torch.randint(0, 255, (256, 12), dtype=torch.uint8)
    assert torch.equal(scale_layout.unswizzle(scale_layout.swizzle(t)), t)


# ---- expert-grouped rows -------------------------------------------------------------------
@pytest.mark.parametrize("offsets", [[0, 3, 3, 10], [0, 130, 131, 300], [0, 0, 5]])
def test_nvfp4_expert_groups_use_their_global_scale(offsets):
    m, k = offsets[-1], 64
    x = _data(m, k, seed=len(offsets))
    experts = len(offsets) - 1
    gs = torch.tensor([global_scale_for(x).item() * (0.5 + e) for e in range(experts)])
    off = torch.tensor(offsets, dtype=torch.int32)
    q, s = nvfp4_quantize(x, gs, swizzled_scales=False, expert_offsets=off)
    rows_gs = np.repeat(gs.numpy(), np.diff(offsets))
    codes, sf = oracle_nvfp4(x, rows_gs)
    np.testing.assert_array_equal(_unpack(q), codes)
    np.testing.assert_array_equal(s.float().numpy(), sf)
    q_sw, s_sw = nvfp4_quantize(x, gs, expert_offsets=off)
    assert torch.equal(q_sw, q)
    rows = (m + 127 * experts) // 128 * 128
    assert s_sw.shape == (rows, 4)
    flat = s_sw.view(torch.uint8).flatten()
    lin8 = s.view(torch.uint8)
    covered = torch.zeros(flat.numel(), dtype=torch.bool)
    for e in range(experts):
        start = (offsets[e] + 127 * e) // 128 * 128
        for i in range(offsets[e], offsets[e + 1]):
            for c in range(4):
                off_ = _formula(start + i - offsets[e], c, 1)
                assert flat[off_] == lin8[i, c]
                covered[off_] = True
    assert not flat[~covered].any()


# ---- round trips ---------------------------------------------------------------------------
def test_round_trips():
    x = _data(64, 512, seed=9).float()
    xb = x.to(torch.bfloat16)
    gs = global_scale_for(xb)
    q, s = nvfp4_quantize(xb, gs, swizzled_scales=False)
    back = dequantize_nvfp4(q, s, gs)
    assert ((back - xb.float()).norm() / xb.float().norm()).item() < 0.12
    q4, s4 = mxfp4_quantize(xb)
    back4 = dequantize_mxfp4(q4, s4)
    assert ((back4 - xb.float()).norm() / xb.float().norm()).item() < 0.2
    q8, s8 = mxfp8_quantize(xb)
    back8 = q8.float() * torch.exp2(s8.float() - 127).repeat_interleave(32, dim=-1)
    assert ((back8 - xb.float()).norm() / xb.float().norm()).item() < 0.04


def test_values_on_the_grid_round_trip_exactly():
    g = torch.Generator().manual_seed(5)
    grid = torch.tensor([0.0, 0.5, 1, 1.5, 2, 3, 4, 6] * 4)
    vals = grid[torch.randperm(32, generator=g)] * torch.where(
        torch.rand(32, generator=g) < 0.5, -1.0, 1.0)
    vals[0] = 6.0  # every block's amax is 6
    vals[16] = -6.0
    x = (vals * 2.0 ** -3).reshape(1, 32).to(torch.bfloat16)
    q4, s4 = mxfp4_quantize(x)
    assert torch.equal(dequantize_mxfp4(q4, s4), x.float())
    q, s = nvfp4_quantize(x, 6.0 * 448 / 0.75, swizzled_scales=False)
    assert torch.equal(dequantize_nvfp4(q, s, torch.tensor([6.0 * 448 / 0.75])), x.float())


# ---- errors, fake impls, torch.compile -----------------------------------------------------
@pytest.mark.parametrize("call, message", [
    (lambda: nvfp4_quantize(torch.randn(2, 40, dtype=torch.bfloat16), 1.0),
     r"nvfp4_quantize: input its hidden size \(40\) must be a multiple of 16"),
    (lambda: mxfp4_quantize(torch.randn(2, 48, dtype=torch.bfloat16)),
     r"mxfp4_quantize: input its hidden size \(48\) must be a multiple of 32"),
    (lambda: mxfp8_quantize(torch.randn(2, 80, dtype=torch.bfloat16)),
     r"multiple of 32"),
    (lambda: mxfp8_quantize(torch.randn(2, 64, dtype=torch.bfloat16), 48),
     r"output_hidden_size must be >= the hidden size \(64\)"),
    (lambda: mxfp4_quantize(torch.randn(2, 64)), "must be bfloat16 or float16"),
    (lambda: nvfp4_quantize(torch.randn(2, 64, dtype=torch.bfloat16),
                            torch.ones(2)), "global_scale must be a contiguous float32"),
    (lambda: nvfp4_quantize(torch.randn(4, 64, dtype=torch.bfloat16), torch.ones(2),
                            expert_offsets=torch.tensor([0, 2, 4])),
     "expert_offsets must be a contiguous int32"),
])
def test_bad_arguments_raise_clear_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_destination_shapes_are_checked():
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    q = torch.empty(4, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"scales must be torch.float8_e4m3fn \[128, 4\]"):
        torch.ops.fuseinfer.nvfp4_quantize(q, torch.empty(4, 4, dtype=torch.float8_e4m3fn),
                                           x, torch.ones(1))
    with pytest.raises(ValueError, match=r"q must be torch.float8_e4m3fn \[4, 64\]"):
        torch.ops.fuseinfer.mxfp8_quantize(torch.empty(4, 64, dtype=torch.uint8),
                                           torch.empty(4, 2, dtype=torch.uint8), x)


def test_fake_impls_give_shapes_without_data():
    x = torch.empty(300, 2880, dtype=torch.bfloat16, device="meta")
    q, s = nvfp4_quantize(x, torch.ones(1, device="meta"))
    assert q.shape == (300, 1440) and s.shape == (384, 180) and q.device.type == "meta"
    q, s = nvfp4_quantize(x, torch.ones(3, device="meta"),
                          expert_offsets=torch.empty(4, dtype=torch.int32, device="meta"))
    assert s.shape == ((300 + 3 * 127) // 128 * 128, 180)
    q, s = mxfp4_quantize(x, swizzled_scales=True)
    assert q.shape == (300, 1440) and s.shape == (384, 92) and s.dtype == torch.uint8
    q, s = mxfp8_quantize(x, 3072)
    assert q.shape == (300, 3072) and s.shape == (300, 96)


def test_ops_trace_under_torch_compile_fullgraph():
    def quantize_all(x, gs):
        q, s = nvfp4_quantize(x, gs)
        q4, s4 = mxfp4_quantize(x, swizzled_scales=True)
        q8, s8 = mxfp8_quantize(x, 128)
        return q, s.view(torch.uint8), q4, s4, q8.view(torch.uint8), s8

    x = _data(5, 96, seed=11)
    gs = global_scale_for(x)
    want = quantize_all(x, gs)
    got = torch.compile(quantize_all, fullgraph=True, backend="aot_eager")(x, gs)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_zero_tokens():
    x = torch.empty(0, 64, dtype=torch.bfloat16)
    q, s = nvfp4_quantize(x, 1.0)
    assert q.shape == (0, 32) and s.shape == (0, 4)
    q, s = mxfp8_quantize(x, 96)
    assert q.shape == (0, 96) and s.shape == (0, 3)


# ---- dispatch entry ----------------------------------------------------------------------
def test_dispatch_entry_builtin_and_validation():
    assert effective(None) == BUILTIN or isinstance(effective(None), Fp4QuantDispatch)
    assert BUILTIN.rules[-1].max_tokens is None
    entry = {"source": "test", "enable_pdl": True,
             "rules": [{"max_tokens": 16, "threads_per_block": 128, "blocks_per_sm": 8},
                       {"max_tokens": None, "threads_per_block": 512, "blocks_per_sm": 4}]}
    parsed = parse_dataclass(Fp4QuantDispatch, entry, "t")
    assert parsed.rules[0].threads_per_block == 128
    bad = dict(entry, rules=[{"max_tokens": None, "threads_per_block": 96,
                              "blocks_per_sm": 4}])
    with pytest.raises(TableError, match="threads_per_block"):
        parse_dataclass(Fp4QuantDispatch, bad, "t")
    unbounded = dict(entry, rules=entry["rules"][:1])
    with pytest.raises(TableError, match="last rule must match everything"):
        parse_dataclass(Fp4QuantDispatch, unbounded, "t")
