"""store_kv_cache on the CPU: the write into flat and paged caches, FP8 with scales and
saturation, errors naming the argument, the schema and the fake implementation under
torch.compile."""

from __future__ import annotations

import pytest
import torch

import fuseinfer

FP8 = torch.float8_e4m3fn


def test_store_kv_cache_fp8_scaled_and_saturated():
    k = torch.randn(4, 2, 16) * 3
    v = torch.randn(4, 2, 16)
    k[0, 0, 0] = 1e6  # saturates to 448 * scale
    kc = torch.zeros(8, 2, 16, dtype=FP8)
    vc = torch.zeros_like(kc)
    loc = torch.tensor([7, 0, 3, 5])
    ks, vs = torch.tensor([0.5]), torch.tensor([0.25])
    fuseinfer.ops.store_kv_cache(kc, vc, loc, k, v, ks, vs)
    got = kc[loc].float() * 0.5
    assert got[0, 0, 0] == 448 * 0.5
    rel = ((got - k).abs() / k.abs().clamp(min=1e-3))[..., 1:]
    assert rel.max() < 0.07  # e4m3 keeps 3 mantissa bits
    torch.testing.assert_close(vc[loc].float() * 0.25, v, atol=0.02, rtol=0.07)


@pytest.mark.parametrize("cache_shape", ["flat", "paged", "flat2d"])
def test_store_kv_cache_fp8_scale_per_kv_head(cache_shape):
    """Head h of a row is stored divided by scale[h]: heads 16x apart in magnitude each
    keep e4m3's relative precision (one shared scale would push the small head into
    subnormals); a 2-D cache groups its row by the scale's length."""
    heads, d = 3, 16
    magnitude = torch.tensor([4.0, 0.25, 1 / 64])
    k = torch.randn(5, heads, d) * magnitude[:, None]
    v = torch.randn(5, heads, d) * magnitude.flip(0)[:, None]
    shape = {"flat": (10, heads, d), "paged": (5, 2, heads, d), "flat2d": (10, heads * d)}
    kc = torch.full(shape[cache_shape], float("nan")).to(FP8)
    vc = torch.full_like(kc, float("nan"))
    loc = torch.randperm(10)[:5]
    ks, vs = magnitude / 2, magnitude.flip(0) / 2
    fuseinfer.ops.store_kv_cache(kc, vc, loc, k, v, ks, vs)
    for cache, src, scale in ((kc, k, ks), (vc, v, vs)):
        rows = cache.reshape(10, heads, d)[loc]
        for h in range(heads):
            want = (src[:, h].double() / float(scale[h])).clamp(-448, 448).to(FP8)
            assert torch.equal(rows[:, h].view(torch.uint8), want.view(torch.uint8))
            rel = (rows[:, h].float() * scale[h] - src[:, h]).abs() / src[:, h].abs()
            assert rel[src[:, h].abs() > magnitude.min()].max() < 0.07


def test_a_scale_must_split_the_row_evenly():
    kc = torch.zeros(8, 3, 16, dtype=FP8)
    k = torch.randn(2, 3, 16)
    with pytest.raises(ValueError, match="k_scale must be a contiguous float32 tensor of one "
                       "element or one per KV head"):
        fuseinfer.ops.store_kv_cache(kc, kc.clone(), torch.tensor([0, 1]), k, k,
                                     torch.ones(5), None)


@pytest.mark.parametrize("cache_shape", ["flat", "paged", "flat2d"])
def test_store_writes_only_the_named_slots(cache_shape):
    qkv = torch.randn(6, 3 * 64 + 5, dtype=torch.bfloat16)  # k and v: strided column views
    k, v = qkv[:, 64:128], qkv[:, 128:192]
    shape = {"flat": (24, 2, 32), "paged": (6, 4, 2, 32), "flat2d": (24, 64)}[cache_shape]
    kc = torch.full(shape, float("nan"), dtype=torch.bfloat16)
    vc = torch.full_like(kc, float("nan"))
    loc = torch.randperm(24)[:6].int()
    fuseinfer.ops.store_kv_cache(kc, vc, loc, k, v)
    slots_k, slots_v = kc.reshape(24, 64), vc.reshape(24, 64)
    assert torch.equal(slots_k[loc.long()], k) and torch.equal(slots_v[loc.long()], v)
    untouched = torch.ones(24, dtype=torch.bool)
    untouched[loc.long()] = False
    assert torch.isnan(slots_k[untouched]).all() and torch.isnan(slots_v[untouched]).all()


def test_paged_cache_with_one_slot_per_page_and_gaps():
    """page_size 1 with pages spaced apart: the pages are the slots."""
    buf = torch.zeros(8, 3, 32)  # pages 96 elements apart, each holding one 32-wide slot
    kc = buf[:, :1, :].unflatten(-1, (2, 16))  # [8 pages, 1 slot, 2 heads, 16]
    vc = buf[:, 1:2, :].unflatten(-1, (2, 16))
    k, v = torch.randn(3, 32), torch.randn(3, 32)
    loc = torch.tensor([6, 0, 3])
    fuseinfer.ops.store_kv_cache(kc, vc, loc, k, v)
    assert torch.equal(kc[loc, 0].reshape(3, 32), k) and torch.equal(vc[loc, 0].reshape(3, 32), v)


def _bad(case):
    k, v = torch.randn(3, 16), torch.randn(3, 16)
    kc, vc = torch.zeros(8, 16), torch.zeros(8, 16)
    loc = torch.tensor([0, 1, 2])
    store = fuseinfer.ops.store_kv_cache
    return {
        "store loc": (lambda: store(kc, vc, loc - 1, k, v), r"loc holds slots outside"),
        "scale on bf16 cache": (lambda: store(kc, vc, loc, k, v, torch.ones(1)),
                                "only used with a float8"),
        "same cache": (lambda: store(kc, kc, loc, k, v), "must not be the same tensor"),
        "cache dtypes differ": (lambda: store(kc, vc.to(FP8), loc, k, v),
                                "v_cache must have the dtype of k_cache"),
    }[case]


@pytest.mark.parametrize("case", ["store loc", "scale on bf16 cache", "same cache",
                                  "cache dtypes differ"])
def test_bad_input_names_argument(case):
    fn, pattern = _bad(case)
    with pytest.raises(ValueError, match=pattern):
        fn()


def test_fake_impl_under_torch_compile_fullgraph():
    def write_then_read(kv, kc, vc, loc):
        k, v = kv[:, :64], kv[:, 64:]
        fuseinfer.ops.store_kv_cache(kc, vc, loc, k, v)
        return kc[loc] * 2

    def inputs():
        torch.manual_seed(1)
        return (torch.randn(5, 128, dtype=torch.bfloat16),
                torch.zeros(10, 2, 32, dtype=torch.bfloat16),
                torch.zeros(10, 2, 32, dtype=torch.bfloat16), torch.tensor([1, 3, 5, 7, 9]))

    want_args, got_args = inputs(), inputs()
    want = write_then_read(*want_args)
    got = torch.compile(write_then_read, fullgraph=True, backend="aot_eager")(*got_args)
    assert torch.equal(got, want) and want.abs().sum() > 0
    assert torch.equal(got_args[1], want_args[1]) and torch.equal(got_args[2], want_args[2])


def test_schema():
    schema = str(torch.ops.fuseinfer.store_kv_cache.default._schema)
    assert "Tensor(a!) k_cache" in schema and "Tensor(b!) v_cache" in schema
    assert "bool? enable_pdl=None" in schema


@pytest.mark.parametrize("layout", ["3d", "2d"])
def test_zero_tokens_is_a_no_op(layout):
    kc = torch.randn(6, 4, 2, 32)
    vc = torch.randn(6, 4, 2, 32)
    before_k, before_v = kc.clone(), vc.clone()
    shape = (0, 2, 32) if layout == "3d" else (0, 64)
    fuseinfer.ops.store_kv_cache(kc, vc, torch.zeros(0, dtype=torch.int32),
                                 torch.empty(shape), torch.empty(shape))
    assert torch.equal(kc, before_k) and torch.equal(vc, before_v)


def test_zero_tokens_still_checks_widths():
    kc, vc = torch.zeros(8, 2, 32), torch.zeros(8, 2, 32)
    with pytest.raises(ValueError, match="k_cache"):
        fuseinfer.ops.store_kv_cache(kc, vc, torch.zeros(0, dtype=torch.int64),
                                     torch.empty(0, 2, 16), torch.empty(0, 2, 16))
