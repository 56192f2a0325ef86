"""_per_token_group_quant_fp8_cuda: the C++ per-token-group FP8 quantizer of csrc/quant,
an internal op behind per_token_group_quant_fp8 (which calls it when the dispatch table's
quant entry says "cuda" and `cuda_covers` holds; the bench times it directly).

    _per_token_group_quant_fp8_cuda(Tensor(a!) q, Tensor(b!) scales, Tensor input,
        int group_size, bool scale_ue8m0=False, bool? enable_pdl=None,
        bool fast_math=False) -> ()

Same semantics, shapes and layouts as per_token_group_quant_fp8 (scales written through
their strides, row-major or M-major). fast_math=True runs the same kernel source built with
--use_fast_math: the scales are still the reference's (one IEEE division per group), but
each value's division by its scale is approximate, so a value may land one e4m3 step away;
fast_math=False is bit-identical to the reference. Needs 16-byte aligned input rows and
q rows aligned to 16 / itemsize bytes; CUDA only (the CPU has the public op's reference).
"""

from __future__ import annotations

import torch

from ..arg_checks import has_storage
from ..library import define, impl_cuda_on_first_use, impl_fake, module_loader
from .dispatch import OP_FAMILY, effective
from .quant_checks import check_group_quant

NAME = "_per_token_group_quant_fp8_cuda"
_SCHEMA = (f"{NAME}(Tensor(a!) q, Tensor(b!) scales, Tensor input, int group_size, "
           "bool scale_ue8m0=False, bool? enable_pdl=None, bool fast_math=False) -> ()")


def _check(q: torch.Tensor, scales: torch.Tensor, input: torch.Tensor, group_size: int,
           scale_ue8m0: bool = False, enable_pdl: bool | None = None,
           fast_math: bool = False) -> None:
    check_group_quant(NAME, q, scales, input, group_size)


def cuda_covers(q: torch.Tensor, input: torch.Tensor) -> bool:
    """The CUDA kernel's alignment needs: 16-byte loads of every input row and one store
    of a load's worth of e4m3 bytes into q (the dtype and group checks are the op's)."""
    if not has_storage(input):
        return False
    vec = 16 // input.element_size()
    rows = input.size(0)
    return (input.data_ptr() % 16 == 0 and q.data_ptr() % vec == 0
            and (rows <= 1 or (input.stride(0) % vec == 0 and q.stride(0) % vec == 0)))


def fast_math_choice(q: torch.Tensor, input: torch.Tensor) -> bool | None:
    """For the public op on CUDA: None to run the Triton kernel, else the CUDA kernel
    with this fast_math flag, as the device's table entry says."""
    entry = effective(input.device.index if input.device.index is not None
                      else torch.cuda.current_device())
    if entry.group_quant_backend != "cuda" or not cuda_covers(q, input):
        return None
    return entry.fast_math


# Loads csrc/quant on first use; the table is read on the Python side (fast_math_choice),
# so nothing is pushed to the module.
_load_cuda = module_loader("quant", OP_FAMILY)

define(_SCHEMA)
impl_fake(NAME, _check)
impl_cuda_on_first_use(NAME, _check, _load_cuda)

__all__: list[str] = []
