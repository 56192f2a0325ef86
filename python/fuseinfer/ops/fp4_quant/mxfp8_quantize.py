"""mxfp8_quantize: MXFP8 quantization of activations, E4M3 values with one E8M0
(power-of-two) scale per 32 elements, the hidden size optionally padded inside the kernel.

    scale[m, b] = the smallest power of two >= amax(|x[m, 32b : 32b + 32]|) / 448
    q[m, k]     = e4m3(x[m, k] / scale[m, k // 32])          (RN, <= 448)

Scale rule as mxfp4_quantize's (rounded up, so nothing saturates; exact division by a power
of two), with 448 for E4M3's largest value.

output_hidden_size N >= K (a multiple of 32; default K): q is float8_e4m3fn [M, N] whose
columns K..N are zero and whose padded blocks get zero-amax scales (byte 0), written by the
same kernel: no separate pad copy before it or slice after (GPT-OSS pads 2880 to 3072 for
its MXFP8 x MXFP4 expert GEMMs). scales: uint8 E8M0 [M, N / 32] (linear, the default) or
swizzled 128x4 ([R, S], zero padding; fp4_quant/scale_layout.py). The op's schema takes N
from q's width.

input: [M, K] bf16 or fp16, contiguous last dim, K a multiple of 32 (else ValueError).
CUDA: the family's kernel (csrc/fp4_quant): one pass, no host sync, PDL; bit for bit the
reference below. CPU: the reference.
"""

from __future__ import annotations

import torch

from ..arg_checks import fail
from ..library import define, impl_cpu, impl_cuda_on_first_use, impl_fake
from ..quant.fp4_format import e8m0_ceil, e8m0_to_float
from .checks import MXFP8, blocks, check_input, check_outputs, divided, empty_outputs
from .dispatch import load_cuda
from .scale_layout import write_scales

_SCHEMA = ("mxfp8_quantize(Tensor(a!) q, Tensor(b!) scales, Tensor input, "
           "bool swizzled_scales=False, bool? enable_pdl=None) -> ()")
E4M3_MAX = 448.0


def reference_mxfp8_quantize(x: torch.Tensor, output_hidden_size: int | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The semantics in float32 on x's device: (q float8_e4m3fn [M, N], linear E8M0 scales
    uint8 [M, N / 32]), N = output_hidden_size or K."""
    m, k = x.shape
    n = k if output_hidden_size is None else output_hidden_size
    padded = torch.nn.functional.pad(x.float(), (0, n - k))
    b, amax = blocks(padded, 32)
    scale = e8m0_ceil(divided(amax, E4M3_MAX))
    q = (b / e8m0_to_float(scale)[..., None]).clamp(-E4M3_MAX, E4M3_MAX)
    return q.to(torch.float8_e4m3fn).reshape(m, n), scale


def _out_cols(q: torch.Tensor, input: torch.Tensor) -> int:
    k = input.shape[1]
    n = q.shape[1] if q.dim() == 2 else -1
    if n < k or n % 32:
        fail(MXFP8.op, "q", f"must be [tokens, output_hidden_size] with output_hidden_size "
             f">= {k} and a multiple of 32, got {list(q.shape)}")
    return n


def _check(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor,
           swizzled_scales: bool = False, enable_pdl: bool | None = None) -> None:
    check_input(MXFP8, input)
    check_outputs(MXFP8, q, scales, input, _out_cols(q, input), swizzled_scales)


def _cpu(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor,
         swizzled_scales: bool = False, enable_pdl: bool | None = None) -> None:
    _check(q, scales, input, swizzled_scales)
    ref_q, ref_s = reference_mxfp8_quantize(input, q.shape[1])
    q.copy_(ref_q)
    write_scales(scales, ref_s, swizzled_scales)


def mxfp8_quantize(input: torch.Tensor, output_hidden_size: int | None = None, *,
                   swizzled_scales: bool = False, enable_pdl: bool | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(q float8_e4m3fn [M, N], E8M0 scales uint8 [M, N / 32], or swizzled [R, S]) of input
    [M, K], N = output_hidden_size or K (columns past K zero)."""
    n = input.shape[-1] if output_hidden_size is None else output_hidden_size
    if n < input.shape[-1] or n % 32:
        fail(MXFP8.op, "output_hidden_size", f"must be >= the hidden size "
             f"({input.shape[-1]}) and a multiple of 32, got {n}")
    q, scales = empty_outputs(MXFP8, input, n, swizzled_scales)
    torch.ops.fuseinfer.mxfp8_quantize(q, scales, input, swizzled_scales=swizzled_scales,
                                       enable_pdl=enable_pdl)
    return q, scales


define(_SCHEMA)
impl_cpu("mxfp8_quantize", _cpu)
impl_fake("mxfp8_quantize", _check)
impl_cuda_on_first_use("mxfp8_quantize", _check, load_cuda)

__all__ = ["mxfp8_quantize"]
