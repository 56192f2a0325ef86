"""RoPE cos/sin cache: plain, Llama 3.1 and YaRN frequencies against float64 formulas written
out independently here, cache layout and rounding, real-model configs, every error."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fuseinfer.ops.rope.cos_sin_cache import (
    DefaultScaling,
    Llama3Scaling,
    RopeSpec,
    YarnScaling,
    attention_scaling,
    build_cos_sin_cache,
    inv_freq,
    rope_scaling_from_config,
)

LLAMA31_8B = {
    "hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}
DEEPSEEK_V3 = {
    "hidden_size": 7168, "num_attention_heads": 128, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64, "v_head_dim": 128, "max_position_embeddings": 163840,
    "rope_theta": 10000,
    "rope_scaling": {"rope_type": "yarn", "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "beta_fast": 32,
                     "beta_slow": 1},
}
GPT_OSS = {
    "hidden_size": 2880, "num_attention_heads": 64, "head_dim": 64,
    "max_position_embeddings": 131072, "rope_theta": 150000,
    "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                     "original_max_position_embeddings": 4096, "truncate": False},
}


def with_rope(config, **rope):
    return {**config, "rope_scaling": {**config["rope_scaling"], **rope}}


# --- independent float64 formulas (Python scalars, no torch) --------------------------------


def plain_freqs(base, dim):
    return [base ** (-(2 * i) / dim) for i in range(dim // 2)]


def llama31_freqs(base, dim, factor, low, high, old_context):
    """Meta's reference `apply_scaling` loop for Llama 3.1."""
    out = []
    for freq in plain_freqs(base, dim):
        wavelen = 2 * math.pi / freq
        if wavelen < old_context / high:
            out.append(freq)
        elif wavelen > old_context / low:
            out.append(freq / factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return out


def yarn_bounds(base, dim, original, beta_fast, beta_slow, truncate):
    """Pair index i whose wavelength 2*pi*base^(2i/dim) fits n times into `original`."""
    def index_for(n):
        return dim / 2 * math.log(original / (2 * math.pi * n), base)

    low, high = index_for(beta_fast), index_for(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)


def yarn_freqs(base, dim, factor, original, beta_fast=32, beta_slow=1, truncate=True):
    low, high = yarn_bounds(base, dim, original, beta_fast, beta_slow, truncate)
    if high == low:
        high = low + 0.001
    out = []
    for i, freq in enumerate(plain_freqs(base, dim)):
        t = min(max((i - low) / (high - low), 0.0), 1.0)
        out.append(freq * (1 - t) + freq / factor * t)
    return out


def yarn_mscale(factor, m=1.0):
    return 1.0 if factor <= 1 else 1.0 + 0.1 * m * math.log(factor)


def reference_rows(freqs, positions, scale=1.0):
    rows = [[math.cos(p * f) * scale for f in freqs] + [math.sin(p * f) * scale for f in freqs]
            for p in positions]
    return torch.tensor(rows, dtype=torch.float64)


def fresh_positions(max_position, n=48):
    drawn = torch.randint(0, max_position, (n,)).tolist()
    return sorted({0, 1, max_position - 1, *drawn})


def assert_rounded(cache_rows, ref):
    """Each float32 entry is ref rounded to nearest (half an ulp, plus float64 noise)."""
    ref32 = ref.to(torch.float32).abs()
    half_ulp = (torch.nextafter(ref32, torch.full_like(ref32, math.inf)) - ref32).double() / 2
    err = (cache_rows.double() - ref).abs()
    assert not torch.isnan(cache_rows).any()
    assert bool((err <= half_ulp * (1 + 1e-6) + 1e-15).all()), f"max error {err.max().item()}"


def assert_freqs(got, want):
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-13, atol=0)


# --- plain RoPE and layout ---------------------------------------------------------------


@pytest.mark.parametrize("head_dim,base,max_position", [(128, 10000.0, 200_000),
                                                        (64, 1e6, 40_000), (96, 500000.0, 8192)])
def test_plain_against_textbook(head_dim, base, max_position):
    spec = RopeSpec(head_dim, head_dim, base, max_position)
    assert_freqs(inv_freq(spec), plain_freqs(base, head_dim))
    cache = build_cos_sin_cache(spec)
    assert cache.dtype == torch.float32 and cache.shape == (max_position, head_dim)
    assert cache.is_contiguous()
    positions = fresh_positions(max_position)
    ref = reference_rows(plain_freqs(base, head_dim), positions)
    assert_rounded(cache[positions], ref)
    # The bound is tight: the same table computed in float32 misses it at large positions.
    f32 = torch.outer(torch.tensor(positions, dtype=torch.float32),
                      torch.tensor(plain_freqs(base, head_dim), dtype=torch.float32))
    naive = torch.cat((f32.cos(), f32.sin()), dim=-1)
    assert (naive.double() - ref).abs().max().item() > 1e-4


def test_layout_first_half_cos_second_half_sin():
    spec = rope_scaling_from_config({"head_dim": 32, "hidden_size": 256,
                                     "num_attention_heads": 4, "rope_theta": 10000.0,
                                     "max_position_embeddings": 1000})
    assert spec.scaling == DefaultScaling() and spec.rotary_dim == 32
    cache = build_cos_sin_cache(spec).double()
    assert torch.equal(cache[0], torch.tensor([1.0] * 16 + [0.0] * 16, dtype=torch.float64))
    # Row 1: the first pair has angle exactly 1 radian.
    assert cache[1, 0].item() == pytest.approx(math.cos(1.0), abs=1e-7)
    assert cache[1, 16].item() == pytest.approx(math.sin(1.0), abs=1e-7)
    cos, sin = cache[:, :16], cache[:, 16:]
    torch.testing.assert_close(cos.square() + sin.square(), torch.ones_like(cos), atol=2e-7,
                               rtol=0)
    # sin(p * f) for the highest-frequency pair equals sin(p): tells the halves apart.
    positions = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(sin[:, 0], positions.sin(), atol=1e-7, rtol=0)
    torch.testing.assert_close(cos[:, 0], positions.cos(), atol=1e-7, rtol=0)


@pytest.mark.parametrize("config,rotary_dim,head_dim", [
    ({"hidden_size": 2560, "num_attention_heads": 32, "partial_rotary_factor": 0.4}, 32, 80),
    ({"head_dim": 128, "hidden_size": 4096, "num_attention_heads": 96,
      "partial_rotary_factor": 0.5}, 64, 128),
    ({"head_dim": 128, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                           "partial_rotary_factor": 0.25}}, 32, 128),
])
def test_partial_rotary(config, rotary_dim, head_dim):
    config = {"rope_theta": 10000.0, "max_position_embeddings": 4096, **config}
    spec = rope_scaling_from_config(config)
    assert (spec.head_dim, spec.rotary_dim) == (head_dim, rotary_dim)
    # Frequencies are spread over the rotated width, not the head width.
    assert_freqs(inv_freq(spec), plain_freqs(10000.0, rotary_dim))
    cache = build_cos_sin_cache(spec)
    assert cache.shape == (4096, rotary_dim)
    positions = fresh_positions(4096)
    assert_rounded(cache[positions], reference_rows(plain_freqs(10000.0, rotary_dim), positions))


def test_config_field_sources():
    # rope_theta inside rope_parameters (transformers v5) wins over the top-level one.
    spec = rope_scaling_from_config({"head_dim": 64, "max_position_embeddings": 16,
                                     "rope_theta": 1.0e4,
                                     "rope_parameters": {"rope_type": "default",
                                                         "rope_theta": 1.0e6}})
    assert spec.base == 1.0e6
    spec = rope_scaling_from_config({"head_dim": 64, "max_position_embeddings": 16},
                                    default_theta=5.0e5)
    assert spec.base == 5.0e5 and spec.scaling == DefaultScaling()
    # Legacy `type` key; rope_scaling: null means plain RoPE.
    old = {**DEEPSEEK_V3, "rope_scaling": {**DEEPSEEK_V3["rope_scaling"], "type": "yarn"}}
    del old["rope_scaling"]["rope_type"]
    assert rope_scaling_from_config(old) == rope_scaling_from_config(DEEPSEEK_V3)
    plain = rope_scaling_from_config({**LLAMA31_8B, "rope_scaling": None})
    assert plain.scaling == DefaultScaling() and plain.rotary_dim == 128
    # One rope dict per layer type.
    per_layer = {"head_dim": 64, "max_position_embeddings": 4096, "rope_parameters": {
        "full_attention": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 8.0,
                           "original_max_position_embeddings": 512},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}
    full = rope_scaling_from_config(per_layer, layer_type="full_attention")
    sliding = rope_scaling_from_config(per_layer, layer_type="sliding_attention")
    assert isinstance(full.scaling, YarnScaling) and full.base == 1e6
    assert sliding.scaling == DefaultScaling() and sliding.base == 1e4


# --- Llama 3.1 ---------------------------------------------------------------------------


def test_llama3_real_config_bands():
    spec = rope_scaling_from_config(LLAMA31_8B)
    assert spec.scaling == Llama3Scaling(8.0, 1.0, 4.0, 8192)
    assert (spec.head_dim, spec.rotary_dim, spec.max_position) == (128, 128, 131072)
    want = llama31_freqs(500000.0, 128, 8.0, 1.0, 4.0, 8192)
    assert_freqs(inv_freq(spec), want)
    # All three bands are exercised, so a swapped band would fail above.
    plain = plain_freqs(500000.0, 128)
    kept = sum(w == p for w, p in zip(want, plain, strict=True))
    divided = sum(w == p / 8.0 for w, p in zip(want, plain, strict=True))
    assert kept > 0 and divided > 0 and kept + divided < 64
    assert attention_scaling(spec) == 1.0
    small = dataclasses.replace(spec, max_position=20000)
    positions = fresh_positions(20000)
    assert_rounded(build_cos_sin_cache(small)[positions], reference_rows(want, positions))


@pytest.mark.parametrize("trial", range(4))
def test_llama3_random_parameters(trial):
    dim = 2 * int(torch.randint(8, 80, ()).item())
    base = float(torch.empty(()).uniform_(1e3, 1e6))
    factor = float(torch.empty(()).uniform_(1.5, 32))
    low = float(torch.empty(()).uniform_(0.5, 2))
    high = low + float(torch.empty(()).uniform_(0.5, 8))
    old = int(torch.randint(256, 16384, ()).item())
    spec = RopeSpec(dim, dim, base, 64, Llama3Scaling(factor, low, high, old))
    assert_freqs(inv_freq(spec), llama31_freqs(base, dim, factor, low, high, old))


# --- YaRN --------------------------------------------------------------------------------


def test_yarn_bounds_match_published_gpt_oss_values():
    # vLLM PR 28244 logs the untruncated GPT-OSS correction range as
    # low=8.092779115512402, high=17.39802450158856.
    low, high = yarn_bounds(150000, 64, 4096, 32, 1, truncate=False)
    assert low == pytest.approx(8.092779115512402, rel=1e-12)
    assert high == pytest.approx(17.39802450158856, rel=1e-12)


@pytest.mark.parametrize("dim,base,factor,original,beta_fast,beta_slow,truncate", [
    (64, 10000.0, 40.0, 4096, 32, 1, True),
    (64, 150000.0, 32.0, 4096, 32, 1, False),
    (128, 1e6, 4.0, 32768, 32, 1, True),
    (128, 1e6, 4.0, 32768, 16, 2, False),
    (32, 10000.0, 8.0, 512, 32, 1, True),
    (32, 10000.0, 8.0, 1_000_000, 32, 1, False),  # ramp runs past the last pair
])
def test_yarn_inv_freq_blend(dim, base, factor, original, beta_fast, beta_slow, truncate):
    scaling = YarnScaling(factor, original, beta_fast, beta_slow, truncate=truncate)
    spec = RopeSpec(dim, dim, base, 256, scaling)
    got = inv_freq(spec)
    assert_freqs(got, yarn_freqs(base, dim, factor, original, beta_fast, beta_slow, truncate))
    # Fast-turning pairs are kept, slow ones divided by the factor, the ramp lies between.
    plain = torch.tensor(plain_freqs(base, dim), dtype=torch.float64)
    low, high = yarn_bounds(base, dim, original, beta_fast, beta_slow, truncate)
    index = torch.arange(dim // 2)
    torch.testing.assert_close(got[index <= low], plain[index <= low], rtol=1e-15, atol=0)
    torch.testing.assert_close(got[index >= high], plain[index >= high] / factor, rtol=1e-15,
                               atol=0)
    assert bool((got <= plain * (1 + 1e-15)).all())
    assert bool((got >= plain / factor * (1 - 1e-15)).all())


def test_yarn_truncate_changes_the_ramp():
    untruncated = rope_scaling_from_config(GPT_OSS)
    default = rope_scaling_from_config(with_rope(GPT_OSS, truncate=True))
    missing = {**GPT_OSS, "rope_scaling": {k: v for k, v in GPT_OSS["rope_scaling"].items()
                                           if k != "truncate"}}
    assert untruncated.scaling.truncate is False
    assert rope_scaling_from_config(missing).scaling.truncate is True  # transformers' default
    assert not torch.equal(inv_freq(untruncated), inv_freq(default))
    assert_freqs(inv_freq(default), yarn_freqs(150000, 64, 32.0, 4096, truncate=True))


@pytest.mark.parametrize("rope,want", [
    ({}, yarn_mscale(4.0)),
    ({"mscale": 0.707, "mscale_all_dim": 0.707}, 1.0),
    ({"mscale": 1.0, "mscale_all_dim": 0.5}, yarn_mscale(4.0, 1.0) / yarn_mscale(4.0, 0.5)),
    ({"mscale": 2.0, "mscale_all_dim": 0}, yarn_mscale(4.0)),  # both needed, else default
    ({"mscale_all_dim": 1.0}, yarn_mscale(4.0)),
    ({"attention_factor": 0.9, "mscale": 1.0, "mscale_all_dim": 0.5}, 0.9),
    ({"factor": 1.0}, 1.0),
    ({"factor": 0.5}, 1.0),
])
def test_yarn_attention_scaling(rope, want):
    config = {"head_dim": 32, "rope_theta": 10000.0, "max_position_embeddings": 3000,
              "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                               "original_max_position_embeddings": 750, **rope}}
    spec = rope_scaling_from_config(config)
    assert attention_scaling(spec) == pytest.approx(want, rel=1e-15)
    cache = build_cos_sin_cache(spec).double()
    cos, sin = cache[:, :16], cache[:, 16:]
    torch.testing.assert_close(cos.square() + sin.square(), torch.full_like(cos, want ** 2),
                               rtol=1e-6, atol=0)
    positions = fresh_positions(3000)
    freqs = yarn_freqs(10000.0, 32, spec.scaling.factor, 750)
    assert_rounded(cache[positions].float(), reference_rows(freqs, positions, want))


def test_yarn_null_factor_is_the_context_ratio():
    config = {"head_dim": 32, "rope_theta": 10000.0, "max_position_embeddings": 8192,
              "rope_scaling": {"rope_type": "yarn", "factor": None,
                               "original_max_position_embeddings": 2048}}
    assert rope_scaling_from_config(config).scaling.factor == 4.0


def test_deepseek_v3_config():
    spec = rope_scaling_from_config(DEEPSEEK_V3)
    # MLA rotates qk_rope_head_dim, not hidden_size // num_attention_heads (56).
    assert (spec.head_dim, spec.rotary_dim, spec.base, spec.max_position) == (
        64, 64, 10000.0, 163840)
    assert spec.scaling == YarnScaling(40.0, 4096, 32.0, 1.0, mscale=1.0, mscale_all_dim=1.0)
    assert attention_scaling(spec) == 1.0
    assert_freqs(inv_freq(spec), yarn_freqs(10000.0, 64, 40.0, 4096))
    # A head_dim meaning the full q/k head (nope + rope) does not widen the rotated part.
    assert rope_scaling_from_config({**DEEPSEEK_V3, "head_dim": 192}) == spec
    cache = build_cos_sin_cache(spec)
    assert cache.shape == (163840, 64) and cache.dtype == torch.float32
    assert bool(torch.isfinite(cache).all())
    positions = fresh_positions(163840)
    assert_rounded(cache[positions], reference_rows(yarn_freqs(10000.0, 64, 40.0, 4096),
                                                    positions))


def test_gpt_oss_config():
    spec = rope_scaling_from_config(GPT_OSS)
    assert (spec.head_dim, spec.rotary_dim, spec.base, spec.max_position) == (
        64, 64, 150000.0, 131072)
    scale = attention_scaling(spec)
    assert scale == pytest.approx(1 + 0.1 * math.log(32), rel=1e-15)
    freqs = yarn_freqs(150000.0, 64, 32.0, 4096, truncate=False)
    assert_freqs(inv_freq(spec), freqs)
    cache = build_cos_sin_cache(spec)
    assert cache.shape == (131072, 64) and bool(torch.isfinite(cache).all())
    assert cache.abs().max().item() <= scale * (1 + 1e-7)
    positions = fresh_positions(131072)
    assert_rounded(cache[positions], reference_rows(freqs, positions, scale))


def test_device_argument():
    spec = RopeSpec(16, 16, 10000.0, 8)
    assert build_cos_sin_cache(spec, device="meta").device.type == "meta"
    assert torch.equal(build_cos_sin_cache(spec, device="cpu"), build_cos_sin_cache(spec))


# --- errors ------------------------------------------------------------------------------

BASE = {"head_dim": 64, "rope_theta": 10000.0, "max_position_embeddings": 4096}


def drop(mapping, key):
    return {k: v for k, v in mapping.items() if k != key}


@pytest.mark.parametrize("config,match", [
    ({**BASE, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope_type.*dynamic"),
    ({**BASE, "rope_scaling": {"type": "linear", "factor": 2.0}}, "'type'.*linear"),
    ({**BASE, "rope_parameters": {"rope_type": "nope"}}, "rope_parameters.*rope_type"),
    ({**BASE, "partial_rotary_factor": 0.3}, "rotary_dim.*19"),
    ({**BASE, "head_dim": 63}, "rotary_dim.*63"),
    ({**BASE, "partial_rotary_factor": 1.5}, "rotary_dim.*96"),
    ({**BASE, "partial_rotary_factor": 0}, "partial_rotary_factor"),
    ({**BASE, "partial_rotary_factor": 0.5,
      "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.25}},
     "partial_rotary_factor.*disagree"),
    (with_rope(LLAMA31_8B, factor=0), "factor"),
    (with_rope(LLAMA31_8B, factor=-8.0), "factor"),
    (with_rope(LLAMA31_8B, factor="8"), "factor must be a number"),
    (with_rope(DEEPSEEK_V3, factor=0), "factor"),
    (with_rope(GPT_OSS, factor=-32.0), "factor"),
    (with_rope(LLAMA31_8B, high_freq_factor=1.0), "high_freq_factor"),
    (with_rope(GPT_OSS, beta_fast=0.5), "beta_fast"),
    (with_rope(GPT_OSS, attention_factor=0.0), "attention_factor"),
    ({**LLAMA31_8B, "rope_scaling": drop(LLAMA31_8B["rope_scaling"], "factor")},
     "factor is required"),
    ({**LLAMA31_8B, "rope_scaling": drop(LLAMA31_8B["rope_scaling"], "low_freq_factor")},
     "low_freq_factor is required"),
    ({**LLAMA31_8B, "rope_scaling": drop(LLAMA31_8B["rope_scaling"], "high_freq_factor")},
     "high_freq_factor is required"),
    ({**GPT_OSS, "rope_scaling": drop(GPT_OSS["rope_scaling"], "factor")}, "factor is required"),
    (drop(BASE, "max_position_embeddings"), "max_position_embeddings"),
    ({**BASE, "max_position_embeddings": 0}, "max_position_embeddings"),
    (drop(BASE, "rope_theta"), "rope_theta"),
    ({**BASE, "rope_theta": 1.0}, "rope_theta"),
    (drop(BASE, "head_dim"), "head_dim"),
    ({**drop(BASE, "head_dim"), "hidden_size": 4096}, "head_dim"),
    ({**BASE, "rope_scaling": [1, 2]}, "rope_scaling must be a dict"),
    ({**BASE, "rope_parameters": {"full_attention": {"rope_type": "default"}}}, "layer_type"),
])
def test_config_errors(config, match):
    with pytest.raises(ValueError, match=match):
        rope_scaling_from_config(config)


@pytest.mark.parametrize("build,match", [
    (lambda: RopeSpec(64, 65, 10000.0, 16), "rotary_dim"),
    (lambda: RopeSpec(64, 33, 10000.0, 16), "rotary_dim must be even"),
    (lambda: RopeSpec(64, 128, 10000.0, 16), "rotary_dim"),
    (lambda: RopeSpec(64, 0, 10000.0, 16), "rotary_dim"),
    (lambda: RopeSpec(64, 64, 10000.0, 0), "max_position"),
    (lambda: RopeSpec(64, 64, float("nan"), 16), "base"),
    (lambda: RopeSpec(64, 64, 10000.0, 16, scaling="yarn"), "scaling"),
    (lambda: Llama3Scaling(0.0, 1.0, 4.0, 8192), "factor"),
    (lambda: Llama3Scaling(8.0, 4.0, 4.0, 8192), "high_freq_factor"),
    (lambda: Llama3Scaling(8.0, 1.0, 4.0, 0), "original_max_position_embeddings"),
    (lambda: YarnScaling(-1.0, 4096), "factor"),
    (lambda: YarnScaling(4.0, 4096, beta_slow=0.0), "beta_slow"),
    (lambda: YarnScaling(4.0, 4096.5), "original_max_position_embeddings"),
    (lambda: YarnScaling(4.0, 4096, mscale="big"), "mscale"),
])
def test_dataclass_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()
