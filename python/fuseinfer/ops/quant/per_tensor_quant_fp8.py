"""per_tensor_quant_fp8: FP8 (e4m3) quantization with one scale for the whole tensor,
dynamic (computed from the data) or static (given).

    dynamic: scale = max(amax(|x|), 1e-10) / 448        (written to `scale`)
    static:  scale = scale[0]                           (read from `scale`)
    q        = fp8(clamp(x / scale, -448, 448))         (round to nearest even)

input [M, K] bf16, fp16 or fp32 with a contiguous last dim (any row stride); q [M, K]
float8_e4m3fn with a contiguous last dim; scale float32 with one element. Math in fp32.
CUDA (Triton, PDL on sm_90+ unless enable_pdl=False): dynamic is two kernels, a
reduction into a zeroed float32 word with atomic max, then the quantize kernel reading the
scale from device memory, so nothing waits on the host and the op captures into a CUDA
graph; static is the quantize kernel alone. CPU: the reference below.
"""

from __future__ import annotations

import torch

from ..arg_checks import fail
from ..library import LIB, define, impl_cpu, impl_fake
from ..triton_launch import next_pow2, use_pdl
from .per_token_group_quant_fp8 import EPS, FP8_MAX, divided
from .quant_checks import FP8, check_rows_quant

_SCHEMA = ("per_tensor_quant_fp8(Tensor(a!) q, Tensor(b!) scale, Tensor input, "
           "bool is_static=False, bool? enable_pdl=None) -> ()")
OP = "per_tensor_quant_fp8"
_TILE = 8192  # elements per program: few atomics on the amax word, enough loads in flight


def reference_per_tensor_quant_fp8(x: torch.Tensor, scale: torch.Tensor | None = None
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The semantics in float32: (q float8_e4m3fn [M, K], scale float32 [1]); `scale`
    given: static quantization with it."""
    xf = x.float()
    if scale is None:
        scale = divided((xf.abs().amax() if xf.numel() else xf.new_zeros(())).clamp_min(EPS),
                        FP8_MAX)
    scale = scale.float().reshape(1)
    return (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def _check(q: torch.Tensor, scale: torch.Tensor, input: torch.Tensor,
           is_static: bool = False, enable_pdl: bool | None = None) -> None:
    check_rows_quant(OP, q, input)
    if scale.numel() != 1 or scale.dtype != torch.float32 or scale.device != input.device:
        fail(OP, "scale", f"must be a float32 tensor of one element on {input.device}, got "
             f"{scale.dtype} {list(scale.shape)} on {scale.device}")


def _cpu(q: torch.Tensor, scale: torch.Tensor, input: torch.Tensor, is_static: bool = False,
         enable_pdl: bool | None = None) -> None:
    _check(q, scale, input)
    ref_q, ref_s = reference_per_tensor_quant_fp8(input, scale if is_static else None)
    q.copy_(ref_q)
    if not is_static:
        scale.copy_(ref_s.reshape(scale.shape))


def launch_per_tensor_quant_fp8(q: torch.Tensor, scale: torch.Tensor, input: torch.Tensor,
                                is_static: bool, pdl: bool) -> None:
    """The Triton launches (also used directly by the interpreter tests on the CPU)."""
    from ...triton.fp8_quant import per_tensor_quant_fp8_kernel, tensor_amax_kernel

    rows, k = input.shape
    # the reduction's word (dynamic only; a static launch passes scale in its place)
    amax = scale if is_static else torch.zeros(1, dtype=torch.float32, device=input.device)
    block = min(next_pow2(k), 1024) if k else 1
    tile_rows = max(1, _TILE // block)
    grid = (-(-rows // tile_rows), -(-k // block))
    extra = {"launch_pdl": True} if pdl else {}
    if not is_static and rows and k:
        tensor_amax_kernel[grid](input, amax, rows, k, input.stride(0), ROWS=tile_rows,
                                 BLOCK=block, USE_PDL=pdl, num_warps=8, **extra)
    if rows == 0 or k == 0:
        if not is_static:  # nothing to reduce: the scale of an all-zero tensor
            scale.fill_(EPS / FP8_MAX)
        return
    per_tensor_quant_fp8_kernel[grid](
        input, q, scale, amax, rows, k, input.stride(0), q.stride(0), EPS, FP8_MAX,
        ROWS=tile_rows, BLOCK=block, STATIC=is_static, USE_PDL=pdl,
        EXACT_ROUNDING=input.device.type == "cpu", num_warps=8, **extra)


def _cuda(q: torch.Tensor, scale: torch.Tensor, input: torch.Tensor, is_static: bool = False,
          enable_pdl: bool | None = None) -> None:
    _check(q, scale, input)
    launch_per_tensor_quant_fp8(q, scale, input, is_static, use_pdl(enable_pdl, input.device))


def per_tensor_quant_fp8(input: torch.Tensor, scale: torch.Tensor | None = None, *,
                         enable_pdl: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(q float8_e4m3fn [M, K], scale float32 [1]) of input [M, K]: dynamic when scale is
    None, else static with the given scale (returned as is)."""
    q = torch.empty(input.shape, dtype=FP8, device=input.device)
    is_static = scale is not None
    if scale is None:
        scale = torch.empty(1, dtype=torch.float32, device=input.device)
    torch.ops.fuseinfer.per_tensor_quant_fp8(q, scale, input, is_static=is_static,
                                             enable_pdl=enable_pdl)
    return q, scale


define(_SCHEMA)
impl_cpu(OP, _cpu)
impl_fake(OP, _check)
LIB.impl(OP, _cuda, "CUDA")


__all__ = ["per_tensor_quant_fp8"]
