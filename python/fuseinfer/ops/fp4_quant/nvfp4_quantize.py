"""nvfp4_quantize: NVFP4 quantization of activations, two E2M1 values per byte with one
E4M3 scale per 16 elements under a float32 global scale (what Blackwell NVFP4 GEMMs read).

    global_scale = 448 * 6 / amax(x)                           (the caller's, per tensor
                                                                 or per expert)
    scale[m, b]  = e4m3(global_scale * (amax(|x[m, 16b : 16b + 16]|) / 6))   (RN, <= 448)
    q[m, k]      = e2m1(x[m, k] * (global_scale / scale[m, k // 16]))       (0 if scale 0)
    x           ~= e2m1_value(q) * scale / global_scale

Every step is one float32 IEEE operation in that order; E2M1 rounding is to the nearest
value, ties to the even code, saturating at +-6 (fuseinfer.ops.quant.fp4_format).
q: uint8 [M, K / 2], element 2i in the low nibble of byte i. scales: float8_e4m3fn, linear
[M, K / 16] or (swizzled_scales, the default) the 128x4 swizzled layout of
fp4_quant/scale_layout.py, [R, S] with zeroed padding.

Expert-grouped: expert_offsets int32 [E + 1] (non-decreasing, 0 .. M) groups the rows; the
rows of expert e use global_scale[e] (float32 [E]); swizzled, each expert's scales start a
128-row tile (scale_layout.py), R = (M + 127 E) // 128 * 128. Without offsets,
global_scale has one element.

input: [M, K] bf16 or fp16, contiguous last dim, K a multiple of 16 (else ValueError).
CUDA (csrc/fp4_quant): one pass, 16-byte loads, fp32 math, every output byte written (no
memset), no host sync (CUDA-graph safe), PDL on sm_90+ unless enable_pdl=False; launch
shape from the dispatch table's fp4_quant entry. Hopper rounds to E2M1 in software, bit
for bit the reference below; sm_100a uses the hardware cvt (compile-checked only, not run
here). CPU: the reference.
"""

from __future__ import annotations

import torch

from ..library import define, impl_cpu, impl_cuda_on_first_use, impl_fake
from ..quant.fp4_format import E2M1_MAX, e2m1_decode, e2m1_round, pack_nibbles, unpack_nibbles
from .checks import (
    NVFP4,
    blocks,
    check_expert_offsets,
    check_input,
    check_outputs,
    divided,
    empty_outputs,
)
from .dispatch import load_cuda
from .scale_layout import write_scales

_SCHEMA = ("nvfp4_quantize(Tensor(a!) q, Tensor(b!) scales, Tensor input, Tensor global_scale, "
           "bool swizzled_scales=True, Tensor? expert_offsets=None, bool? enable_pdl=None) "
           "-> ()")
E4M3_MAX = 448.0


def global_scale_for(x: torch.Tensor) -> torch.Tensor:
    """float32 [1]: 448 * 6 / amax(|x|), the global scale that maps x's largest block onto
    the largest E4M3 scale times the largest E2M1 value."""
    return (E4M3_MAX * E2M1_MAX / x.abs().amax().float()).reshape(1)


def _row_global_scales(m: int, global_scale: torch.Tensor,
                       expert_offsets: torch.Tensor | None,
                       device: torch.device) -> torch.Tensor:
    """Each row's global scale, [M]."""
    gs = global_scale.float().reshape(-1).to(device)
    if expert_offsets is None:
        return gs.expand(m)
    counts = expert_offsets.to(device).long().diff()
    return gs.repeat_interleave(counts, output_size=m)


def reference_nvfp4_quantize(x: torch.Tensor, global_scale: torch.Tensor,
                             expert_offsets: torch.Tensor | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The semantics in float32 on x's device: (q uint8 [M, K / 2], linear scales
    float8_e4m3fn [M, K / 16]); the CPU kernel, the GPU tests' oracle (on the CPU) and the
    bench's torch baseline."""
    m, k = x.shape
    b, amax = blocks(x, 16)
    gs = _row_global_scales(m, global_scale, expert_offsets, x.device)[:, None]
    scale = (gs * divided(amax, E2M1_MAX)).clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)
    sf = scale.float()
    factor = torch.where(sf != 0, gs / torch.where(sf != 0, sf, 1.0), 0.0)
    codes = e2m1_round(b * factor[..., None]).reshape(m, k)
    return pack_nibbles(codes), scale


def dequantize_nvfp4(q: torch.Tensor, scales: torch.Tensor, global_scale: torch.Tensor,
                     expert_offsets: torch.Tensor | None = None) -> torch.Tensor:
    """float32 [M, K] from q and linear scales: e2m1 * scale / global_scale."""
    values = e2m1_decode(unpack_nibbles(q))
    gs = _row_global_scales(q.shape[0], global_scale, expert_offsets, q.device)[:, None]
    s = (scales.float() / gs).repeat_interleave(16, dim=-1)
    return values * s


def _check(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor,
           global_scale: torch.Tensor, swizzled_scales: bool = True,
           expert_offsets: torch.Tensor | None = None, enable_pdl: bool | None = None) -> None:
    check_input(NVFP4, input)
    experts = check_expert_offsets(NVFP4.op, expert_offsets, input)
    if global_scale.dtype != torch.float32 or global_scale.numel() != experts \
            or global_scale.device != input.device or not global_scale.is_contiguous():
        from ..arg_checks import fail

        fail(NVFP4.op, "global_scale", f"must be a contiguous float32 tensor of {experts} "
             f"element(s) (one per expert) on {input.device}, got {global_scale.dtype} "
             f"{list(global_scale.shape)} on {global_scale.device}")
    check_outputs(NVFP4, q, scales, input, input.shape[1], swizzled_scales, experts)


def _cpu(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor,
         global_scale: torch.Tensor, swizzled_scales: bool = True,
         expert_offsets: torch.Tensor | None = None, enable_pdl: bool | None = None) -> None:
    _check(q, scales, input, global_scale, swizzled_scales, expert_offsets)
    ref_q, ref_s = reference_nvfp4_quantize(input, global_scale, expert_offsets)
    q.copy_(ref_q)
    write_scales(scales, ref_s, swizzled_scales, expert_offsets)


def nvfp4_quantize(input: torch.Tensor, global_scale: torch.Tensor | float, *,
                   swizzled_scales: bool = True, expert_offsets: torch.Tensor | None = None,
                   enable_pdl: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(q uint8 [M, K / 2], scales float8_e4m3fn) of input [M, K]; scales swizzled
    ([R, S], zero padding) unless swizzled_scales=False ([M, K / 16]). global_scale: float32
    [1] (or a number), or [E] with expert_offsets int32 [E + 1]."""
    if not isinstance(global_scale, torch.Tensor):
        global_scale = torch.tensor([global_scale], dtype=torch.float32, device=input.device)
    experts = 1 if expert_offsets is None else expert_offsets.numel() - 1
    q, scales = empty_outputs(NVFP4, input, input.shape[-1], swizzled_scales, experts)
    torch.ops.fuseinfer.nvfp4_quantize(q, scales, input, global_scale,
                                       swizzled_scales=swizzled_scales,
                                       expert_offsets=expert_offsets, enable_pdl=enable_pdl)
    return q, scales


define(_SCHEMA)
impl_cpu("nvfp4_quantize", _cpu)
impl_fake("nvfp4_quantize", _check)
impl_cuda_on_first_use("nvfp4_quantize", _check, load_cuda)

__all__ = ["nvfp4_quantize"]
