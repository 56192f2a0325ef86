"""fp8_blockwise_mm: the FP8 GEMM of DeepSeek-V3 / Qwen3-FP8 style checkpoints, with one
scale per token and 128 channels on the activations and one per 128 x 128 weight block.

    out[m, n] = sum_k (a_q[m, k] * a_scales[m, k // 128])
                    * (b_q[n, k] * b_scales[n // 128, k // 128])

a_q [M, K] float8_e4m3fn and b_q [N, K] float8_e4m3fn (the Hugging Face weight layout), rows
contiguous, K a multiple of 128; a_scales float32 [M, K / 128]; b_scales float32
[ceil(N / 128), K / 128] (`weight_scale_inv`); out [M, N] bfloat16 or float16. Any M >= 0,
any N >= 1. Accumulation in fp32; scales applied per 128-deep k block.

CUDA, sm_90a / sm_100a: CUTLASS warp-specialized TMA kernels, the configuration picked per
M bucket by the `fp8_gemm` dispatch table (or named by `config`). They read the scales
M/N-major: a_scales with stride (1, M') where M' >= M is a multiple of 4 (what
per_token_group_quant_fp8(..., column_major_scales=True) writes) and b_scales with stride
(1, ceil(N / 128)) (fp8_weight_scales_for_mm makes it once, at load). Other layouts work
and cost one small copy per call. Rows and out need 16-byte aligned row strides (N % 8 == 0
for out); otherwise, and before sm_90, a Triton kernel runs (correct, not tuned).
CPU: the reference below (float32).
"""

from __future__ import annotations

import torch

from ..arg_checks import fail, has_storage
from ..library import LIB, define, impl_cpu, impl_fake, module_loader
from ..triton_launch import next_pow2, use_pdl
from .fp8_gemm_dispatch import GEMV_MAX_M, TRITON_GEMV, effective

_SCHEMA = ("fp8_blockwise_mm(Tensor(a!) out, Tensor a_q, Tensor a_scales, Tensor b_q, "
           "Tensor b_scales, str? config=None, bool? enable_pdl=None) -> ()")
_CUTLASS_SCHEMA = ("_fp8_blockwise_mm_cutlass(Tensor(a!) out, Tensor a, Tensor a_scales, "
                   "Tensor b, Tensor b_scales, str config, bool enable_pdl) -> ()")
OP = "fp8_blockwise_mm"
FP8 = torch.float8_e4m3fn
BLOCK = 128
OUT_DTYPES = (torch.bfloat16, torch.float16)


def reference_fp8_blockwise_mm(a_q: torch.Tensor, a_scales: torch.Tensor, b_q: torch.Tensor,
                               b_scales: torch.Tensor) -> torch.Tensor:
    """The semantics in float32 (the CPU kernel and the test oracle): both operands
    dequantized, then one matmul."""
    n = b_q.shape[0]
    a = a_q.float() * a_scales.float().repeat_interleave(BLOCK, dim=1)
    sb = b_scales.float().repeat_interleave(BLOCK, dim=0)[:n].repeat_interleave(BLOCK, dim=1)
    return a @ (b_q.float() * sb).t()


def _check(out: torch.Tensor, a_q: torch.Tensor, a_scales: torch.Tensor, b_q: torch.Tensor,
           b_scales: torch.Tensor, config: str | None = None,
           enable_pdl: bool | None = None) -> None:
    if a_q.dim() != 2 or a_q.dtype != FP8:
        fail(OP, "a_q", f"must be float8_e4m3fn [M, K], got {a_q.dtype} {list(a_q.shape)}")
    if b_q.dim() != 2 or b_q.dtype != FP8:
        fail(OP, "b_q", f"must be float8_e4m3fn [N, K], got {b_q.dtype} {list(b_q.shape)}")
    m, k = a_q.shape
    n = b_q.shape[0]
    if k == 0 or k % BLOCK:
        fail(OP, "a_q", f"K ({k}) must be a positive multiple of {BLOCK}")
    if b_q.shape[1] != k or n == 0:
        fail(OP, "b_q", f"must be [N >= 1, K={k}], got {list(b_q.shape)}")
    for name, t in (("a_q", a_q), ("b_q", b_q)):
        if t.stride(1) != 1 and t.shape[0] > 0:
            fail(OP, name, "must have contiguous rows")
    if list(a_scales.shape) != [m, k // BLOCK] or a_scales.dtype != torch.float32:
        fail(OP, "a_scales", f"must be float32 [{m}, {k // BLOCK}], got {a_scales.dtype} "
             f"{list(a_scales.shape)}")
    want = [-(-n // BLOCK), k // BLOCK]
    if list(b_scales.shape) != want or b_scales.dtype != torch.float32:
        fail(OP, "b_scales", f"must be float32 {want} (one per 128 x 128 block), got "
             f"{b_scales.dtype} {list(b_scales.shape)}")
    if list(out.shape) != [m, n] or out.dtype not in OUT_DTYPES:
        fail(OP, "out", f"must be bfloat16 or float16 [{m}, {n}], got {out.dtype} "
             f"{list(out.shape)}")
    if out.stride(1) != 1 and m > 0:
        fail(OP, "out", "must have contiguous rows")
    for name, t in (("a_scales", a_scales), ("b_q", b_q), ("b_scales", b_scales),
                    ("out", out)):
        if t.device != a_q.device:
            fail(OP, name, f"must be on {a_q.device} like a_q, got {t.device}")
    if config is not None and not isinstance(config, str):
        fail(OP, "config", "must be a configuration name or None")


def _cpu(out: torch.Tensor, a_q: torch.Tensor, a_scales: torch.Tensor, b_q: torch.Tensor,
         b_scales: torch.Tensor, config: str | None = None,
         enable_pdl: bool | None = None) -> None:
    _check(out, a_q, a_scales, b_q, b_scales, config)
    if out.numel():
        out.copy_(reference_fp8_blockwise_mm(a_q, a_scales, b_q, b_scales))


def fp8_weight_scales_for_mm(b_scales: torch.Tensor) -> torch.Tensor:
    """The same [ceil(N / 128), K / 128] weight scales stored N-major (stride (1, rows)),
    the layout the CUTLASS kernels read; make it once when weights load. The strides are
    set outright: `.t().contiguous().t()` keeps (1, 1) for a single column (K = 128), a
    layout torch calls contiguous but the kernels' check does not accept."""
    rows = b_scales.shape[0]
    out = torch.empty_strided(tuple(b_scales.shape), (1, rows), dtype=b_scales.dtype,
                              device=b_scales.device)
    return out.copy_(b_scales)


def tma_aligned_activation_scales(a_scales: torch.Tensor) -> torch.Tensor:
    """a_scales [M, G] as the kernels read them: M-major with a column stride that is a
    multiple of 4 and memory behind every padded column. Returned as is when it already
    is; else copied (one small kernel)."""
    m, groups = a_scales.shape
    stride = a_scales.stride(1)
    ready = (a_scales.stride(0) == 1 or m == 1) and stride % 4 == 0 and stride >= m
    if ready and groups and has_storage(a_scales):
        end = (a_scales.storage_offset() + stride * groups) * a_scales.element_size()
        ready = end <= a_scales.untyped_storage().nbytes()
    if ready:
        return a_scales
    padded = -(-max(m, 1) // 4) * 4
    copy = torch.empty(groups, padded, dtype=a_scales.dtype, device=a_scales.device)
    copy[:, :m].copy_(a_scales.t())
    return copy[:, :m].t()


def _n_major(b_scales: torch.Tensor) -> torch.Tensor:
    rows = b_scales.shape[0]
    if (b_scales.stride(0) == 1 or rows == 1) and b_scales.stride(1) == rows:
        return b_scales
    return fp8_weight_scales_for_mm(b_scales)


# Loads csrc/gemm once per process (building it on first use); the table is read per call
# in Python, so there is nothing to hand the C++ side.
_load_gemm_module = module_loader("gemm", "fp8_gemm")


def cutlass_takes(out: torch.Tensor, a_q: torch.Tensor, b_q: torch.Tensor) -> bool:
    """Whether the CUTLASS kernels run this call: sm_90a or sm_100a, and 16-byte aligned
    rows (TMA) for a_q, b_q and out."""
    major = torch.cuda.get_device_capability(out.device)[0]
    aligned = (a_q.stride(0) % 16 == 0 or a_q.shape[0] <= 1) and b_q.stride(0) % 16 == 0 \
        and out.stride(0) % 8 == 0 and out.shape[1] % 8 == 0
    for t in (a_q, b_q, out):
        aligned = aligned and t.data_ptr() % 16 == 0
    return major in (9, 10) and aligned


def launch_triton_fp8_blockwise_mm(out: torch.Tensor, a_q: torch.Tensor,
                                   a_scales: torch.Tensor, b_q: torch.Tensor,
                                   b_scales: torch.Tensor) -> None:
    """The Triton kernel (also used directly by the interpreter tests on the CPU)."""
    from ...triton.fp8_blockwise_mm import DOT_BF16, DOT_FP8, DOT_FP32, fp8_blockwise_mm_kernel

    m, k = a_q.shape
    n = b_q.shape[0]
    if m == 0:
        return
    if a_q.device.type == "cpu":
        dot = DOT_FP32
    else:
        dot = DOT_FP8 if torch.cuda.get_device_capability(a_q.device) >= (8, 9) else DOT_BF16
    block_m = 16 if m <= 16 else 64
    block_n = 64
    grid = (-(-m // block_m), -(-n // block_n))
    fp8_blockwise_mm_kernel[grid](
        a_q, a_scales, b_q, b_scales, out, m, n, k, a_q.stride(0), a_scales.stride(0),
        a_scales.stride(1), b_q.stride(0), b_scales.stride(0), b_scales.stride(1),
        out.stride(0), BLOCK_M=block_m, BLOCK_N=block_n, DOT=dot, num_warps=4)


def launch_fp8_gemv(out: torch.Tensor, a_q: torch.Tensor, a_scales: torch.Tensor,
                    b_q: torch.Tensor, b_scales: torch.Tensor, pdl: bool) -> None:
    """The weight-streaming kernel for M <= GEMV_MAX_M (the `triton_gemv` configuration;
    also used directly by the interpreter tests on the CPU)."""
    from ...triton.fp8_gemv import fp8_gemv_kernel

    m, k = a_q.shape
    n = b_q.shape[0]
    if m == 0:
        return
    k_pad = next_pow2(k)
    block_n = max(1, min(64, _GEMV_TILE // k_pad))  # a power of two: divides 128
    extra = {"launch_pdl": True} if pdl else {}
    fp8_gemv_kernel[(-(-n // block_n),)](
        a_q, a_scales, b_q, b_scales, out, m, n, k, a_q.stride(0), a_scales.stride(0),
        a_scales.stride(1), b_q.stride(0), b_scales.stride(0), b_scales.stride(1),
        out.stride(0), BLOCK_N=block_n, K_PAD=k_pad, M_MAX=GEMV_MAX_M, USE_PDL=pdl,
        num_warps=8, **extra)


_GEMV_TILE = 16384  # weight elements per gemv program, held in registers as fp32


def _cuda(out: torch.Tensor, a_q: torch.Tensor, a_scales: torch.Tensor, b_q: torch.Tensor,
          b_scales: torch.Tensor, config: str | None = None,
          enable_pdl: bool | None = None) -> None:
    _check(out, a_q, a_scales, b_q, b_scales, config)
    if a_q.shape[0] == 0:
        return
    table = effective(out.device.index)
    m, k = a_q.shape
    chosen = config or table.config_for(m, b_q.shape[0], k)
    pdl = table.enable_pdl and use_pdl(enable_pdl, out.device)
    if chosen == TRITON_GEMV:
        if m > GEMV_MAX_M:
            fail(OP, "config", f"{TRITON_GEMV} takes at most {GEMV_MAX_M} tokens, got {m}")
        launch_fp8_gemv(out, a_q, a_scales, b_q, b_scales, pdl)
        return
    if not cutlass_takes(out, a_q, b_q):
        if config is not None:
            fail(OP, "config", f"'{config}' names a CUTLASS kernel, which cannot run this "
                 "call (needs sm_90a/sm_100a and 16-byte aligned rows)")
        launch_triton_fp8_blockwise_mm(out, a_q, a_scales, b_q, b_scales)
        return
    _load_gemm_module()
    torch.ops.fuseinfer._fp8_blockwise_mm_cutlass(
        out, a_q, tma_aligned_activation_scales(a_scales), b_q, _n_major(b_scales), chosen,
        pdl)


def fp8_blockwise_mm(a_q: torch.Tensor, a_scales: torch.Tensor, b_q: torch.Tensor,
                     b_scales: torch.Tensor, out_dtype: torch.dtype = torch.bfloat16, *,
                     out: torch.Tensor | None = None, config: str | None = None,
                     enable_pdl: bool | None = None) -> torch.Tensor:
    """(a_q · a_scales) @ (b_q · b_scales)^T as out_dtype [M, N] (into `out` if given);
    `config` names a CUTLASS configuration instead of the dispatch table's choice."""
    if out is None:
        out = torch.empty(a_q.shape[0], b_q.shape[0], dtype=out_dtype, device=a_q.device)
    torch.ops.fuseinfer.fp8_blockwise_mm(out, a_q, a_scales, b_q, b_scales, config=config,
                                         enable_pdl=enable_pdl)
    return out


def built_configs() -> list[str]:
    """The configurations that run on the present GPU: the CUTLASS ones its build holds
    (builds it if needed), then the Triton gemv (M <= GEMV_MAX_M only)."""
    _load_gemm_module()
    return list(torch.ops.fuseinfer._fp8_gemm_configs()) + [TRITON_GEMV]


define(_SCHEMA)
define(_CUTLASS_SCHEMA)
impl_cpu(OP, _cpu)
impl_fake(OP, _check)
LIB.impl(OP, _cuda, "CUDA")


__all__ = ["fp8_blockwise_mm", "fp8_weight_scales_for_mm"]
