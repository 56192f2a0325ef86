"""fp8_blockwise_grouped_mm: the FP8 GEMM of every expert of a MoE layer at once, over rows
already sorted by expert (block-quantized checkpoints: 1 x 128 activation and 128 x 128
weight scales, as fp8_blockwise_mm).

    for every expert e, rows r in [expert_offsets[e], expert_offsets[e + 1]):
        out[r] = (a_q[r] * a_scales[r]) @ (b_q[e] * b_scales[e])^T

a_q [R, K] float8_e4m3fn, contiguous; a_scales float32 [R, K / 128], contiguous (K-major:
what per_token_group_quant_fp8 and silu_and_mul_quant_fp8 write by default); b_q [E, N, K]
float8_e4m3fn and b_scales float32 [E, ceil(N / 128), K / 128], contiguous (each expert's
Hugging Face weight and `weight_scale_inv`); expert_offsets int32 [E + 1] on the device,
non-decreasing, expert_offsets[E] <= R. out [R, N] bfloat16 or float16, contiguous; rows no
expert covers are left as they are. K a multiple of 128, N a multiple of 8.

CUDA, sm_90a: CUTLASS ptr-array kernels (csrc/moe), one problem per expert, sizes and
pointers built on the device from expert_offsets: no host sync, capturable in a CUDA graph.
The configuration comes from the `moe` dispatch entry's fp8_grouped rules by R (or is
named by `config`). sm_100a: the 1-SM tcgen05 instantiation, compile-checked but never run
here (fused_moe does not route to it). Other GPUs: fused_moe runs Triton; this op raises.
CPU: the reference below (float32).
"""

from __future__ import annotations

import torch

from ..arg_checks import fail
from ..library import LIB, define, impl_cpu, impl_fake, module_loader
from ..triton_launch import use_pdl
from .moe_dispatch import GROUPED_CONFIGS, effective

OP = "fp8_blockwise_grouped_mm"
_SCHEMA = ("fp8_blockwise_grouped_mm(Tensor(a!) out, Tensor a_q, Tensor a_scales, Tensor b_q, "
           "Tensor b_scales, Tensor expert_offsets, str? config=None, "
           "bool? enable_pdl=None) -> ()")
_CUTLASS_SCHEMA = ("_fp8_blockwise_grouped_mm_cutlass(Tensor(a!) out, Tensor a, "
                   "Tensor a_scales, Tensor b, Tensor b_scales, Tensor offsets, str config, "
                   "bool enable_pdl) -> ()")
FP8 = torch.float8_e4m3fn
BLOCK = 128
OUT_DTYPES = (torch.bfloat16, torch.float16)


def reference_fp8_blockwise_grouped_mm(a_q: torch.Tensor, a_scales: torch.Tensor,
                                       b_q: torch.Tensor, b_scales: torch.Tensor,
                                       expert_offsets: torch.Tensor,
                                       out: torch.Tensor | None = None) -> torch.Tensor:
    """The semantics in float32 (the CPU kernel and the test oracle): [R, N] float32, rows
    no expert covers taken from `out` (zeros without it)."""
    from ..gemm.fp8_blockwise_mm import reference_fp8_blockwise_mm

    rows, n = a_q.shape[0], b_q.shape[1]
    result = torch.zeros(rows, n, dtype=torch.float32, device=a_q.device) if out is None \
        else out.float().clone()
    bounds = expert_offsets.tolist()
    for e in range(b_q.shape[0]):
        lo, hi = bounds[e], bounds[e + 1]
        if hi > lo:
            result[lo:hi] = reference_fp8_blockwise_mm(a_q[lo:hi], a_scales[lo:hi], b_q[e],
                                                       b_scales[e])
    return result


def _check(out: torch.Tensor, a_q: torch.Tensor, a_scales: torch.Tensor, b_q: torch.Tensor,
           b_scales: torch.Tensor, expert_offsets: torch.Tensor, config: str | None = None,
           enable_pdl: bool | None = None) -> None:
    if a_q.dim() != 2 or a_q.dtype != FP8 or not a_q.is_contiguous():
        fail(OP, "a_q", f"must be contiguous float8_e4m3fn [R, K], got {a_q.dtype} "
             f"{list(a_q.shape)}")
    rows, k = a_q.shape
    if k == 0 or k % BLOCK:
        fail(OP, "a_q", f"K must be a positive multiple of {BLOCK}, got {k}")
    if b_q.dim() != 3 or b_q.dtype != FP8 or b_q.shape[2] != k or not b_q.is_contiguous():
        fail(OP, "b_q", f"must be contiguous float8_e4m3fn [E, N, K={k}], got {b_q.dtype} "
             f"{list(b_q.shape)}")
    e, n = b_q.shape[0], b_q.shape[1]
    if n == 0 or n % 8:
        fail(OP, "b_q", f"N must be a positive multiple of 8, got {n}")
    groups = k // BLOCK
    if list(a_scales.shape) != [rows, groups] or a_scales.dtype != torch.float32 \
            or not a_scales.is_contiguous():
        fail(OP, "a_scales", f"must be contiguous float32 [{rows}, {groups}] (K-major), got "
             f"{a_scales.dtype} {list(a_scales.shape)}")
    want = [e, -(-n // BLOCK), groups]
    if list(b_scales.shape) != want or b_scales.dtype != torch.float32 \
            or not b_scales.is_contiguous():
        fail(OP, "b_scales", f"must be contiguous float32 {want}, got {b_scales.dtype} "
             f"{list(b_scales.shape)}")
    if list(expert_offsets.shape) != [e + 1] or expert_offsets.dtype != torch.int32:
        fail(OP, "expert_offsets", f"must be int32 [{e + 1}], got {expert_offsets.dtype} "
             f"{list(expert_offsets.shape)}")
    if list(out.shape) != [rows, n] or out.dtype not in OUT_DTYPES or not out.is_contiguous():
        fail(OP, "out", f"must be contiguous bfloat16 or float16 [{rows}, {n}], got "
             f"{out.dtype} {list(out.shape)}")
    for name, x in (("a_scales", a_scales), ("b_q", b_q), ("b_scales", b_scales),
                    ("expert_offsets", expert_offsets), ("out", out)):
        if x.device != a_q.device:
            fail(OP, name, f"must be on {a_q.device} like a_q, got {x.device}")
    if config is not None and config not in GROUPED_CONFIGS:
        fail(OP, "config", f"must be one of {list(GROUPED_CONFIGS)}, got {config!r}")


def _cpu(out: torch.Tensor, a_q: torch.Tensor, a_scales: torch.Tensor, b_q: torch.Tensor,
         b_scales: torch.Tensor, expert_offsets: torch.Tensor, config: str | None = None,
         enable_pdl: bool | None = None) -> None:
    _check(out, a_q, a_scales, b_q, b_scales, expert_offsets, config)
    out.copy_(reference_fp8_blockwise_grouped_mm(a_q, a_scales, b_q, b_scales,
                                                 expert_offsets, out))


# Loads csrc/moe once per process (building it on first use); the table is read per call.
_load_moe_module = module_loader("moe", "moe")


def cutlass_grouped_runs(device: torch.device, compile_checked: bool = False) -> bool:
    """Whether this GPU runs the CUTLASS grouped kernels: sm_90a; with compile_checked also
    sm_100a, whose kernels are built but have not run on a GPU here (the op takes them when
    called; fused_moe does not pick them on its own)."""
    if device.type != "cuda":
        return False
    major = torch.cuda.get_device_capability(device)[0]
    return major == 9 or (compile_checked and major == 10)


def _cuda(out: torch.Tensor, a_q: torch.Tensor, a_scales: torch.Tensor, b_q: torch.Tensor,
          b_scales: torch.Tensor, expert_offsets: torch.Tensor, config: str | None = None,
          enable_pdl: bool | None = None) -> None:
    _check(out, a_q, a_scales, b_q, b_scales, expert_offsets, config)
    if not cutlass_grouped_runs(out.device, compile_checked=True):
        fail(OP, "a_q", f"needs an sm_90a or sm_100a GPU, got compute capability "
             f"{torch.cuda.get_device_capability(out.device)} (fused_moe runs Triton there)")
    if a_q.shape[0] == 0:
        return
    table = effective(out.device.index)
    major = torch.cuda.get_device_capability(out.device)[0]
    chosen = config or table.cutlass_config(a_q.shape[0], major)
    pdl = table.enable_pdl and use_pdl(enable_pdl, out.device)
    _load_moe_module()
    torch.ops.fuseinfer._fp8_blockwise_grouped_mm_cutlass(
        out, a_q, a_scales, b_q, b_scales, expert_offsets, chosen, pdl)


def fp8_blockwise_grouped_mm(a_q: torch.Tensor, a_scales: torch.Tensor, b_q: torch.Tensor,
                             b_scales: torch.Tensor, expert_offsets: torch.Tensor,
                             out_dtype: torch.dtype = torch.bfloat16, *,
                             out: torch.Tensor | None = None, config: str | None = None,
                             enable_pdl: bool | None = None) -> torch.Tensor:
    """Every expert's rows of a_q through its weights: [R, N] out_dtype (into `out` if
    given; rows no expert covers are left as they are). See the module docstring."""
    if out is None:
        out = torch.empty(a_q.shape[0], b_q.shape[1], dtype=out_dtype, device=a_q.device)
    torch.ops.fuseinfer.fp8_blockwise_grouped_mm(out, a_q, a_scales, b_q, b_scales,
                                                 expert_offsets, config=config,
                                                 enable_pdl=enable_pdl)
    return out


def built_grouped_configs() -> list[str]:
    """The grouped configurations the present GPU's build holds (builds it if needed)."""
    _load_moe_module()
    return list(torch.ops.fuseinfer._fp8_grouped_configs())


define(_SCHEMA)
define(_CUTLASS_SCHEMA)
impl_cpu(OP, _cpu)
impl_fake(OP, _check)
LIB.impl(OP, _cuda, "CUDA")


__all__ = ["fp8_blockwise_grouped_mm"]
