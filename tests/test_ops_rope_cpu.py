"""rope_with_cos_sin_cache on the CPU: semantics against float64 textbook math, the fused
write of the rotated key and the value into flat and paged caches, errors, the schema and
the fake implementation under torch.compile."""

from __future__ import annotations

import math

import pytest
import torch

import fuseinfer

FP8 = torch.float8_e4m3fn


def cos_sin(max_pos, rotary_dim, base=10000.0):
    inv = 1.0 / base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    ang = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv
    return torch.cat((ang.cos(), ang.sin()), dim=-1).float()


def textbook_rope(x, pos, head, rotary_dim, is_neox, base=10000.0):
    """Per-element float64 rotation, written independently of the op's reference."""
    out = x.double().reshape(x.size(0), -1, head).clone()
    for t in range(x.size(0)):
        for i in range(rotary_dim // 2):
            theta = int(pos[t]) * base ** (-2 * i / rotary_dim)
            c, s = math.cos(theta), math.sin(theta)
            a, b = (i, i + rotary_dim // 2) if is_neox else (2 * i, 2 * i + 1)
            x1, x2 = out[t, :, a].clone(), out[t, :, b].clone()
            out[t, :, a] = x1 * c - x2 * s
            out[t, :, b] = x2 * c + x1 * s
    return out.reshape(x.shape)


def qkv_views(tokens, q_heads, k_heads, head, dtype=torch.float32, pad=3):
    width = (q_heads + 2 * k_heads) * head
    qkv = torch.randn(tokens, width + pad, dtype=dtype)
    q = qkv[:, : q_heads * head]
    k = qkv[:, q_heads * head: (q_heads + k_heads) * head]
    v = qkv[:, (q_heads + k_heads) * head: width]
    return qkv, q, k, v


@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("head,rotary", [(64, 64), (128, 64), (10, 6)])
def test_rope_matches_textbook_float64(is_neox, head, rotary):
    qkv, q, k, v = qkv_views(5, 4, 2, head)
    pos = torch.randint(0, 500, (5,))
    want_q = textbook_rope(q, pos, head, rotary, is_neox)
    want_k = textbook_rope(k, pos, head, rotary, is_neox)
    v_before = v.clone()
    fuseinfer.ops.rope_with_cos_sin_cache(pos, q, k, head, cos_sin(500, rotary), is_neox)
    torch.testing.assert_close(q.double(), want_q, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(k.double(), want_k, atol=2e-5, rtol=1e-5)
    assert torch.equal(v, v_before)


@pytest.mark.parametrize("cache_shape", ["flat", "paged", "flat2d"])
def test_fused_write_puts_rotated_key_and_value_in_cache(cache_shape):
    qkv, q, k, v = qkv_views(6, 4, 2, 32, dtype=torch.bfloat16)
    shape = {"flat": (24, 2, 32), "paged": (6, 4, 2, 32), "flat2d": (24, 64)}[cache_shape]
    kc = torch.zeros(shape, dtype=torch.bfloat16)
    vc = torch.zeros_like(kc)
    loc = torch.randperm(24)[:6].int()
    pos = torch.randint(0, 100, (6,))
    fuseinfer.ops.rope_with_cos_sin_cache(pos, q, k, 32, cos_sin(100, 32), True, v, kc, vc, loc)
    slots_k, slots_v = kc.reshape(24, 64), vc.reshape(24, 64)
    assert torch.equal(slots_k[loc.long()], k) and torch.equal(slots_v[loc.long()], v)
    untouched = torch.ones(24, dtype=torch.bool)
    untouched[loc.long()] = False
    assert (slots_k[untouched] == 0).all()


def _bad(case):
    qkv, q, k, v = qkv_views(3, 2, 1, 16)
    pos = torch.tensor([1, 2, 3])
    cs = cos_sin(10, 16)
    kc, vc = torch.zeros(8, 16), torch.zeros(8, 16)
    loc = torch.tensor([0, 1, 2])
    op = fuseinfer.ops.rope_with_cos_sin_cache
    return {
        "positions beyond cache": (lambda: op(pos * 4, q, k, 16, cs), r"positions hold"),
        "loc out of range": (lambda: op(pos, q, k, 16, cs, True, v, kc, vc, loc + 6),
                             r"cache_loc holds slots outside \[0, 8\)"),
        "partial fused": (lambda: op(pos, q, k, 16, cs, True, v, kc, None, loc),
                          "go together"),
        "rotary odd": (lambda: op(pos, q, k, 16, cos_sin(10, 16)[:, :15].contiguous()),
                       "must be even"),
        "rotary > head": (lambda: op(pos, q, k, 8, cs), r"not whole heads|at most head_size"),
        "key dtype": (lambda: op(pos, q, k.double(), 16, cs), "key must have dtype"),
        "cos dtype": (lambda: op(pos, q, k, 16, cs.double()), "cos_sin_cache must be"),
        "positions dtype": (lambda: op(pos.float(), q, k, 16, cs), "positions must be"),
        "scale without cache": (lambda: op(pos, q, k, 16, cs, k_scale=torch.ones(1)),
                                "only used with k_cache"),
        "cache width": (lambda: op(pos, q, k, 16, cs, True, v, torch.zeros(8, 8), vc, loc),
                        "k_cache rows hold 8"),
        "value width": (lambda: op(pos, torch.randn(3, 32), torch.randn(3, 32), 16, cs, True,
                                   torch.zeros(3, 17), torch.zeros(8, 32), torch.zeros(8, 17),
                                   loc), "one row per key head"),
        "v_scale without cache": (lambda: op(pos, q, k, 16, cs, v_scale=torch.ones(1)),
                                  "v_scale is only used"),
    }[case]


@pytest.mark.parametrize("case", [
    "positions beyond cache", "loc out of range", "partial fused", "rotary odd",
    "rotary > head", "key dtype", "cos dtype", "positions dtype", "scale without cache",
    "cache width", "value width", "v_scale without cache"])
def test_bad_input_names_argument(case):
    fn, pattern = _bad(case)
    with pytest.raises(ValueError, match=pattern):
        fn()


def test_fake_impl_under_torch_compile_fullgraph():
    cs = cos_sin(64, 32)

    def attention_prologue(qkv, pos, kc, vc, loc):
        q, k, v = qkv[:, :128], qkv[:, 128:192], qkv[:, 192:256]
        fuseinfer.ops.rope_with_cos_sin_cache(pos, q, k, 32, cs, True, v, kc, vc, loc)
        return q * 2

    def inputs():
        torch.manual_seed(1)
        return (torch.randn(5, 256, dtype=torch.bfloat16), torch.randint(0, 64, (5,)),
                torch.zeros(10, 2, 32, dtype=torch.bfloat16),
                torch.zeros(10, 2, 32, dtype=torch.bfloat16), torch.tensor([1, 3, 5, 7, 9]))

    want_args, got_args = inputs(), inputs()
    want = attention_prologue(*want_args)
    got = torch.compile(attention_prologue, fullgraph=True, backend="aot_eager")(*got_args)
    assert torch.equal(got, want)
    for got_t, want_t in zip(got_args, want_args, strict=True):  # qkv and both caches
        assert torch.equal(got_t, want_t)
    assert got_args[2].abs().sum() > 0  # the key cache was written


def test_schema():
    schema = str(torch.ops.fuseinfer.rope_with_cos_sin_cache.default._schema)
    assert "Tensor(a!) query" in schema and "Tensor(c!)? k_cache=None" in schema
    assert "bool? enable_pdl=None" in schema


@pytest.mark.parametrize("per_head", [False, True])
def test_fused_fp8_write_matches_store_kv_cache(per_head):
    """The fused write into FP8 caches stores what store_kv_cache stores for the rotated key
    and the raw value, at the same scales (one, or one per KV head)."""
    qkv, q, k, v = qkv_views(6, 4, 2, 32, dtype=torch.bfloat16)
    kc, vc = torch.zeros(16, 2, 32, dtype=FP8), torch.zeros(16, 2, 32, dtype=FP8)
    loc = torch.randperm(16)[:6]
    scales = (torch.tensor([0.05, 0.004]), torch.tensor([0.02, 0.5])) if per_head else \
        (torch.tensor([0.05]), torch.tensor([0.02]))
    fuseinfer.ops.rope_with_cos_sin_cache(torch.randint(0, 100, (6,)), q, k, 32,
                                          cos_sin(100, 32), True, v, kc, vc, loc, *scales)
    want_k, want_v = torch.zeros_like(kc), torch.zeros_like(vc)
    fuseinfer.ops.store_kv_cache(want_k, want_v, loc, k, v, *scales)  # k is rotated now
    assert torch.equal(kc.view(torch.uint8), want_k.view(torch.uint8))
    assert torch.equal(vc.view(torch.uint8), want_v.view(torch.uint8))
    assert kc.float().abs().sum() > 0


def test_a_fused_write_scale_covers_whole_heads():
    qkv, q, k, v = qkv_views(2, 4, 2, 32, dtype=torch.bfloat16)
    kc, vc = torch.zeros(16, 2, 32, dtype=FP8), torch.zeros(16, 2, 32, dtype=FP8)
    with pytest.raises(ValueError, match="k_scale must have one element or one per key head"):
        fuseinfer.ops.rope_with_cos_sin_cache(torch.zeros(2, dtype=torch.long), q, k, 32,
                                              cos_sin(100, 32), True, v, kc, vc,
                                              torch.tensor([0, 1]), torch.ones(4), None)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("heads_dim", [False, True])
def test_zero_tokens_is_a_no_op(fused, heads_dim):
    qkv, q, k, v = qkv_views(0, 4, 2, 32)
    if heads_dim:
        q, k, v = q.unflatten(1, (4, 32)), k.unflatten(1, (2, 32)), v.unflatten(1, (2, 32))
    kc, vc = torch.randn(8, 2, 32), torch.randn(8, 2, 32)
    before_k, before_v = kc.clone(), vc.clone()
    extra = (v, kc, vc, torch.zeros(0, dtype=torch.int32)) if fused else ()
    fuseinfer.ops.rope_with_cos_sin_cache(torch.zeros(0, dtype=torch.int64), q, k, 32,
                                          cos_sin(64, 32), True, *extra)
    assert q.shape[0] == 0 and k.shape[0] == 0
    assert torch.equal(kc, before_k) and torch.equal(vc, before_v)


def test_zero_tokens_still_checks_head_size():
    _, q, k, _ = qkv_views(0, 4, 2, 32)
    with pytest.raises(ValueError, match="query"):
        fuseinfer.ops.rope_with_cos_sin_cache(torch.zeros(0, dtype=torch.int64), q, k, 48,
                                              cos_sin(64, 32), True)
