"""per_token_group_quant_fp8: dynamic FP8 (e4m3) quantization with one scale per token and
group of `group_size` channels, the activation side of 1 x 128 / 128 x 128 blockwise-scaled
FP8 GEMMs (DeepSeek-V3 and Qwen3-FP8 checkpoints).

    scale[m, g] = max(amax(|x[m, g*G : (g+1)*G]|), 1e-10) / 448
    q[m, k]     = fp8(clamp(x[m, k] / scale[m, k // G], -448, 448))   (round to nearest even)

With scale_ue8m0 the scale is rounded up to a power of two (what UE8M0 scale formats store).
With column_major_scales the scales [M, K / G] are stored M-major with stride (1, M_pad),
M_pad = M rounded up to a multiple of 4: each group's column of scales starts 16-byte
aligned, as a TMA-fed GEMM loads it; written that way directly rather than transposed
afterwards (the padding rows are never written).

input: [M, K] bf16, fp16 or fp32 with a contiguous last dim, K a multiple of group_size (a
power of two, 16..1024). Math in fp32. CUDA: the kernel the dispatch table's `quant` entry
names (built-in: the C++ kernel of csrc/quant, precise; or its --use_fast_math build; or
the Triton kernel), one pass, PDL on sm_90+ unless enable_pdl=False; rows the C++ kernel
cannot load 16 bytes at a time take the Triton kernel. CPU: the reference below.
"""

from __future__ import annotations

import torch

from ..library import LIB, define, impl_cpu, impl_fake
from ..triton_launch import next_pow2, use_pdl
from .quant_checks import FP8, check_group_quant

_SCHEMA = ("per_token_group_quant_fp8(Tensor(a!) q, Tensor(b!) scales, Tensor input, "
           "int group_size, bool scale_ue8m0=False, bool? enable_pdl=None) -> ()")
FP8_MAX = 448.0
EPS = 1e-10  # an all-zero group still gets a finite, non-zero scale


def divided(t: torch.Tensor, value: float) -> torch.Tensor:
    """t / value with IEEE division on every device: torch divides a CUDA tensor by a Python
    number as t * (1 / value), which differs in the last bit from the kernels' division."""
    return t / torch.full((), value, dtype=t.dtype, device=t.device)


def reference_per_token_group_quant_fp8(x: torch.Tensor, group_size: int,
                                        scale_ue8m0: bool = False
                                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The semantics in float32: (q float8_e4m3fn [M, K], scales float32 [M, K / G]); the
    CPU kernel and the test oracle."""
    m, k = x.shape
    groups = x.float().reshape(m, k // group_size, group_size)
    scale = divided(groups.abs().amax(dim=-1).clamp_min(EPS), FP8_MAX)
    if scale_ue8m0:
        scale = torch.exp2(torch.ceil(torch.log2(scale)))
    q = (groups / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.reshape(m, k), scale


def _check(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor, group_size: int,
           scale_ue8m0: bool = False, enable_pdl: bool | None = None) -> None:
    check_group_quant("per_token_group_quant_fp8", q, scales, input, group_size)


def padded_rows(m: int) -> int:
    """M rounded up to a multiple of 4: the column stride of M-major scales, so each
    column starts 16-byte aligned (what a TMA load of activation scales needs)."""
    return -(-m // 4) * 4


def empty_group_quant(m: int, k: int, group_size: int, column_major_scales: bool,
                      device: torch.device, q_dtype: torch.dtype = FP8
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of a group quantization of [m, k] values: q and the scales [m, k / G],
    M-major with stride (1, padded_rows(m)) when column_major_scales (shapes checked by
    the op, so a bad group_size is reported there)."""
    q = torch.empty(m, k, dtype=q_dtype, device=device)
    groups = k // group_size if group_size > 0 else 0
    if column_major_scales:
        scales = torch.empty(groups, padded_rows(m), dtype=torch.float32,
                             device=device)[:, :m].t()
    else:
        scales = torch.empty(m, groups, dtype=torch.float32, device=device)
    return q, scales


def _cpu(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor, group_size: int,
         scale_ue8m0: bool = False, enable_pdl: bool | None = None) -> None:
    _check(q, scales, input, group_size)
    if input.numel() == 0:
        return
    ref_q, ref_s = reference_per_token_group_quant_fp8(input, group_size, scale_ue8m0)
    q.copy_(ref_q)
    scales.copy_(ref_s)


def launch_per_token_group_quant_fp8(q: torch.Tensor, scales: torch.Tensor,
                                     input: torch.Tensor, group_size: int,
                                     scale_ue8m0: bool, pdl: bool) -> None:
    """The Triton launch (also used directly by the interpreter tests on the CPU)."""
    from ...triton.per_token_group_quant import per_token_group_quant_kernel

    rows, k = input.shape
    groups = k // group_size
    if rows == 0 or groups == 0:
        return
    launch_groups(per_token_group_quant_kernel, (input, q, scales, groups), q, scales,
                  input, groups, group_size, scale_ue8m0, pdl)


def launch_groups(kernel, head: tuple, q: torch.Tensor, scales: torch.Tensor,
                  input: torch.Tensor, groups: int, group_size: int, scale_ue8m0: bool,
                  pdl: bool, qmax: float = FP8_MAX, **constants: bool) -> None:
    """Launch a row-by-groups quant kernel: `head` (its leading arguments), then the
    strides, constants and launch shape every such kernel takes; about 1024 elements per
    program (several small groups, or one large one)."""
    per_program = min(next_pow2(groups), max(1, 1024 // group_size))
    extra = {"launch_pdl": True} if pdl else {}
    kernel[(q.size(0), -(-groups // per_program))](
        *head, input.stride(0), q.stride(0), scales.stride(0), scales.stride(1), EPS,
        qmax, GROUP=group_size, GROUPS_PER_PROGRAM=per_program, UE8M0=scale_ue8m0,
        USE_PDL=pdl, EXACT_ROUNDING=input.device.type == "cpu", num_warps=4, **constants,
        **extra)


def _cuda(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor, group_size: int,
          scale_ue8m0: bool = False, enable_pdl: bool | None = None) -> None:
    _check(q, scales, input, group_size)
    from .group_quant_cuda import fast_math_choice

    fast_math = fast_math_choice(q, input)
    if fast_math is None:
        launch_per_token_group_quant_fp8(q, scales, input, group_size, scale_ue8m0,
                                         use_pdl(enable_pdl, input.device))
        return
    torch.ops.fuseinfer._per_token_group_quant_fp8_cuda(
        q, scales, input, group_size, scale_ue8m0, enable_pdl, fast_math)


def per_token_group_quant_fp8(input: torch.Tensor, group_size: int = 128, *,
                              column_major_scales: bool = False, scale_ue8m0: bool = False,
                              enable_pdl: bool | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(q float8_e4m3fn [M, K], scales float32 [M, K / group_size]) of input [M, K];
    column_major_scales stores the scales M-major (stride (1, M rounded up to 4))."""
    q, scales = empty_group_quant(input.shape[0], input.shape[-1], group_size,
                                  column_major_scales, input.device)
    torch.ops.fuseinfer.per_token_group_quant_fp8(q, scales, input, group_size,
                                                  scale_ue8m0=scale_ue8m0,
                                                  enable_pdl=enable_pdl)
    return q, scales


define(_SCHEMA)
impl_cpu("per_token_group_quant_fp8", _cpu)
impl_fake("per_token_group_quant_fp8", _check)
LIB.impl("per_token_group_quant_fp8", _cuda, "CUDA")


__all__ = ["per_token_group_quant_fp8"]
