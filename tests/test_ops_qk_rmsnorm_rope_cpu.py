"""qk_rmsnorm_rope on the CPU: the op against float64 math written here (per-head norm,
rounding, NeoX rotation, the cache write into flat, paged and FP8 caches), bit-equality
with the two-op sequence it replaces (qk_rmsnorm, then rope_with_cos_sin_cache with the
fused KV write), argument errors, the fake impl under torch.compile, and the Triton kernel
run by Triton's interpreter against that two-op sequence (poisoned caches, strided qkv)."""

from __future__ import annotations

import math
import os

import pytest
import torch
from qk_rope_case_tools import clone_args, same_bits, ulp_distance

import fuseinfer
from fuseinfer.ops import qk_rmsnorm, qk_rmsnorm_rope, rope_with_cos_sin_cache
from fuseinfer.ops.rope.qk_rmsnorm_rope import QkRmsnormRopeArgs, launch_qk_rmsnorm_rope

needs_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="a GPU is present: the GPU suite runs this kernel natively")

FP8 = torch.float8_e4m3fn
EPS = 1e-6
MAX_POS = 512
TOL = {torch.bfloat16: 2e-2, torch.float16: 2e-3, torch.float32: 2e-5}


def cos_sin(max_pos: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    inv = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angle = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv
    return torch.cat((angle.cos(), angle.sin()), dim=-1).float()


def make_case(tokens=5, hq=4, hkv=2, d=32, dtype=torch.bfloat16, cache="flat",
              cache_dtype=None, index_dtype=torch.int64, pad=6, scales=(None, None)):
    """Arguments of the op in schema order: qkv a strided view (pad columns beside it),
    NaN-poisoned caches, distinct random slots."""
    width = (hq + 2 * hkv) * d
    buffer = torch.randn(tokens, width + pad).to(dtype)
    qkv = buffer[:, :width]
    wq = (torch.randn(d) * 0.3 + 1).to(dtype)
    wk = (torch.randn(d) * 0.3 + 1).to(dtype)
    slots = max(2 * tokens, 16)
    shape = {"flat": (slots, hkv, d), "flat2d": (slots, hkv * d),
             "paged": (slots // 4, 4, hkv, d)}[cache]
    cache_dtype = cache_dtype or dtype
    k_cache = torch.full(shape, float("nan")).to(cache_dtype)
    v_cache = torch.full(shape, float("nan")).to(cache_dtype)
    loc = torch.randperm(slots)[:tokens].to(index_dtype)
    positions = torch.randint(0, MAX_POS, (tokens,)).to(index_dtype)
    args = [positions, qkv, hq, hkv, d, wq, wk, EPS, cos_sin(MAX_POS, d), k_cache, v_cache,
            loc, *scales]
    return buffer, args



def two_op_sequence(args) -> None:
    """What the op replaces: qk_rmsnorm, then RoPE with the fused KV write (in place)."""
    positions, qkv, hq, hkv, d, wq, wk, eps, cs, k_cache, v_cache, loc, *scales = args
    qk_rmsnorm(qkv[:, :(hq + hkv) * d], wq, wk, hq, eps)
    q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=1)
    rope_with_cos_sin_cache(positions, q, k, d, cs, True, v, k_cache, v_cache, loc, *scales)


def float64_expected(args) -> torch.Tensor:
    """The q and k heads after the op, float64 [tokens, hq + hkv, d], from textbook math:
    float64 RMSNorm, rounded to qkv's dtype, float64 NeoX rotation at exact angles."""
    positions, qkv, hq, hkv, d, wq, wk, eps = args[:8]
    heads = qkv[:, :(hq + hkv) * d].double().unflatten(1, (hq + hkv, d))
    w = torch.cat([wq.double().expand(hq, d), wk.double().expand(hkv, d)])
    normed = heads / heads.pow(2).mean(-1, keepdim=True).add(eps).sqrt() * w
    x = normed.to(qkv.dtype).double()
    out = torch.empty_like(x)
    half = d // 2
    for t in range(x.size(0)):
        for i in range(half):
            theta = int(positions[t]) * 10000.0 ** (-2 * i / d)
            c, s = math.cos(theta), math.sin(theta)
            out[t, :, i] = x[t, :, i] * c - x[t, :, i + half] * s
            out[t, :, i + half] = x[t, :, i + half] * c + x[t, :, i] * s
    return out


def slot_rows(cache: torch.Tensor) -> torch.Tensor:
    """The cache as [slots, kv_heads * head_size] (a paged cache's pages flattened)."""
    return (cache.flatten(0, 1) if cache.dim() == 4 else cache).flatten(1)




def assert_nearly_equal(got: torch.Tensor, want: torch.Tensor, max_fraction=0.01) -> None:
    """NaN exactly where want has NaN (an unwritten, poisoned slot); elsewhere equal but for
    a small fraction of elements one rounding step apart. The interpreter's fp32 rsqrt, sum
    and fma differ from torch's in the last bit, which now and then moves a normalized value
    one step; rotated, that can be several steps of a small result: allowed for one element
    in a thousand (two in a small case), within a few steps of the largest values."""
    got_nan, want_nan = torch.isnan(got.float()), torch.isnan(want.float())
    assert torch.equal(got_nan, want_nan), "NaN where a value was due (or the reverse)"
    got, want = got[~got_nan], want[~want_nan]
    if got.dtype == torch.float32:  # fp32 math in another order: a few ulp
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        return
    steps = ulp_distance(got, want)
    assert (steps > 0).float().mean() <= max_fraction
    far = steps > 1
    assert far.sum() <= max(2, 0.001 * far.numel()), \
        f"{int(far.sum())} elements more than one step apart"
    limit = 8 * torch.finfo(got.dtype).eps * want[far].float().abs().clamp_min(1.0)
    assert ((got[far].float() - want[far].float()).abs() <= limit).all()


# ---- the CPU op -------------------------------------------------------------------------

def test_schema_marks_qkv_and_both_caches_written():
    schema = torch.ops.fuseinfer.qk_rmsnorm_rope.default._schema
    written = [a.name for a in schema.arguments
               if a.alias_info is not None and a.alias_info.is_write]
    assert written == ["qkv", "k_cache", "v_cache"] and len(schema.returns) == 0
    assert "bool? enable_pdl=None" in str(schema) and "float eps" in str(schema)
    assert fuseinfer.ops.qk_rmsnorm_rope is qk_rmsnorm_rope


@pytest.mark.parametrize("cache", ["flat", "flat2d", "paged"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_matches_float64_math(dtype, cache):
    buffer, args = make_case(dtype=dtype, cache=cache)
    qkv, k_cache, v_cache, loc = args[1], args[9], args[10], args[11].long()
    before = buffer.clone()
    want = float64_expected(args)
    qk_rmsnorm_rope(*args)
    got = qkv[:, :6 * 32].double().unflatten(1, (6, 32))
    assert not torch.isnan(got).any()
    assert ((got - want).norm() / want.norm()).item() < TOL[dtype] / 2
    torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype])
    assert torch.equal(buffer[:, 6 * 32:], before[:, 6 * 32:])  # v and the pad: only read
    k_rows, v_rows = slot_rows(k_cache), slot_rows(v_cache)
    assert torch.equal(k_rows[loc], qkv[:, 4 * 32:6 * 32])  # the rotated k, as written back
    assert torch.equal(v_rows[loc], qkv[:, 6 * 32:])
    untouched = torch.ones(k_rows.size(0), dtype=torch.bool)
    untouched[loc] = False
    assert torch.isnan(k_rows[untouched]).all() and torch.isnan(v_rows[untouched]).all()


@pytest.mark.parametrize("scales", ["both", "none", "per head"])
def test_fp8_caches_hold_saturated_scaled_values(scales):
    """An FP8 cache holds fp8(clamp(x / scale, -448, 448)): the rotated k, the raw v; with
    a scale per KV head (2 here, 32 wide), each head's columns by its own."""
    pair = {"both": (torch.tensor([0.004]), torch.tensor([0.02])),
            "none": (None, None),
            "per head": (torch.tensor([0.004, 0.5]), torch.tensor([0.02, 3.0]))}[scales]
    buffer, args = make_case(cache="paged", cache_dtype=FP8, scales=pair, pad=0)
    qkv, loc = args[1], args[11].long()
    qk_rmsnorm_rope(*args)
    for cache, rows, scale in ((args[9], qkv[:, 128:192], pair[0]),
                               (args[10], qkv[:, 192:], pair[1])):
        per_column = torch.ones(64, dtype=torch.float64) if scale is None else \
            torch.cat([torch.full((32,), float(x), dtype=torch.float64) for x in scale]) \
            if scale.numel() == 2 else torch.full((64,), float(scale), dtype=torch.float64)
        want = (rows.double() / per_column).clamp(-448, 448).to(FP8)
        assert same_bits(slot_rows(cache)[loc], want)
    if scales == "both":  # 1/0.004 saturates the largest rotated k values
        assert (slot_rows(args[9])[loc].float().abs() == 448).any()


@pytest.mark.parametrize("cache_dtype", [None, FP8])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_equals_the_two_op_sequence_bit_for_bit(dtype, cache_dtype):
    scales = (torch.tensor([0.03]), None) if cache_dtype == FP8 else (None, None)
    buffer, args = make_case(tokens=7, hq=6, hkv=2, d=64, dtype=dtype,
                             cache_dtype=cache_dtype, index_dtype=torch.int32, scales=scales)
    want_buffer, want_args = clone_args(buffer, args)
    two_op_sequence(want_args)
    qk_rmsnorm_rope(*args)
    assert same_bits(buffer, want_buffer)
    assert same_bits(args[9], want_args[9]) and same_bits(args[10], want_args[10])


def _bad(case: str):
    buffer, args = make_case(tokens=3, hq=2, hkv=1, d=16, dtype=torch.float32)
    qkv, d = args[1], 16
    changes = {
        "qkv dtype": ({1: qkv.double()}, "qkv must be bfloat16, float16 or float32"),
        "qkv width": ({1: torch.randn(3, 60)}, r"qkv must be \[tokens, \(num_q_heads"),
        "qkv 3-d": ({1: qkv.reshape(3, 4, 16)}, r"qkv must be \[tokens"),
        "qkv columns strided": ({1: torch.randn(3, 128)[:, ::2]}, "row contiguous"),
        "num_q_heads": ({2: 0}, "num_q_heads must be >= 1"),
        "num_kv_heads": ({3: 0}, "num_kv_heads must be >= 1"),
        "head_size": ({4: 0}, "head_size must be positive"),
        "q_weight shape": ({5: torch.ones(8)}, r"q_weight must be a contiguous 1-D \[head_size\]"),
        "q_weight strided": ({5: torch.ones(2 * d)[::2]}, r"q_weight must be a contiguous 1-D"),
        "k_weight dtype": ({6: torch.ones(d, dtype=torch.float16)}, "k_weight must have qkv's"),
        "eps": ({7: 0.0}, "eps must be > 0"),
        "positions dtype": ({0: args[0].float()}, "positions must be a contiguous int32"),
        "positions count": ({0: args[0][:2]}, r"shape \[3\]"),
        "positions range": ({0: args[0] + MAX_POS}, r"positions hold values outside \[0, 512\)"),
        "cos_sin dtype": ({8: args[8].double()}, "cos_sin_cache must be a contiguous float32"),
        "partial rotary": ({8: cos_sin(MAX_POS, 8)}, "rotary_dim 8 must equal head_size 16"),
        "cache width": ({9: torch.zeros(16, 2, 16)}, "k_cache rows hold 32 elements"),
        "cache dtype": ({9: torch.zeros(16, 1, 16, dtype=torch.float16)},
                        "k_cache must have dtype torch.float32 or float8_e4m3fn"),
        "v_cache dtype": ({10: torch.zeros(16, 1, 16, dtype=FP8)}, "v_cache must have the dtype"),
        "same cache": ({10: args[9]}, "must not be the same tensor"),
        "loc dtype": ({11: args[11].float()}, "cache_loc must be a contiguous int32"),
        "loc range": ({11: args[11] + 16}, r"cache_loc holds slots outside \[0, 16\)"),
        "scale on bf16 cache": ({12: torch.ones(1)}, "k_scale is only used with a float8"),
        "scale shape": ({9: torch.zeros(16, 1, 16, dtype=FP8),
                         10: torch.zeros(16, 1, 16, dtype=FP8), 13: torch.ones(3)},
                        "v_scale must be a contiguous float32 tensor of one element or one "
                        "per KV head"),
        "scale per head count": ({9: torch.zeros(16, 1, 16, dtype=FP8),
                                  10: torch.zeros(16, 1, 16, dtype=FP8), 13: torch.ones(2)},
                                 r"v_scale must have one element or one per KV head \(1\)"),
    }
    change, pattern = changes[case]
    for index, value in change.items():
        args[index] = value
    return args, pattern


@pytest.mark.parametrize("case", [
    "qkv dtype", "qkv width", "qkv 3-d", "qkv columns strided", "num_q_heads", "num_kv_heads",
    "head_size", "q_weight shape", "q_weight strided", "k_weight dtype", "eps", "positions dtype",
    "positions count", "positions range", "cos_sin dtype", "partial rotary", "cache width",
    "cache dtype", "v_cache dtype", "same cache", "loc dtype", "loc range",
    "scale on bf16 cache", "scale shape", "scale per head count"])
def test_bad_arguments_name_the_argument(case):
    args, pattern = _bad(case)
    with pytest.raises(ValueError, match=f"fuseinfer.qk_rmsnorm_rope: .*{pattern}"):
        qk_rmsnorm_rope(*args)


def test_meta_tensors_check_shapes_only():
    meta = {"device": "meta"}
    qkv = torch.empty(2, 8 * 128, dtype=torch.bfloat16, **meta)
    w = torch.empty(128, dtype=torch.bfloat16, **meta)
    cache = torch.empty(16, 2, 128, dtype=torch.bfloat16, **meta)
    args = [torch.empty(2, dtype=torch.int64, **meta), qkv, 4, 2, 128, w, w, EPS,
            torch.empty(64, 128, **meta), cache, torch.empty_like(cache),
            torch.empty(2, dtype=torch.int64, **meta)]
    assert torch.ops.fuseinfer.qk_rmsnorm_rope(*args) is None
    args[4] = 64
    with pytest.raises(ValueError, match=r"qkv must be \[tokens"):
        qk_rmsnorm_rope(*args)


def test_fake_impl_under_torch_compile_fullgraph():
    """Traced through the fake impl, the in-place updates of qkv and both caches land."""
    cs = cos_sin(64, 32)

    def attention_prologue(qkv, wq, wk, pos, kc, vc, loc):
        qk_rmsnorm_rope(pos, qkv, 4, 2, 32, wq, wk, EPS, cs, kc, vc, loc)
        return qkv[:, :128] * 2

    def inputs():
        torch.manual_seed(1)
        cache = torch.zeros(10, 2, 32, dtype=torch.bfloat16)
        return (torch.randn(5, 256, dtype=torch.bfloat16),
                torch.rand(32, dtype=torch.bfloat16) + 0.5,
                torch.rand(32, dtype=torch.bfloat16) + 0.5, torch.randint(0, 64, (5,)),
                cache, cache.clone(), torch.tensor([1, 3, 5, 7, 9]))

    want_args, got_args = inputs(), inputs()
    want = attention_prologue(*want_args)
    got = torch.compile(attention_prologue, fullgraph=True, backend="aot_eager")(*got_args)
    assert torch.equal(got, want)
    for got_t, want_t in zip(got_args, want_args, strict=True):
        assert torch.equal(got_t, want_t)
    assert got_args[4].abs().sum() > 0 and got_args[5].abs().sum() > 0


def test_zero_tokens_is_a_no_op_that_still_checks():
    buffer, args = make_case(tokens=0)
    caches = args[9].clone(), args[10].clone()
    qk_rmsnorm_rope(*args)
    assert same_bits(args[9], caches[0]) and same_bits(args[10], caches[1])
    args[4] = 16
    with pytest.raises(ValueError, match="qkv must be"):
        qk_rmsnorm_rope(*args)


# ---- the Triton kernel in the interpreter ---------------------------------------------------

def interpreted_matches_two_ops(buffer: torch.Tensor, args: list) -> None:
    """The interpreted kernel on the case against the two-op sequence on a copy: qkv and
    both caches."""
    want_buffer, want_args = clone_args(buffer, args)
    two_op_sequence(want_args)
    launch_qk_rmsnorm_rope(QkRmsnormRopeArgs(*args), pdl=False)
    assert_nearly_equal(buffer, want_buffer)
    assert_nearly_equal(args[9], want_args[9])
    assert_nearly_equal(args[10], want_args[10])


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("hq, hkv, d", [(4, 2, 16), (3, 1, 32), (6, 2, 8), (1, 1, 2),
                                        (2, 1, 64)])
@pytest.mark.parametrize("cache", ["flat", "paged", "fp8", "fp8 per head"])
def test_kernel_interpreted_matches_the_two_op_sequence(dtype, hq, hkv, d, cache):
    """Some of these shapes put q, k and v heads in one program's block of heads (4+2+2
    and 2+1+1 heads); two rounds of fresh data into the same poisoned caches."""
    fp8 = cache.startswith("fp8")
    scales = (torch.tensor([0.011]), torch.tensor([0.3])) if fp8 else (None, None)
    if cache == "fp8 per head":  # each KV head its own scale
        scales = (0.011 * 3.0 ** torch.arange(hkv), 0.3 * 0.5 ** torch.arange(hkv))
    buffer, args = make_case(tokens=4, hq=hq, hkv=hkv, d=d, dtype=dtype,
                             cache="flat" if fp8 else cache,
                             cache_dtype=FP8 if fp8 else None, scales=scales)
    for round_ in range(2):
        if round_:  # fresh activations and slots, same caches
            buffer.copy_(torch.randn(buffer.shape).to(dtype))
            args[11] = torch.randperm(16)[:4]
            args[0] = torch.randint(0, MAX_POS, (4,))
        interpreted_matches_two_ops(buffer, args)


@needs_interpreter
def test_kernel_interpreted_on_int32_indices_and_one_slot_per_page():
    buffer, args = make_case(tokens=3, hq=2, hkv=2, d=16, dtype=torch.float16,
                             index_dtype=torch.int32)
    args[9] = torch.full((16, 1, 2, 16), float("nan"), dtype=torch.float16)
    args[10] = torch.full((16, 1, 2, 16), float("nan"), dtype=torch.float16)
    interpreted_matches_two_ops(buffer, args)


@needs_interpreter
def test_kernel_interpreted_zero_tokens_launches_nothing():
    buffer, args = make_case(tokens=0)
    launch_qk_rmsnorm_rope(QkRmsnormRopeArgs(*args), pdl=False)
    assert torch.isnan(args[9].float()).all()
