"""mxfp4_quantize: MXFP4 (OCP microscaling) quantization of activations, two E2M1 values per
byte with one E8M0 (power-of-two) scale per 32 elements.

    scale[m, b] = the smallest power of two >= amax(|x[m, 32b : 32b + 32]|) / 6
    q[m, k]     = e2m1(x[m, k] / scale[m, k // 32])        (RN, ties to even, <= 6)
    x          ~= e2m1_value(q) * scale     (fuseinfer.ops.quant.fp4_format.dequantize_mxfp4)

Scale rule: amax / 6 (IEEE float32 division) rounded up to a power of two, as the
block-scaled GEMM stacks' own quantizers do, rather than the OCP MX spec's
2^(floor(log2 amax) - 2). Rounding up never saturates: every element of a block lands on
the E2M1 grid within +-6, where the spec's rule clips up to a third of the block's range
(amax 7 with scale 1 stores 6). The price is at most one binade of headroom. Division by a
power of two is exact, so the rule is bit-reproducible everywhere. An all-zero block gets
byte 0 (2^-127) and zero codes (signs kept: -0 is code 8).

q: uint8 [M, K / 2], element 2i in the low nibble of byte i. scales: uint8 E8M0 (value
2^(s - 127)), linear [M, K / 32] (the default) or, with swizzled_scales, the 128x4 swizzled
layout of fp4_quant/scale_layout.py ([R, S], zero padding) that Blackwell MXFP4 GEMMs read.

input: [M, K] bf16 or fp16, contiguous last dim, K a multiple of 32 (else ValueError).
CUDA: the family's kernel (csrc/fp4_quant, as nvfp4_quantize): one pass, no host sync,
PDL; software E2M1 rounding on Hopper bit for bit the reference below, the hardware cvt on
sm_100a (compile-checked only). CPU: the reference.
"""

from __future__ import annotations

import torch

from ..library import define, impl_cpu, impl_cuda_on_first_use, impl_fake
from ..quant.fp4_format import E2M1_MAX, e2m1_round, e8m0_ceil, e8m0_to_float, pack_nibbles
from .checks import MXFP4, blocks, check_input, check_outputs, divided, empty_outputs
from .dispatch import load_cuda
from .scale_layout import write_scales

_SCHEMA = ("mxfp4_quantize(Tensor(a!) q, Tensor(b!) scales, Tensor input, "
           "bool swizzled_scales=False, bool? enable_pdl=None) -> ()")


def reference_mxfp4_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The semantics in float32 on x's device: (q uint8 [M, K / 2], linear E8M0 scales uint8
    [M, K / 32])."""
    m, k = x.shape
    b, amax = blocks(x, 32)
    scale = e8m0_ceil(divided(amax, E2M1_MAX))
    codes = e2m1_round(b / e8m0_to_float(scale)[..., None]).reshape(m, k)
    return pack_nibbles(codes), scale


def _check(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor,
           swizzled_scales: bool = False, enable_pdl: bool | None = None) -> None:
    check_input(MXFP4, input)
    check_outputs(MXFP4, q, scales, input, input.shape[1], swizzled_scales)


def _cpu(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor,
         swizzled_scales: bool = False, enable_pdl: bool | None = None) -> None:
    _check(q, scales, input, swizzled_scales)
    ref_q, ref_s = reference_mxfp4_quantize(input)
    q.copy_(ref_q)
    write_scales(scales, ref_s, swizzled_scales)


def mxfp4_quantize(input: torch.Tensor, *, swizzled_scales: bool = False,
                   enable_pdl: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(q uint8 [M, K / 2], E8M0 scales uint8 [M, K / 32], or swizzled [R, S]) of input
    [M, K]."""
    q, scales = empty_outputs(MXFP4, input, input.shape[-1], swizzled_scales)
    torch.ops.fuseinfer.mxfp4_quantize(q, scales, input, swizzled_scales=swizzled_scales,
                                       enable_pdl=enable_pdl)
    return q, scales


define(_SCHEMA)
impl_cpu("mxfp4_quantize", _cpu)
impl_fake("mxfp4_quantize", _check)
impl_cuda_on_first_use("mxfp4_quantize", _check, load_cuda)

__all__ = ["mxfp4_quantize"]
