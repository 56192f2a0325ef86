"""The `fuseinfer` torch library: schemas and the registration helpers every op family uses.

CUDA kernels live in csrc/<family> and are registered from C++ with
TORCH_LIBRARY_IMPL(fuseinfer, CUDA, ...) when their module loads. Importing fuseinfer
compiles and loads nothing, so each op also gets a Python kernel under
CompositeExplicitAutograd: the first CUDA call lands there, loads (building if needed) the
family's module and calls the op again; from then on the dispatcher finds the C++ kernel
registered for CUDA directly and the Python path is never taken again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

NAMESPACE = "fuseinfer"
LIB = torch.library.Library(NAMESPACE, "DEF")


def define(schema: str) -> str:
    """Define an op from its schema; returns the op name."""
    LIB.define(schema)
    return schema.split("(", 1)[0]


def impl_cpu(name: str, fn: Callable[..., Any]) -> None:
    LIB.impl(name, fn, "CPU")


def impl_fake(name: str, fn: Callable[..., Any]) -> None:
    """Shapes-only implementation for torch.compile tracing and meta tensors."""
    torch.library.register_fake(f"{NAMESPACE}::{name}", fn, lib=LIB)


def has_cuda_kernel(name: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{name}", "CUDA")


def impl_cuda_on_first_use(
    name: str, check: Callable[..., None], load_family: Callable[[], None]
) -> None:
    """Route the first CUDA call of `name` through `load_family`, then to the C++ kernel.

    `check` validates the arguments first, so a bad call fails with a clear message
    without triggering a build.
    """

    def first_call(*args: Any, **kwargs: Any) -> Any:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if not any(t.device.type == "cuda" for t in tensors):
            device = tensors[0].device if tensors else "?"
            raise RuntimeError(
                f"fuseinfer.{name}: no kernel for device '{device}'; fuseinfer runs on CUDA "
                "GPUs and, through its reference implementations, on the CPU"
            )
        check(*args, **kwargs)
        load_family()
        if not has_cuda_kernel(name):
            raise RuntimeError(f"fuseinfer.{name}: its CUDA module loaded but has no kernel")
        return getattr(torch.ops.fuseinfer, name).default(*args, **kwargs)

    LIB.impl(name, first_call, "CompositeExplicitAutograd")


def table_bound(value: int | None) -> int:
    """A table's optional bound as the C++ launchers take it: -1 means unbounded."""
    return -1 if value is None else value


def module_loader(module: str, family: str, push: Callable[[int, Any], None] | None = None
                  ) -> Callable[[], None]:
    """A function that loads csrc/<module> once per process (building it on first use) and
    then hands each device the effective `family` dispatch-table entry via `push` (None: a
    family whose table is read in Python per call, nothing to hand over)."""
    lock = threading.Lock()
    loaded = False

    def load_family() -> None:
        nonlocal loaded
        with lock:
            if loaded:
                return
            from ..dispatch import current_identity, lookup
            from ..jit import load

            load(module)
            if push is not None:
                for device in range(torch.cuda.device_count()):
                    push(device, lookup(family, current_identity(device)).entry)
            loaded = True

    return load_family
