"""custom_all_reduce and custom_fused_allreduce_add_rmsnorm: sums over the ranks of a
process group through peer-mapped workspaces (csrc/allreduce), without NCCL.

    custom_all_reduce:                   out = sum over ranks of input
    custom_fused_allreduce_add_rmsnorm:  residual = round(sum over ranks of input) + residual
                                         out = rmsnorm(residual) * weight
                                         (residual rounded to the dtype before the norm, as
                                         an allreduce then fused_add_rmsnorm round it)

These are the kernels under fuseinfer.distributed.CustomAllreduce, which allocates the
workspaces, maps the peers' (CUDA IPC) and passes their base addresses (`peer_bases`, one
per rank in rank order) and `max_bytes` (the size of each workspace's staging and result
areas). The ranks are summed in rank order in fp32, so every rank gets the same bits.
one_shot=False runs the two-shot algorithm (reduce-scatter, then all-gather; the fused one
normalizes only this rank's rows and gathers the rest). Dtypes bf16, fp16, fp32; tensors
contiguous and 16-byte aligned; a message (a row, for the fused op) spans a multiple of 16
bytes; out may be input. Every rank must make the same calls in the same order (the
kernels wait for each other). CUDA-graph safe: the workspace is fixed and the input is
copied into it inside the kernel. World sizes 2, 4, 8.

There is no CPU kernel: peer-mapped memory exists on GPUs only. On the CPU,
fuseinfer.distributed.fused_allreduce_add_rmsnorm runs torch.distributed (gloo) and the
norm reference; `reference_all_reduce` and `reference_fused_allreduce_add_rmsnorm` give
what every rank should get from all ranks' inputs (the test oracles).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..arg_checks import FLOAT_DTYPES
from ..library import define, impl_cpu, impl_cuda_on_first_use, impl_fake, module_loader
from ..norm.rmsnorm import reference_rmsnorm
from .allreduce_dispatch import WORLD_SIZES

_ALLREDUCE = ("custom_all_reduce(Tensor input, Tensor(a!) out, int[] peer_bases, "
              "int max_bytes, int rank, bool two_shot=False, bool? enable_pdl=None) -> ()")
_FUSED = ("custom_fused_allreduce_add_rmsnorm(Tensor input, Tensor(a!) residual, "
          "Tensor weight, Tensor(b!) out, int[] peer_bases, int max_bytes, int rank, "
          "bool two_shot=False, float eps=1e-06, bool? enable_pdl=None) -> ()")

load_module = module_loader("allreduce", "allreduce")


def _check_common(op: str, input: torch.Tensor, tensors: dict[str, torch.Tensor],
                  peer_bases: Sequence[int], max_bytes: int, rank: int) -> None:
    if input.dtype not in FLOAT_DTYPES:
        raise ValueError(f"fuseinfer.{op}: input must be bfloat16, float16 or float32, got "
                         f"{input.dtype}")
    for name, t in tensors.items():
        if t.dtype != input.dtype or t.device != input.device:
            raise ValueError(f"fuseinfer.{op}: {name} must have input's dtype and device "
                             f"({input.dtype}, {input.device}), got {t.dtype}, {t.device}")
        if not t.is_contiguous():
            raise ValueError(f"fuseinfer.{op}: {name} must be contiguous")
    if len(peer_bases) not in WORLD_SIZES:
        raise ValueError(f"fuseinfer.{op}: peer_bases must list {list(WORLD_SIZES)} "
                         f"workspaces (one per rank), got {len(peer_bases)}")
    if not 0 <= rank < len(peer_bases):
        raise ValueError(f"fuseinfer.{op}: rank must be in [0, {len(peer_bases)}), got {rank}")
    if max_bytes < 256 or max_bytes % 256:
        raise ValueError(f"fuseinfer.{op}: max_bytes must be a positive multiple of 256, "
                         f"got {max_bytes}")


def _check_allreduce(input, out, peer_bases, max_bytes, rank, two_shot=False,
                     enable_pdl=None):  # type: ignore[no-untyped-def]
    _check_common("custom_all_reduce", input, {"input": input, "out": out}, peer_bases,
                  max_bytes, rank)
    if out.numel() != input.numel():
        raise ValueError(f"fuseinfer.custom_all_reduce: out must have {input.numel()} "
                         f"elements like input, got {out.numel()}")
    nbytes = input.numel() * input.element_size()
    if nbytes % 16 or nbytes > max_bytes:
        raise ValueError(f"fuseinfer.custom_all_reduce: input spans {nbytes} bytes; it must "
                         f"be a multiple of 16 and at most max_bytes ({max_bytes})")


def _check_fused(input, residual, weight, out, peer_bases, max_bytes, rank, two_shot=False,
                 eps=1e-6, enable_pdl=None):  # type: ignore[no-untyped-def]
    op = "custom_fused_allreduce_add_rmsnorm"
    _check_common(op, input, {"input": input, "residual": residual, "weight": weight,
                              "out": out}, peer_bases, max_bytes, rank)
    if input.dim() < 1 or residual.shape != input.shape or out.shape != input.shape:
        raise ValueError(f"fuseinfer.{op}: residual and out must have input's shape "
                         f"{tuple(input.shape)}, got {tuple(residual.shape)}, "
                         f"{tuple(out.shape)}")
    hidden = input.shape[-1]
    if weight.shape != (hidden,):
        raise ValueError(f"fuseinfer.{op}: weight must have shape ({hidden},), got "
                         f"{tuple(weight.shape)}")
    if (hidden * input.element_size()) % 16:
        raise ValueError(f"fuseinfer.{op}: a row of input must span a multiple of 16 bytes, "
                         f"got hidden {hidden} x {input.element_size()} bytes")
    if not eps > 0:
        raise ValueError(f"fuseinfer.{op}: eps must be positive, got {eps}")
    need = input.numel() * input.element_size() * (2 if two_shot else 1)
    if need > max_bytes:
        raise ValueError(f"fuseinfer.{op}: needs {need} bytes of workspace, more than "
                         f"max_bytes ({max_bytes})")


def _no_cpu(name: str):  # type: ignore[no-untyped-def]
    def cpu(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError(
            f"fuseinfer.{name}: peer-mapped workspaces exist on CUDA GPUs only; on the CPU "
            "use fuseinfer.distributed.fused_allreduce_add_rmsnorm / all_reduce_, which run "
            "torch.distributed (gloo)")
    return cpu


for _schema, _check in ((_ALLREDUCE, _check_allreduce), (_FUSED, _check_fused)):
    _name = define(_schema)
    impl_cpu(_name, _no_cpu(_name))
    impl_fake(_name, _check)
    impl_cuda_on_first_use(_name, _check, load_module)


def reference_all_reduce(inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """What every rank gets: the ranks' inputs summed in rank order in float32."""
    total = torch.zeros_like(inputs[0], dtype=torch.float32)
    for x in inputs:
        total += x.float()
    return total.to(inputs[0].dtype)


def reference_fused_allreduce_add_rmsnorm(inputs: Sequence[torch.Tensor],
                                          residual: torch.Tensor, weight: torch.Tensor,
                                          eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, new residual) every rank gets: the allreduce rounded to the dtype, plus the
    residual rounded again, then RMSNorm in float32."""
    summed = (reference_all_reduce(inputs).float() + residual.float()).to(residual.dtype)
    return reference_rmsnorm(summed, weight, eps).to(residual.dtype), summed


def custom_all_reduce(input: torch.Tensor, peer_bases: Sequence[int], max_bytes: int,
                      rank: int, two_shot: bool = False, out: torch.Tensor | None = None,
                      enable_pdl: bool | None = None) -> torch.Tensor:
    """The sum of every rank's `input` (contiguous, bf16/fp16/fp32, a multiple of 16 bytes,
    at most max_bytes) into `out` (allocated if None; may be input). peer_bases/max_bytes:
    a CustomAllreduce's workspaces; every rank calls with the same shapes, in order."""
    out = torch.empty_like(input) if out is None else out
    torch.ops.fuseinfer.custom_all_reduce(input, out, list(peer_bases), max_bytes, rank,
                                          two_shot, enable_pdl)
    return out


def custom_fused_allreduce_add_rmsnorm(input: torch.Tensor, residual: torch.Tensor,
                                       weight: torch.Tensor, peer_bases: Sequence[int],
                                       max_bytes: int, rank: int, two_shot: bool = False,
                                       eps: float = 1e-6, out: torch.Tensor | None = None,
                                       enable_pdl: bool | None = None) -> torch.Tensor:
    """residual += (every rank's input summed, rounded to the dtype) in place; returns
    out = rmsnorm(residual) * weight (allocated if None; may be input). input, residual,
    out: [..., hidden] contiguous, rows a multiple of 16 bytes; weight [hidden]."""
    out = torch.empty_like(input) if out is None else out
    torch.ops.fuseinfer.custom_fused_allreduce_add_rmsnorm(
        input, residual, weight, out, list(peer_bases), max_bytes, rank, two_shot, eps,
        enable_pdl)
    return out


__all__ = ["custom_all_reduce", "custom_fused_allreduce_add_rmsnorm", "reference_all_reduce",
           "reference_fused_allreduce_add_rmsnorm"]
