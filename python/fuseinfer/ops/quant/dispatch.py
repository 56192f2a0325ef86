"""Dispatch-table entry of the quant family: which kernel runs per_token_group_quant_fp8
on CUDA.

    "quant": {"source": "...", "group_quant_backend": "cuda", "fast_math": false}

group_quant_backend "cuda" is the C++ kernel of csrc/quant (fast_math picks its
--use_fast_math build: the reference's scales, a value sometimes one e4m3 step away); "triton"
the Triton kernel. Arguments the CUDA kernel does not cover (misaligned rows) take the
Triton kernel whatever the table says. The built-in default is the precise CUDA kernel
until `fuseinfer bench quant` has measured the three on a GPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ...dispatch import TableError, current_identity, lookup, register_op

OP_FAMILY = "quant"
BACKENDS = ("cuda", "triton")


@dataclass(frozen=True)
class QuantDispatch:
    source: str
    group_quant_backend: str
    fast_math: bool

    def validate(self, where: str) -> None:
        if self.group_quant_backend not in BACKENDS:
            raise TableError(f"{where}.group_quant_backend: must be one of {list(BACKENDS)}, "
                             f"got {self.group_quant_backend!r}")
        if self.fast_math and self.group_quant_backend != "cuda":
            raise TableError(f"{where}.fast_math: only the cuda backend has a fast-math "
                             "build")


BUILTIN = QuantDispatch(source="built-in default", group_quant_backend="cuda",
                        fast_math=False)
register_op(OP_FAMILY, QuantDispatch, BUILTIN)


@functools.cache
def effective(device: int) -> QuantDispatch:
    """The entry for one device, read once per process (as the CUDA families' tables are
    pushed once, when their module loads): no file access on the op's hot path."""
    return lookup(OP_FAMILY, current_identity(device)).entry
