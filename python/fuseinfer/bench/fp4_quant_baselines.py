"""What the FP4/MX quantizers are compared against, timed in the same run: the torch math
a model would run (eager: the ops' float32 references, which are exactly that code; they
return linear scales, the cheaper layout), the same code under torch.compile, and
FlashInfer's quantizers (fp4_quantize with 16- or 32-element blocks, mxfp8_quantize) where
they import and run. The trimmed FlashInfer bundle carries fp4_quantize's sm_90a module
(docs/baselines.md), but its kernel body is compiled for sm_100+ only: on Hopper it
writes nothing, which the suite's output agreement check turns into a note. FlashInfer
builds mxfp8_quantize for sm_100 only, so on Hopper that row records the failure in its
`flashinfer_note` rather than a time."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from ..ops.fp4_quant.mxfp4_quantize import reference_mxfp4_quantize
from ..ops.fp4_quant.mxfp8_quantize import reference_mxfp8_quantize
from ..ops.fp4_quant.nvfp4_quantize import reference_nvfp4_quantize
from .static_compile import compile_static

BASELINES = ("eager", "compile", "flashinfer")
Sets = dict[str, torch.Tensor]


def _nvfp4(s: Sets) -> Any:
    return reference_nvfp4_quantize(s["x"], s["gs"])


def _mxfp4(s: Sets) -> Any:
    return reference_mxfp4_quantize(s["x"])


def _mxfp8(s: Sets) -> Any:
    return reference_mxfp8_quantize(s["x"], s["q"].shape[1])


TORCH_MATH: dict[str, Callable[[Sets], Any]] = {"nvfp4": _nvfp4, "mxfp4": _mxfp4,
                                                "mxfp8": _mxfp8}


def flashinfer_call(op: str) -> tuple[Callable[[Sets], Any] | None, str]:
    """FlashInfer's quantizer for `op` on one buffer set, or None and why not."""
    try:
        fi = importlib.import_module("flashinfer")
        quant = importlib.import_module("flashinfer.fp4_quantization")
    except Exception as error:  # the trimmed bundle: no fp4 modules
        return None, f"unavailable: {type(error).__name__}: {str(error)[:120]}"
    if op == "nvfp4":
        return (lambda s: quant.fp4_quantize(s["x"], s["gs"], 16, False, True)), "ok"
    if op == "mxfp4":
        return (lambda s: quant.fp4_quantize(s["x"], None, 32, True, False)), "ok"
    mx = getattr(fi, "mxfp8_quantize", None)
    if mx is None:
        return None, "unavailable: flashinfer.mxfp8_quantize missing"
    return (lambda s: mx(s["x"], False)), "ok"


def baseline_call(name: str, op: str) -> tuple[Callable[[Sets], Any] | None, str]:
    """A callable on one buffer set (None: not available here), and a note."""
    if name == "eager":
        return TORCH_MATH[op], "ok"
    if name == "compile":
        return compile_static(f"fp4_quant:{op}", TORCH_MATH[op]), "ok"
    if name == "flashinfer":
        return flashinfer_call(op)
    raise ValueError(f"unknown baseline '{name}' ({', '.join(BASELINES)})")
