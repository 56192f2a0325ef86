"""RMSNorm family: rmsnorm, fused_add_rmsnorm and their Gemma variants.

    rmsnorm:            out = x * rsqrt(mean(x^2, -1) + eps) * w
    gemma_rmsnorm:      out = x * rsqrt(mean(x^2, -1) + eps) * (1 + w)
    fused_add_rmsnorm:  residual = residual + input  (rounded to the input dtype)
                        input    = rmsnorm(residual)          (both in place)

Shapes: input [..., hidden] with the last dim contiguous and leading dims that flatten to
rows (a strided row view of a bigger buffer is fine); weight [hidden]; out and residual
shaped like input. Dtypes bf16, fp16, fp32, all arguments the same. Math in fp32; the
output is rounded once. Fast CUDA path: hidden a multiple of 8 (bf16/fp16) or 4 (fp32)
with 16-byte aligned rows, the whole row held in registers (one read of each input);
any other size takes a correct two-pass path. Launch shapes come from the dispatch table
(autotune_configs/<gpu>.json, op "norm"). enable_pdl=None turns programmatic dependent
launch on for compute capability 9.0+ unless the table says otherwise.
"""

from __future__ import annotations

import torch

from ..library import define, impl_cpu, impl_cuda_on_first_use, impl_fake, module_loader
from .checks import check_norm_args
from .dispatch import OP_FAMILY, push_to_device

_OUT_OF_PLACE = "(Tensor(a!) out, Tensor input, Tensor weight, float eps=1e-06, bool? enable_pdl=None) -> ()"  # noqa: E501
_FUSED = "(Tensor(a!) input, Tensor(b!) residual, Tensor weight, float eps=1e-06, bool? enable_pdl=None) -> ()"  # noqa: E501
_WEIGHT_OFFSET = {"rmsnorm": 0.0, "gemma_rmsnorm": 1.0,
                  "fused_add_rmsnorm": 0.0, "gemma_fused_add_rmsnorm": 1.0}


def reference_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float,
                      weight_offset: float = 0.0) -> torch.Tensor:
    """The semantics in float32 (float64 stays float64): the CPU kernel and the test oracle."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(compute)
    scale = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return xf * scale * (weight.to(compute) + weight_offset)


# Loads csrc/norm (building it on first use) and pushes the dispatch table to it.
_load_cuda = module_loader("norm", OP_FAMILY, push_to_device)


def _register_out_of_place(name: str) -> None:
    define(name + _OUT_OF_PLACE)
    offset = _WEIGHT_OFFSET[name]

    def check(out, input, weight, eps=1e-6, enable_pdl=None):
        check_norm_args(name, input, weight, eps, out=out)

    def cpu(out, input, weight, eps=1e-6, enable_pdl=None):
        check(out, input, weight, eps)
        out.copy_(reference_rmsnorm(input, weight, eps, offset).to(out.dtype))

    impl_cpu(name, cpu)
    impl_fake(name, check)
    impl_cuda_on_first_use(name, check, _load_cuda)


def _register_fused(name: str) -> None:
    define(name + _FUSED)
    offset = _WEIGHT_OFFSET[name]

    def check(input, residual, weight, eps=1e-6, enable_pdl=None):
        check_norm_args(name, input, weight, eps, residual=residual)

    def cpu(input, residual, weight, eps=1e-6, enable_pdl=None):
        check(input, residual, weight, eps)
        summed = (input.float() + residual.float()).to(input.dtype)
        residual.copy_(summed)
        input.copy_(reference_rmsnorm(summed, weight, eps, offset).to(input.dtype))

    impl_cpu(name, cpu)
    impl_fake(name, check)
    impl_cuda_on_first_use(name, check, _load_cuda)


for _name in ("rmsnorm", "gemma_rmsnorm"):
    _register_out_of_place(_name)
for _name in ("fused_add_rmsnorm", "gemma_fused_add_rmsnorm"):
    _register_fused(_name)


def rmsnorm(input: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
            out: torch.Tensor | None = None, enable_pdl: bool | None = None) -> torch.Tensor:
    """RMSNorm of each row of `input` scaled by `weight`; returns `out` (allocated if None).

    Args:
        input: [..., hidden], bf16/fp16/fp32, last dim contiguous.
        weight: [hidden], same dtype and device.
        eps: added to the mean square before the reciprocal square root.
        out: destination shaped like input (may be input itself).
        enable_pdl: programmatic dependent launch; None decides from the device.
    """
    out = torch.empty_like(input) if out is None else out
    torch.ops.fuseinfer.rmsnorm(out, input, weight, eps, enable_pdl)
    return out


def gemma_rmsnorm(input: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                  out: torch.Tensor | None = None, enable_pdl: bool | None = None
                  ) -> torch.Tensor:
    """Gemma's RMSNorm: like `rmsnorm` with the weight applied as (1 + weight)."""
    out = torch.empty_like(input) if out is None else out
    torch.ops.fuseinfer.gemma_rmsnorm(out, input, weight, eps, enable_pdl)
    return out


def fused_add_rmsnorm(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                      eps: float = 1e-6, enable_pdl: bool | None = None) -> None:
    """In place: residual += input; input = rmsnorm(residual) * weight.

    The sum is rounded to the input dtype before it is normalized, as a model that adds
    in bf16 and then normalizes would see it. input and residual: [..., hidden], same
    shape, dtype and device; weight: [hidden].
    """
    torch.ops.fuseinfer.fused_add_rmsnorm(input, residual, weight, eps, enable_pdl)


def gemma_fused_add_rmsnorm(input: torch.Tensor, residual: torch.Tensor,
                            weight: torch.Tensor, eps: float = 1e-6,
                            enable_pdl: bool | None = None) -> None:
    """`fused_add_rmsnorm` with the weight applied as (1 + weight)."""
    torch.ops.fuseinfer.gemma_fused_add_rmsnorm(input, residual, weight, eps, enable_pdl)


__all__ = ["fused_add_rmsnorm", "gemma_fused_add_rmsnorm", "gemma_rmsnorm", "rmsnorm"]
