"""qk_rmsnorm_rope (one Triton launch) on the GPU against the two kernels it replaces, run
on copies of the same inputs: qk_rmsnorm (Triton), then rope_with_cos_sin_cache with the
fused KV-cache write (CUDA). Qwen3-0.6B and -8B shapes, bf16 and fp16, 1/7/300 tokens,
same-dtype and FP8 caches, flat and paged, strided qkv (aligned and unaligned rows),
NaN-poisoned caches, PDL on and off, other head sizes, CUDA-graph capture and replay.
The results must be equal; at most a tiny fraction of elements may sit one rounding step
apart."""

from __future__ import annotations

import pytest
import torch
from qk_rope_case_tools import clone_args, ulp_distance
from qkv_cases import cos_sin

from fuseinfer.ops import qk_rmsnorm, qk_rmsnorm_rope, rope_with_cos_sin_cache

FP8 = torch.float8_e4m3fn
EPS = 1e-6
MAX_POS = 4096
PAGE = 16
QWEN3 = {"qwen3-0.6b": (16, 8, 128), "qwen3-8b": (32, 8, 128)}


def make_case(tokens, hq, hkv, d, dtype, cache_dtype=None, paged=False,
              index_dtype=torch.int64, pad=16):
    """Op arguments in schema order: qkv a strided view of a wider buffer (pad extra
    columns per row), NaN-poisoned caches, distinct random slots, FP8 scales small enough
    that some k values saturate."""
    width = (hq + 2 * hkv) * d
    buffer = torch.randn(tokens, width + pad, device="cuda", dtype=dtype)
    wq = torch.randn(d, device="cuda", dtype=dtype) * 0.3 + 1
    wk = torch.randn(d, device="cuda", dtype=dtype) * 0.3 + 1
    slots = PAGE * max(2, -(-2 * tokens // PAGE))
    shape = (slots // PAGE, PAGE, hkv, d) if paged else (slots, hkv, d)
    cache_dtype = cache_dtype or dtype
    k_cache = torch.full(shape, float("nan"), device="cuda").to(cache_dtype)
    v_cache = torch.full(shape, float("nan"), device="cuda").to(cache_dtype)
    loc = torch.randperm(slots, device="cuda")[:tokens].to(index_dtype)
    positions = torch.randint(0, MAX_POS, (tokens,), device="cuda").to(index_dtype)
    scales = (torch.tensor([0.004], device="cuda"), torch.tensor([0.02], device="cuda")) \
        if cache_dtype == FP8 else (None, None)
    args = [positions, buffer[:, :width], hq, hkv, d, wq, wk, EPS, cos_sin(MAX_POS, d),
            k_cache, v_cache, loc, *scales]
    return buffer, args



def two_kernels(args, pdl) -> None:
    positions, qkv, hq, hkv, d, wq, wk, eps, cs, k_cache, v_cache, loc, k_scale, v_scale = args
    qk_rmsnorm(qkv[:, :(hq + hkv) * d], wq, wk, hq, eps, enable_pdl=pdl)
    q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=1)
    rope_with_cos_sin_cache(positions, q, k, d, cs, True, v, k_cache, v_cache, loc, k_scale,
                            v_scale, enable_pdl=pdl)



def assert_nearly_equal(got: torch.Tensor, want: torch.Tensor, what: str,
                        max_fraction: float = 1e-3) -> None:
    """NaN exactly where want has NaN (unwritten, poisoned slots); elsewhere equal, or for
    at most max_fraction of the elements one rounding step apart."""
    assert got.dtype == want.dtype and got.shape == want.shape
    got_nan, want_nan = torch.isnan(got.float()), torch.isnan(want.float())
    assert torch.equal(got_nan, want_nan), f"{what}: NaN where a value was due, or the reverse"
    steps = ulp_distance(got[~got_nan], want[~want_nan])
    apart = int((steps > 0).sum())
    assert (int(steps.max()) if steps.numel() else 0) <= 1, \
        f"{what}: {int((steps > 1).sum())} elements more than one step apart"
    assert apart <= max_fraction * max(steps.numel(), 1), \
        f"{what}: {apart} of {steps.numel()} elements one step apart"


def run_both(buffer, args, pdl):
    want_buffer, want_args = clone_args(buffer, args)
    two_kernels(want_args, pdl)
    qk_rmsnorm_rope(*args, enable_pdl=pdl)
    torch.cuda.synchronize()
    assert_nearly_equal(buffer, want_buffer, "qkv (with pad columns)")
    assert_nearly_equal(args[9], want_args[9], "k_cache")
    assert_nearly_equal(args[10], want_args[10], "v_cache")


@pytest.mark.parametrize("pdl", [True, False])
@pytest.mark.parametrize("cache", ["same", "fp8"])
@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("tokens", [1, 7, 300])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("model", list(QWEN3))
def test_matches_the_two_kernel_sequence(model, dtype, tokens, paged, cache, pdl):
    hq, hkv, d = QWEN3[model]
    buffer, args = make_case(tokens, hq, hkv, d, dtype, FP8 if cache == "fp8" else None,
                             paged)
    run_both(buffer, args, pdl)
    loc = args[11].long()
    written = (args[9].flatten(0, 1) if paged else args[9]).flatten(1)[loc]
    assert not torch.isnan(written.float()).any()
    if cache == "fp8":
        assert (written.float().abs() == 448).any()  # saturation was exercised


@pytest.mark.parametrize("pdl", [True, False])
@pytest.mark.parametrize("model", list(QWEN3))
def test_fp8_scale_per_kv_head_matches_the_two_kernel_sequence(model, pdl):
    """One scale per KV head (out of order, 8x apart at most, none saturating): the Triton
    kernel and the CUDA RoPE kernel's fused write index them the same way, and both match
    the CPU op."""
    hq, hkv, d = QWEN3[model]
    buffer, args = make_case(33, hq, hkv, d, torch.bfloat16, FP8, True)
    spread = torch.tensor([1.0, 0.25, 2.0, 0.5, 1.5, 0.3, 0.8, 0.6],
                          device="cuda")[:hkv]
    args[12], args[13] = 0.05 * spread, 0.02 * spread.flip(0)
    cpu_buffer = buffer.cpu()
    cpu_args = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
    cpu_args[1] = cpu_buffer[:, :args[1].size(1)]
    qk_rmsnorm_rope(*cpu_args)
    run_both(buffer, args, pdl)
    for cache in (9, 10):
        got, want = args[cache].cpu().float(), cpu_args[cache].float()
        written = ~torch.isnan(want)
        assert torch.equal(torch.isnan(got), ~written)
        assert (got[written] != want[written]).float().mean() < 0.01  # rounding ties


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("hq, hkv, d", [(8, 1, 256), (4, 2, 64), (2, 1, 512), (3, 1, 128),
                                        (14, 2, 128)])
def test_other_head_shapes_int32_indices_and_unaligned_rows(dtype, hq, hkv, d):
    """Rows 8 elements past a multiple of 16: Triton then loads them in narrower pieces,
    in both Triton kernels alike."""
    buffer, args = make_case(33, hq, hkv, d, dtype, index_dtype=torch.int32, pad=8)
    run_both(buffer, args, pdl=None)


def test_pdl_on_and_off_give_identical_results():
    buffer, args = make_case(64, 32, 8, 128, torch.bfloat16, FP8, paged=True)
    results = []
    for pdl in (True, False):
        copy, copy_args = clone_args(buffer, args)
        qk_rmsnorm_rope(*copy_args, enable_pdl=pdl)
        results.append((copy, copy_args[9], copy_args[10]))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def test_cuda_graph_capture_and_replay():
    buffer, args = make_case(8, 16, 8, 128, torch.bfloat16, paged=True)
    start, caches = buffer.clone(), (args[9].clone(), args[10].clone())
    eager_buffer, eager_args = clone_args(buffer, args)
    qk_rmsnorm_rope(*eager_args)  # also compiles the kernel outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        qk_rmsnorm_rope(*args)
    buffer.copy_(start)
    args[9].copy_(caches[0])
    args[10].copy_(caches[1])
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(buffer, eager_buffer)
    for got, want in ((args[9], eager_args[9]), (args[10], eager_args[10])):
        assert torch.equal(got.view(torch.int16), want.view(torch.int16))
    # a second replay on fresh inputs, as a decode step does
    buffer.copy_(torch.randn_like(buffer))
    fresh_buffer, fresh_args = clone_args(buffer, args)
    graph.replay()
    qk_rmsnorm_rope(*fresh_args)
    torch.cuda.synchronize()
    assert torch.equal(buffer, fresh_buffer)
    for got, want in ((args[9], fresh_args[9]), (args[10], fresh_args[10])):
        assert torch.equal(got.view(torch.int16), want.view(torch.int16))


def test_zero_tokens_is_a_no_op():
    buffer, args = make_case(0, 16, 8, 128, torch.bfloat16)
    qk_rmsnorm_rope(*args)
    torch.cuda.synchronize()  # a zero-grid launch would surface here
    assert torch.isnan(args[9].float()).all() and torch.isnan(args[10].float()).all()


def test_head_size_that_is_not_a_power_of_two_is_refused_on_cuda():
    buffer, args = make_case(2, 4, 2, 96, torch.bfloat16)
    with pytest.raises(ValueError, match="head_size 96: the CUDA path needs a power of two"):
        qk_rmsnorm_rope(*args)
