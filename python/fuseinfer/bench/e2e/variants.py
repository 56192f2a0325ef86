"""The engine variants an end-to-end bench runs: the engine as configured, then one without
each ablated switch (`--ablate <switch>... | all`), one engine after the other."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

# switch name -> the EngineArgs field that turns it off (set True), or (field, value)
ABLATIONS = {"fused-rope-kv": "disable_fused_rope_kv",
             "fused-add-rmsnorm": "disable_fused_add_rmsnorm",
             "fused-qk-norm": "disable_fused_qk_norm",
             "fused-qk-norm-rope": "disable_fused_qk_norm_rope",
             "fused-silu-mul": "disable_fused_silu_mul",
             "fused-decode-merge": ("fused_decode_merge", "off"),
             "hopper-prefill": "disable_hopper_prefill",
             "fp8-kv-cache": ("kv_cache_dtype", "auto"),  # with --kv-cache-dtype fp8_e4m3
             "residual-epilogue": ("residual_epilogue", False),
             "small-batch-gemv": "disable_small_batch_gemv",
             "gemv-silu-mul": "disable_gemv_silu_mul",
             "fused-greedy-sample": "disable_fused_greedy_sample", "pdl": "disable_pdl",
             "cuda-graph": "disable_cuda_graph", "overlap-schedule": "disable_overlap_schedule",
             "radix-cache": "disable_radix_cache",
             "fused-norm-quant": "disable_fused_norm_quant",
             "fused-silu-mul-quant": "disable_fused_silu_mul_quant",
             "custom-allreduce": "disable_custom_allreduce",
             "fused-allreduce-rmsnorm": "disable_fused_allreduce_rmsnorm",
             "small-m-matmul": ("small_m_matmul_tokens", 0)}
# a switch given as (field, value) is turned off by setting that value; such a switch that
# is already off in the configured engine is left out of `all` (and refused by name), as
# is the fused decode merge where `auto` fuses nothing (fused_merge_runs) and the sm_90a
# prefill where the table does not pick it (hopper_prefill_runs)
# switches that only change an FP8 model: `all` includes them only for one
FP8_ABLATIONS = ("fused-norm-quant", "fused-silu-mul-quant")
# switches that only change a tensor-parallel engine: `all` includes them only for one
TP_ABLATIONS = ("custom-allreduce", "fused-allreduce-rmsnorm")


def _checkpoint_config(base: Any) -> dict[str, Any] | None:
    """The model's config.json (a local folder or a bundled config), None if unreadable."""
    import json

    from ...models.bundled import resolve_model

    try:
        return json.loads((resolve_model(base.model) / "config.json").read_text())
    except (OSError, ValueError):
        return None


def is_fp8_engine(base: Any) -> bool:
    """Whether the engine runs FP8 linears: --quantization fp8, or a checkpoint (a local
    folder or bundled config) whose quantization_config says fp8."""
    if getattr(base, "quantization", "auto") == "fp8":
        return True
    from ...models.quantization import quantization_from_dict

    config = _checkpoint_config(base)
    return config is not None and quantization_from_dict(config) is not None


def _model_config(base: Any) -> Any:
    """The model's ModelConfig, None if its config.json is unreadable or incomplete."""
    from ...models.config import ModelConfig

    raw = _checkpoint_config(base)
    try:
        return ModelConfig.from_dict(raw) if raw is not None else None
    except (KeyError, ValueError):
        return None


def _gpu(base: Any) -> tuple[bool, int | None]:
    """(whether the engine runs on a CUDA GPU, its index; None: the current one)."""
    import torch

    device = str(getattr(base, "device", "auto"))
    if device == "cpu" or not torch.cuda.is_available():
        return False, None
    return True, None if device == "auto" else torch.device(device).index


def fused_merge_runs(base: Any) -> bool:
    """Whether the engine fuses any decode merge: `on`, or `auto` on a model with sliding
    layers where the GPU's attention table fuses at their window (the CPU runs the
    reference); otherwise turning the switch off changes nothing."""
    mode = getattr(base, "fused_decode_merge", "off")
    if mode != "auto":
        return mode == "on"
    config = _model_config(base)
    windows = {config.window_left(layer) for layer in config.sliding_layers} - {None} \
        if config is not None else set()
    on_gpu, index = _gpu(base)
    if not windows or not on_gpu:
        return False
    from ...ops.attention.dispatch import attention_table

    table = attention_table(index)
    rules = table.decode_rules + table.fp8_decode_rules
    return any(table.fuses_merge(w, r.block_n) for w in windows for r in rules)


def hopper_prefill_runs(base: Any) -> bool:
    """Whether the engine's prefill runs the sm_90a kernel: an sm_90 GPU whose attention
    table picks it at the model's head dim, a 16-bit KV cache; otherwise turning the switch
    off changes nothing."""
    import torch

    config = _model_config(base)
    on_gpu, index = _gpu(base)
    if config is None or not on_gpu or getattr(base, "kv_cache_dtype", "auto") == "fp8_e4m3":
        return False
    from ...ops.attention.dispatch import attention_table
    from ...ops.attention.prefill_hopper import HEAD_DIMS

    try:
        capability = torch.cuda.get_device_capability(index)
    except (AssertionError, RuntimeError):  # no usable CUDA after all
        return False
    if capability != (9, 0) or config.head_dim not in HEAD_DIMS:
        return False
    return attention_table(index).prefill_rule(config.head_dim).kernel == "hopper"


def weights_label(base: Any) -> str:
    """What the engine's linear weights are, for the recorded rows: "fp8", else the dtype
    asked for ("checkpoint dtype" for auto); "; MoE experts bf16" when MXFP4 experts were
    dequantized at load (--moe-weight-dtype bf16)."""
    dtype = getattr(base, "dtype", "auto")
    label = "fp8" if is_fp8_engine(base) else \
        "checkpoint dtype" if dtype in (None, "auto") else str(dtype)
    if getattr(base, "moe_weight_dtype", "auto") == "bf16":
        label += "; MoE experts bf16"
    return label


def add_ablate_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ablate", nargs="+", choices=[*ABLATIONS, "all"], default=[],
                        help="also run without each of these switches (all: every one)")


def ablation_variants(base: Any, requested: list[str]) -> tuple[list[str], list[tuple[str, Any]]]:
    """(the switches to ablate, [(variant name, EngineArgs)]): the configured engine first,
    then one without each switch."""
    if "all" in requested:
        fp8 = is_fp8_engine(base)
        tp = getattr(base, "tp", 1) > 1
        ablate = [a for a in ABLATIONS if (fp8 or a not in FP8_ABLATIONS)
                  and (tp or a not in TP_ABLATIONS) and _changes(base, a)]
    else:
        ablate = list(dict.fromkeys(requested))
        already_off = [a for a in ablate if not _changes(base, a)]
        if already_off:  # the variant would be the configured engine again, timed twice
            raise SystemExit(f"--ablate {' '.join(already_off)}: already off in the "
                             "configured engine (or, for fused-decode-merge, auto fuses "
                             "nothing on this model and GPU; for hopper-prefill, the GPU's "
                             "table does not pick that kernel), so the run would compare it "
                             "with itself; turn it on in the engine's options first")
    return ablate, [("as configured", base)] + [
        (f"without {name}", replace(base, **_off(name))) for name in ablate]


def _off(name: str) -> dict[str, Any]:
    """The EngineArgs change that turns switch `name` off."""
    field = ABLATIONS[name]
    return {field: True} if isinstance(field, str) else {field[0]: field[1]}


def _changes(base: Any, name: str) -> bool:
    """Whether turning `name` off changes the engine (a valued switch may be off already;
    the fused decode merge's `auto` may fuse nothing on this model and GPU)."""
    if name == "fused-decode-merge":
        return fused_merge_runs(base)
    if name == "hopper-prefill":
        return hopper_prefill_runs(base) and not base.disable_hopper_prefill
    field = ABLATIONS[name]
    return isinstance(field, str) or getattr(base, field[0], field[1]) != field[1]


def release_engine(engine: Any) -> None:
    """Free an engine's device memory before the next one sizes its KV pool from what is
    free (frozen objects are never collected, so unfreeze first)."""
    import gc

    import torch

    engine.close()
    gc.unfreeze()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
