"""The FP4 / MX quantizers' CUDA kernel (csrc/fp4_quant) against the CPU reference (itself
checked against an independent oracle in tests/test_fp4_quant.py), bit for bit: q and
every byte of the scales, padding included, in both layouts; 1..8192 tokens, hidden 2880 /
4096 / 7168, bf16 and fp16, strided rows; outputs poisoned first (an unwritten byte
fails); PDL on and off; replays in a CUDA graph with new data; the expert-grouped nvfp4
variant with few experts (a linear scan of the offsets) and many (a binary search), empty experts
included. On Hopper this is the software E2M1 rounding; the sm_100a hardware path is
compile-checked only."""

from __future__ import annotations

import pytest
import torch

from fuseinfer.ops import mxfp4_quantize, mxfp8_quantize, nvfp4_quantize
from fuseinfer.ops.fp4_quant.nvfp4_quantize import global_scale_for

HIDDEN = (2880, 4096, 7168)
TOKENS = (1, 5, 16, 130, 1024)
DTYPES = (torch.bfloat16, torch.float16)
POISON = 0xFF


def _data(m: int, k: int, dtype: torch.dtype, stride_pad: int = 0) -> torch.Tensor:
    x = torch.randn(m, k + stride_pad, device="cuda") * \
        torch.rand(m, 1, device="cuda").mul(8).add(0.05)
    x = x.to(dtype)[:, :k]
    if m > 2:
        x[1, :32] = 0.0  # an all-zero block
        x[2, :16] = -0.0
    return x


def _poisoned(t: torch.Tensor) -> torch.Tensor:
    t.view(torch.uint8).fill_(POISON)
    return t


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8).cpu()


def _run(op: str, x: torch.Tensor, swizzled: bool, pdl: bool | None = None,
         n: int | None = None, gs: torch.Tensor | None = None,
         offsets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The op on x's device with poisoned destinations."""
    if op == "nvfp4":
        q, s = nvfp4_quantize(x, gs, swizzled_scales=swizzled, expert_offsets=offsets)
        _poisoned(q), _poisoned(s)
        torch.ops.fuseinfer.nvfp4_quantize(q, s, x, gs, swizzled, offsets, enable_pdl=pdl)
    elif op == "mxfp4":
        q, s = mxfp4_quantize(x, swizzled_scales=swizzled)
        _poisoned(q), _poisoned(s)
        torch.ops.fuseinfer.mxfp4_quantize(q, s, x, swizzled, enable_pdl=pdl)
    else:
        q, s = mxfp8_quantize(x, n, swizzled_scales=swizzled)
        _poisoned(q), _poisoned(s)
        torch.ops.fuseinfer.mxfp8_quantize(q, s, x, swizzled, enable_pdl=pdl)
    return q, s


def _check(op: str, x: torch.Tensor, swizzled: bool, pdl: bool | None = None,
           n: int | None = None, offsets: torch.Tensor | None = None,
           gs: torch.Tensor | None = None) -> None:
    if op == "nvfp4" and gs is None:
        gs = global_scale_for(x)
    got = _run(op, x, swizzled, pdl, n, gs, offsets)
    torch.cuda.synchronize()
    want = _run(op, x.cpu(), swizzled, None, n, None if gs is None else gs.cpu(),
                None if offsets is None else offsets.cpu())
    assert torch.equal(_bits(got[0]), _bits(want[0])), "q differs"
    assert torch.equal(_bits(got[1]), _bits(want[1])), "scales differ"


@pytest.mark.parametrize("op", ["nvfp4", "mxfp4", "mxfp8"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("swizzled", [False, True])
def test_bit_exact_against_the_reference(op, dtype, hidden, tokens, swizzled):
    _check(op, _data(tokens, hidden, dtype), swizzled)


@pytest.mark.parametrize("op", ["nvfp4", "mxfp4", "mxfp8"])
def test_8192_tokens(op):
    _check(op, _data(8192, 7168, torch.bfloat16), swizzled=op == "nvfp4")


@pytest.mark.parametrize("op", ["nvfp4", "mxfp4", "mxfp8"])
def test_strided_rows(op):
    _check(op, _data(37, 4096, torch.bfloat16, stride_pad=64), swizzled=True)


@pytest.mark.parametrize("tokens, n", [(1, 3072), (77, 3072), (1024, 3072), (5, 2944)])
def test_mxfp8_pads_inside_the_kernel(tokens, n):
    x = _data(tokens, 2880, torch.bfloat16)
    for swizzled in (False, True):
        _check("mxfp8", x, swizzled, n=n)
    q, s = mxfp8_quantize(x, n)
    assert not q[:, 2880:].float().any()


@pytest.mark.parametrize("op", ["nvfp4", "mxfp4", "mxfp8"])
def test_pdl_on_and_off_give_the_same_bits(op):
    x = _data(300, 7168, torch.bfloat16)
    gs = global_scale_for(x) if op == "nvfp4" else None
    on = _run(op, x, True, True, gs=gs)
    off = _run(op, x, True, False, gs=gs)
    assert torch.equal(_bits(on[0]), _bits(off[0])) and torch.equal(_bits(on[1]), _bits(off[1]))


def _offsets(counts: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()], dtype=torch.int32,
                        device="cuda")


@pytest.mark.parametrize("counts", [
    [3, 0, 250], [1], [100, 28, 0, 0, 129, 1, 7, 64],  # few experts: a linear scan (<= 8)
    [5, 0, 17, 3, 130, 0, 1, 9, 44],  # nine experts: shared memory
])
@pytest.mark.parametrize("swizzled", [False, True])
def test_expert_grouped_nvfp4(counts, swizzled):
    m = sum(counts)
    x = _data(m, 2880, torch.bfloat16)
    gs = torch.rand(len(counts), device="cuda").add(0.5) * global_scale_for(x)
    _check("nvfp4", x, swizzled, offsets=_offsets(counts), gs=gs)


def test_expert_grouped_many_experts():
    g = torch.Generator().manual_seed(1)
    counts = torch.randint(0, 40, (256,), generator=g).tolist()
    counts[7] = 0
    x = _data(sum(counts), 4096, torch.float16)
    gs = torch.rand(256, device="cuda").add(0.5) * global_scale_for(x)
    for swizzled in (False, True):
        _check("nvfp4", x, swizzled, offsets=_offsets(counts), gs=gs)


@pytest.mark.parametrize("op", ["nvfp4", "mxfp4", "mxfp8"])
def test_replays_in_a_cuda_graph_with_new_data(op):
    x = _data(64, 7168, torch.bfloat16)
    gs = torch.ones(1, device="cuda") * 100.0
    q, s = _run(op, x, True, gs=gs)  # builds and loads outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        if op == "nvfp4":
            torch.ops.fuseinfer.nvfp4_quantize(q, s, x, gs, True)
        elif op == "mxfp4":
            torch.ops.fuseinfer.mxfp4_quantize(q, s, x, True)
        else:
            torch.ops.fuseinfer.mxfp8_quantize(q, s, x, True)
    for _ in range(2):
        x.copy_(_data(64, 7168, torch.bfloat16))
        gs.fill_(float(global_scale_for(x)))
        _poisoned(q), _poisoned(s)
        graph.replay()
        torch.cuda.synchronize()
        want = _run(op, x.cpu(), True, gs=gs.cpu())
        assert torch.equal(_bits(q), _bits(want[0])) and torch.equal(_bits(s), _bits(want[1]))


def test_cuda_argument_errors():
    x = torch.randn(4, 256, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="16-byte aligned rows"):
        mxfp4_quantize(torch.randn(4, 300, device="cuda", dtype=torch.bfloat16)[:, 4:260])
    with pytest.raises(ValueError, match="multiple of 16"):
        nvfp4_quantize(x[:, :40], torch.ones(1, device="cuda"))
    with pytest.raises(ValueError, match="global_scale"):
        nvfp4_quantize(x, torch.ones(2, device="cuda"))
