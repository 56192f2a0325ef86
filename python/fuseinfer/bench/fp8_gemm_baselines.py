"""FP8 GEMM operands, the float32 oracle check, and the baselines `fuseinfer bench fp8-gemm`
times beside fp8_blockwise_mm on the same buffers.

Baselines, each a `prepare(operands) -> call` that builds its own inputs once (outside any
timing) and returns a closure launching one GEMM:
  cublas_tensor  torch._scaled_mm, one float32 scale per operand (per-tensor)
  cublas_row     torch._scaled_mm, scale_a [M, 1] and scale_b [1, N] (rowwise)
  cublas_block   torch._scaled_mm with 1x128 activation and 128x128 weight scales (cuBLAS
                 blockwise, sm_90 and CUDA >= 12.9); torch.nn.functional.scaled_mm with
                 ScalingType.BlockWise1x128 / BlockWise128x128 where _scaled_mm refuses
  bf16           torch.mm on bf16 copies of the dequantized operands
  flashinfer     FlashInfer's Hopper block-scaled FP8 GEMM (fp8_blockscale_gemm_sm90, its
                 DeepGEMM-style kernels compiled at run time), else its groupwise one
                 (gemm_fp8_nt_groupwise, Blackwell)
  flashinfer_tensor  FlashInfer's bmm_fp8 (cuBLASLt backend), per-tensor scales: the FP8
                 GEMM it offers on every GPU

The per-tensor and rowwise baselines run the same-sized GEMM with coarser scales taken from
the operands' own (the first block's scale; each row's first group, each 128-row weight
block's first column), so every baseline is checked against reference_fp8_blockwise_mm on
its own scales written in blockwise form (`reference_scales`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..ops.gemm.fp8_blockwise_mm import (
    BLOCK,
    fp8_weight_scales_for_mm,
    reference_fp8_blockwise_mm,
    tma_aligned_activation_scales,
)
from . import flashinfer_baselines

FP8 = torch.float8_e4m3fn
BASELINES = ("cublas_tensor", "cublas_row", "cublas_block", "bf16", "flashinfer",
             "flashinfer_tensor")
AGREE_REL_ERR = 2e-2  # bf16 outputs of the same math differ by ~3e-3
CHECK_ROWS = 256  # rows compared with the float32 oracle (all of them up to this M)
Call = Callable[[], torch.Tensor]


@dataclass
class Operands:
    """One GEMM's buffers in the layouts the CUTLASS kernels read (no copy per call)."""

    a_q: torch.Tensor  # [M, K] float8_e4m3fn
    a_scales: torch.Tensor  # float32 [M, K/128], M-major, column stride padded to 4
    b_q: torch.Tensor  # [N, K] float8_e4m3fn
    b_scales: torch.Tensor  # float32 [ceil(N/128), K/128], N-major
    out: torch.Tensor  # [M, N] bfloat16

    @property
    def mnk(self) -> tuple[int, int, int]:
        return self.a_q.shape[0], self.b_q.shape[0], self.a_q.shape[1]


def operand_bytes(m: int, n: int, k: int) -> int:
    """The fewest bytes one call moves: fp8 operands, scales, bf16 output."""
    groups = k // BLOCK
    return m * k + n * k + 2 * m * n + 4 * groups * (m + -(-n // BLOCK))


def _scales(rows: int, cols: int, device: torch.device | str) -> torch.Tensor:
    # Spread over a factor of 3 so a kernel applying the wrong block's scale shows.
    return (0.5 + torch.rand(rows, cols, device=device)) * 2.0**-4


def make_operands(m: int, n: int, k: int, device: torch.device | str = "cuda") -> Operands:
    """Random fp8 operands (|values| up to ~20) and scales; each call makes fresh weights,
    so rotated sets stream distinct weights as a model's layers do."""
    groups = k // BLOCK
    a_q = (4 * torch.randn(m, k, device=device)).to(FP8)
    b_q = (4 * torch.randn(n, k, device=device)).to(FP8)
    a_scales = tma_aligned_activation_scales(_scales(m, groups, device))
    b_scales = fp8_weight_scales_for_mm(_scales(-(-n // BLOCK), groups, device))
    out = torch.empty(m, n, device=device, dtype=torch.bfloat16)
    return Operands(a_q, a_scales, b_q, b_scales, out)


def check_rows(m: int) -> torch.Tensor:
    """Rows compared with the oracle: all up to CHECK_ROWS, else CHECK_ROWS spread evenly
    (first and last included), so the float32 reference stays small at M = 8192."""
    if m <= CHECK_ROWS:
        return torch.arange(m)
    return torch.linspace(0, m - 1, CHECK_ROWS).round().long().unique()


def reference_scales(name: str, ops: Operands) -> tuple[torch.Tensor, torch.Tensor]:
    """The scales a baseline (or ours: "ours") applies, as [M, K/128] and [N/128, K/128]."""
    a, b = ops.a_scales, ops.b_scales
    if name in ("cublas_tensor", "flashinfer_tensor"):
        return a[:1, :1].expand_as(a), b[:1, :1].expand_as(b)
    if name == "cublas_row":
        return a[:, :1].expand_as(a), b[:, :1].expand_as(b)
    return a, b


def reference(ops: Operands, rows: torch.Tensor, name: str = "ours") -> torch.Tensor:
    """float32 oracle for `rows` of the output under `name`'s scales, on the operands'
    device."""
    a_scales, b_scales = reference_scales(name, ops)
    idx = rows.to(ops.a_q.device)
    return reference_fp8_blockwise_mm(ops.a_q[idx], a_scales[idx], ops.b_q, b_scales)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| in float32; NaN if got holds a NaN."""
    return ((got.float() - want).norm() / want.norm()).item()


def checked_rel_err(call: Call, ops: Operands, name: str) -> float:
    """Run `call` once and compare the rows check_rows picks with the oracle."""
    rows = check_rows(ops.mnk[0])
    out = call()
    return rel_err(out[rows.to(out.device)], reference(ops, rows, name))


# ---- the baselines ------------------------------------------------------------------------
def _scaled_mm(a: torch.Tensor, b_t: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor
               ) -> Call:
    return lambda: torch._scaled_mm(a, b_t, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)


def cublas_tensor(ops: Operands) -> Call:
    sa, sb = ops.a_scales[0, 0].clone(), ops.b_scales[0, 0].clone()
    return _scaled_mm(ops.a_q, ops.b_q.t(), sa, sb)


def cublas_row(ops: Operands) -> Call:
    n = ops.mnk[1]
    # [M] then unsqueezed: a [M, 1] slice of the M-major scales keeps the padded column
    # stride, which _scaled_mm refuses for rowwise scales (it wants stride 1 literally).
    sa = ops.a_scales[:, 0].contiguous().unsqueeze(1)
    sb = ops.b_scales[:, 0].repeat_interleave(BLOCK)[:n].contiguous().unsqueeze(0)
    return _scaled_mm(ops.a_q, ops.b_q.t(), sa, sb)


def cublas_block(ops: Operands) -> Call:
    """cuBLAS blockwise: scale_a [M, K/128] M-major, scale_b [K/128, N/128] K-major (the
    layouts torch's own tests pass). Tries _scaled_mm, then the scaled_mm API with explicit
    recipes; raises with both messages when neither runs here."""
    sa = ops.a_scales.t().contiguous().t()
    sb = ops.b_scales.contiguous().t()
    b_t = ops.b_q.t()
    errors = []
    for make in (_scaled_mm, _scaled_mm_recipes):
        try:
            call = make(ops.a_q, b_t, sa, sb)
            call()
        except Exception as error:  # refused by this torch / cuBLAS for this shape
            errors.append(flashinfer_baselines.describe(error))
            continue
        return call
    raise RuntimeError(" | ".join(errors))


def _scaled_mm_recipes(a: torch.Tensor, b_t: torch.Tensor, sa: torch.Tensor,
                       sb: torch.Tensor) -> Call:
    from torch.nn.functional import ScalingType, scaled_mm  # torch >= 2.10

    return lambda: scaled_mm(a, b_t, sa, ScalingType.BlockWise1x128, sb,
                             ScalingType.BlockWise128x128, output_dtype=torch.bfloat16)


def _dequantized(q: torch.Tensor, scales: torch.Tensor, rows_per_scale: int
                 ) -> torch.Tensor:
    full = scales.repeat_interleave(rows_per_scale, dim=0)[:q.shape[0]]
    return (q.float() * full.repeat_interleave(BLOCK, dim=1)).to(torch.bfloat16)


def bf16(ops: Operands) -> Call:
    a = _dequantized(ops.a_q, ops.a_scales, 1)
    b_t = _dequantized(ops.b_q, ops.b_scales, BLOCK).t()
    return lambda: torch.mm(a, b_t)


def _sm90(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9


def flashinfer(ops: Operands) -> Call:
    """FlashInfer's block-scaled FP8 GEMM into the same output buffer as ours."""
    import flashinfer.gemm as gemm

    hopper = getattr(gemm, "fp8_blockscale_gemm_sm90", None)
    if hopper is not None and _sm90(ops.a_q.device):
        # Its kernels read the activation scales as [K/128, M rounded up to 4], M-major,
        # through the pointer alone: exactly the storage behind our M-major scales, passed
        # as that dense block. Weight scales: [ceil(N/128), K/128] row-major.
        groups, pitch = ops.a_scales.shape[1], ops.a_scales.stride(1)
        sa = ops.a_scales.as_strided((groups, pitch), (pitch, 1))
        sb = ops.b_scales.contiguous()
        # Whatever it returns, the result is read from `out`, the buffer it was given.
        return lambda: (hopper(ops.a_q, ops.b_q, sa, sb, out=ops.out), ops.out)[1]
    groupwise = gemm.gemm_fp8_nt_groupwise
    sa = ops.a_scales.t().contiguous()  # "MN" major: [K/128, M]
    sb = ops.b_scales.t().contiguous()  # [K/128, N/128]
    return lambda: (groupwise(ops.a_q, ops.b_q, sa, sb, scale_major_mode="MN", out=ops.out),
                    ops.out)[1]


def flashinfer_tensor(ops: Operands) -> Call:
    """FlashInfer's bmm_fp8 through cuBLASLt: one float32 scale per operand, a batch of one,
    the weight read column-major (its [N, K] rows as is)."""
    import flashinfer.gemm as gemm

    a, b = ops.a_q.unsqueeze(0), ops.b_q.t().unsqueeze(0)
    sa, sb = ops.a_scales[0, 0].clone().reshape(1), ops.b_scales[0, 0].clone().reshape(1)
    out = ops.out.unsqueeze(0)
    return lambda: (gemm.bmm_fp8(a, b, sa, sb, torch.bfloat16, out=out, backend="cublas"),
                    ops.out)[1]


PREPARE: dict[str, Callable[[Operands], Call]] = {
    "cublas_tensor": cublas_tensor, "cublas_row": cublas_row, "cublas_block": cublas_block,
    "bf16": bf16, "flashinfer": flashinfer, "flashinfer_tensor": flashinfer_tensor,
}


def available(name: str) -> bool:
    """Whether a baseline can be tried here at all (FlashInfer installed with its gemm)."""
    return not name.startswith("flashinfer") or flashinfer_baselines.available("gemm")
