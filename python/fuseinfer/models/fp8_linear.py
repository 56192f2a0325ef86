"""FP8 linear weights: e4m3 values with one float32 scale per 128 x 128 block, how they are
made (from a bf16/fp32 weight, at load), fused (q/k/v, gate/up) and multiplied.

The block scales are kept N-major (`fp8_weight_scales_for_mm`), the layout the CUTLASS
kernels read, so no layout change happens per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..ops.gemm.fp8_blockwise_mm import fp8_blockwise_mm, fp8_weight_scales_for_mm
from .quantization import BLOCK

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
# An all-zero block still gets a finite, non-zero scale (as the activation quantizer does).
AMAX_FLOOR = 1e-10
MM_DTYPES = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Fp8Weight:
    """A linear layer's weight W[N, K] ~ q * scale (each scale covers a 128 x 128 block)."""

    q: torch.Tensor  # float8_e4m3fn [N, K], K a multiple of 128
    scale: torch.Tensor  # float32 [ceil(N / 128), K / 128], stored N-major

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_blockwise(self.q, self.scale).to(dtype)


def _check_k(name: str, k: int) -> None:
    if k % BLOCK:
        raise ValueError(f"{name}: FP8 linear layers need an input width that is a multiple "
                         f"of {BLOCK} (the fp8_blockwise_mm K), got {k}")


def quantize_blockwise(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q float8_e4m3fn [N, K], scale_inv float32 [ceil(N/128), ceil(K/128)]) of w [N, K]:
    scale = amax(block) / 448, q = w / scale rounded to e4m3 (the checkpoint layout)."""
    n, k = w.shape
    pn, pk = -(-n // BLOCK) * BLOCK, -(-k // BLOCK) * BLOCK
    wf = F.pad(w.float(), (0, pk - k, 0, pn - n))  # zero padding never raises an amax
    blocks = wf.view(pn // BLOCK, BLOCK, pk // BLOCK, BLOCK)
    scale = blocks.abs().amax(dim=(1, 3)).clamp_min(AMAX_FLOOR) / FP8_MAX
    q = (blocks / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.view(pn, pk)[:n, :k].contiguous(), scale


def dequantize_blockwise(q: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    """q * its block's scale, in float32 [N, K]."""
    n, k = q.shape
    s = scale_inv.float().repeat_interleave(BLOCK, 0)[:n].repeat_interleave(BLOCK, 1)[:, :k]
    return q.float() * s


def fp8_weight(q: torch.Tensor, scale_inv: torch.Tensor, name: str = "weight") -> Fp8Weight:
    """An Fp8Weight from checkpoint tensors, shapes checked, scales made N-major."""
    if q.dim() != 2 or q.dtype != FP8:
        raise ValueError(f"{name}: must be float8_e4m3fn [N, K], got {q.dtype} "
                         f"{list(q.shape)}")
    n, k = q.shape
    _check_k(name, k)
    want = [-(-n // BLOCK), k // BLOCK]
    if list(scale_inv.shape) != want:
        raise ValueError(f"{name}_scale_inv: must be {want} (one scale per 128 x 128 block "
                         f"of {name} {list(q.shape)}), got {list(scale_inv.shape)}")
    return Fp8Weight(q.contiguous(), fp8_weight_scales_for_mm(scale_inv.float()))


def quantize_weight(w: torch.Tensor, name: str = "weight") -> Fp8Weight:
    """`--quantization fp8`: a float weight quantized at load (any N: the blocks of a
    fused weight may straddle its parts, since the whole matrix is quantized at once)."""
    _check_k(name, w.shape[1])
    return fp8_weight(*quantize_blockwise(w), name=name)


def concat_fp8(parts: list[tuple[str, torch.Tensor, torch.Tensor]]) -> Fp8Weight:
    """One fused weight from checkpoint parts (name, q, scale_inv) stacked along N. Each
    part's scales cover its own 128-row blocks, so every part but the last must have a
    multiple of 128 rows for the stacked scales to line up with the stacked rows."""
    for name, q, _ in parts[:-1]:
        if q.shape[0] % BLOCK:
            fused = " + ".join(p[0] for p in parts)
            raise ValueError(f"{name}: {q.shape[0]} rows is not a multiple of {BLOCK}, so "
                             f"its block scales cannot be stacked into the fused weight "
                             f"{fused}")
    for name, q, s in parts:
        fp8_weight(q, s, name)  # each part's own shape checks
    q = torch.cat([p[1] for p in parts], dim=0)
    return fp8_weight(q, torch.cat([p[2].float() for p in parts], dim=0), parts[0][0])


def fp8_matmul(x_q: torch.Tensor, x_scales: torch.Tensor, weight: Fp8Weight,
               out_dtype: torch.dtype, enable_pdl: bool | None = None) -> torch.Tensor:
    """(x_q * x_scales) @ W^T in out_dtype. The GEMM writes bf16 or fp16; a float32 model
    (the CPU) gets the bf16 result widened."""
    mm_dtype = out_dtype if out_dtype in MM_DTYPES else torch.bfloat16
    out = fp8_blockwise_mm(x_q, x_scales, weight.q, weight.scale, mm_dtype,
                           enable_pdl=enable_pdl)
    return out if mm_dtype == out_dtype else out.to(out_dtype)
