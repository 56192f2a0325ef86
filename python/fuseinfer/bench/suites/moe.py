"""`fuseinfer bench moe`: the MoE ops on real model shapes (Qwen3-30B-A3B, GPT-OSS-20B and
-120B (clamped SwiGLU experts with biases), DeepSeek-V3) at decode and prefill token counts,
one row per (op, model, tokens):

  routing  topk_softmax (Qwen3: renormalize; GPT-OSS: softmax_after_topk) or moe_fused_gate
           (DeepSeek-V3: 8 groups, 4 kept, routed_scaling_factor 2.5 on the weights)
           against torch eager and torch.compile of the same routing
  align    moe_align_block_size with the block_m the `moe` table picks for T (no baseline)
  layer    fused_moe (bf16; fp8_block with --quant: weights quantized per 128 x 128 block
           once, outside timing) against a torch pipeline around torch._grouped_mm; the
           fp8 rows once per --fp8-backend (table: the `moe` entry's choice; triton;
           cutlass: the grouped GEMM path, sm_90a). --quant mxfp4: random MXFP4 experts
           through the W4A16 grouped GEMM against the same experts dequantized to bf16
           once and run through fused_moe quant=None (bf16_dequant: "x bf16 dequant", the
           W4A16 speedup) and the torch pipeline on that bf16 copy
  grouped  fp8_blockwise_grouped_mm on the w13 shape with --per-expert rows per expert
           against torch._scaled_grouped_mm (rowwise fp8) and torch._grouped_mm (bf16)
           (bench/moe_grouped.py; not in the default ops: DeepSeek-V3's 256 experts take
           7.5 GB of fp8 and 15 GB of bf16 weights)

Every set has its own fresh random logits, so the experts hit vary as in a model. For the
layer the experts hit are counted on the host before timing: their weight bytes over our
time give GB/s and % of copy bandwidth; TFLOP/s counts 2*T*k*(2I*H + H*I). Ours and every
baseline are checked against the float32 reference before they are timed (the layer on at
most 64 tokens); a mismatch or a failure is reported in the row, not timed.

The `flashinfer` baseline of the layer rows is FlashInfer's cutlass_fused_moe (bf16, and
fp8_block where H and I are multiples of 128), its experts re-laid out once per model and
quant (up rows before gate rows; the scales likewise) and its workspace sized once for the
largest T. On SM90 it loads a trimmed build of FlashInfer's module with only the bf16 and
bf16 x fp8-block runners (bench/flashinfer_moe_build.py; the stock one compiles 248 CUTLASS
units). Without FlashInfer the rows say FLASHINFER_NOTE (docs/moe.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .. import moe_baselines as mb
from .. import moe_grouped
from ..flashinfer_baselines import available as flashinfer_available
from ..flashinfer_baselines import describe
from ..kernel_suite import PDL, add_run_options, check_known, report_run
from ..moe_inputs import Inputs, make_inputs
from ..progress import Progress
from ..registry import Suite, register_suite, tuner_in
from ..report import Column
from ..static_compile import compile_static
from ..timing import TimingConfig, buffer_sets, l2_cache_bytes, time_calls

TOKENS = (1, 8, 32, 128, 512, 2048, 8192)
OPS = ("routing", "align", "layer", "grouped")
DEFAULT_OPS = ("routing", "align", "layer")
FP8_BACKENDS = ("table", "triton", "cutlass")
QUANTS: dict[str, str | None] = {"none": None, "fp8_block": "fp8_block", "mxfp4": "mxfp4"}
FLASHINFER_NOTE = "flashinfer: not importable (docs/moe.md)"

COLUMNS = [
    Column("op", "op", align="<"),
    Column("model", "model", align="<"),
    Column("tokens", "tokens"),
    Column("quant", "quant", align="<"),
    Column("backend", "backend", align="<"),
    Column("config", "config", align="<"),
    Column("block_m", "block_m"),
    Column("us", "us", "{:.2f}"),
    Column("experts_hit", "experts hit", "{:.1f}"),
    Column("weight_gbps", "weight GB/s", "{:.0f}"),
    Column("pct_copy", "% copy", "{:.1f}"),
    Column("tflops", "TFLOP/s", "{:.1f}"),
    Column("vs_eager", "x eager", "{:.2f}"),
    Column("vs_compile", "x compile", "{:.2f}"),
    Column("vs_torch", "x torch", "{:.2f}"),
    Column("vs_torch_fp8_row", "x torch fp8 row", "{:.2f}"),
    Column("vs_torch_bf16", "x torch bf16", "{:.2f}"),
    Column("vs_flashinfer", "x flashinfer", "{:.2f}"),
    Column("vs_bf16_dequant", "x bf16 dequant", "{:.2f}"),
    Column("rel_err", "rel err", "{:.1e}"),
    Column("timing", "timing", align="<"),
    Column("torch_timing", "torch timing", align="<"),
    Column("not_timed", "not timed", align="<"),
    Column("note", "note", align="<"),
]


def dispatched_block_m(tokens: int, quant: str | None) -> int:
    """The block_m of the `moe` entry's rule for T on this GPU (fused_moe's alignment)."""
    from ...ops.moe.moe_dispatch import effective

    index = torch.cuda.current_device() if torch.cuda.is_available() else None
    return effective(index).rule(tokens, quant).block_m


def _time_checked(row: dict[str, Any], name: str, err: Callable[[], float], tol: float,
                  calls: Callable[[], list[Callable[[], Any]]], config: TimingConfig,
                  ours_us: float) -> None:
    """A baseline: checked, then timed (`<name>_us`, `vs_<name>`, `<name>_timing`), or
    `<name>_error` when it fails or disagrees with the reference (then not timed)."""
    try:
        e = err()
        row[f"{name}_rel_err"] = e
        if not e <= tol:  # NaN included
            row[f"{name}_error"] = (f"disagrees with the reference: rel err {e:.1e} > "
                                    f"{tol:.0e}, not timed")
            return
        timed = time_calls(calls(), config)
    except Exception as error:  # a baseline that cannot run a shape is reported, not fatal
        row[f"{name}_error"] = describe(error)
        return
    row[f"{name}_us"] = timed.median_us
    row[f"vs_{name}"] = timed.median_us / ours_us
    row[f"{name}_timing"] = timed.method


def _time_ours(row: dict[str, Any], err: float, tol: float,
               calls: list[Callable[[], Any]], config: TimingConfig) -> bool:
    """Time our op when its check passed; else a MISMATCH note. True when timed."""
    row["rel_err"] = err
    if not err <= tol:
        row["note"] = (f"MISMATCH: rel err {err:.1e} > {tol:.0e} against the float32 "
                       "reference, not timed")
        return False
    timed = time_calls(calls, config)
    row.update({"us": timed.median_us, "us_p20": timed.p20_us, "us_p80": timed.p80_us,
                "timing": timed.method, "calls_per_replay": timed.calls_per_replay})
    return True


def _finish(row: dict[str, Any], wanted: Sequence[str]) -> dict[str, Any]:
    row["not_timed"] = ", ".join(n for n in wanted if f"{n}_error" in row) or None
    return row


def measure_routing(model: mb.MoeModel, tokens: int, wanted: Sequence[str],
                    config: TimingConfig, cold: bool, pdl: bool | None,
                    device: torch.device | str = "cuda") -> dict[str, Any]:
    nbytes = tokens * model.experts * 2 + tokens * model.topk * 8
    sets = make_inputs(model, tokens, buffer_sets(nbytes, l2_cache_bytes(), cold), False,
                       device)
    row: dict[str, Any] = {"op": model.router, "kind": "routing", "model": model.name,
                           "tokens": tokens, "experts": model.experts, "topk": model.topk,
                           "bytes": nbytes, "rotated_sets": len(sets)}

    def ours(s: Inputs) -> None:
        mb.ours_routing(model, s.logits, s.bias, s.weights, s.ids, pdl)

    try:
        s0 = sets[0]
        s0.weights.fill_(float("nan"))  # poisoned: an unwritten output cannot pass
        s0.ids.fill_(-1)
        ours(s0)
        err = mb.routing_rel_err(model, s0.logits, s0.bias, (s0.weights, s0.ids))
        if not _time_ours(row, err, mb.ROUTING_REL_ERR, [lambda s=s: ours(s) for s in sets],
                          config):
            return row
    except Exception as error:
        row["note"] = f"ours failed: {describe(error)}"
        return row
    row["gbps"] = nbytes / row["us"] / 1e3
    eager = mb.torch_routing(model)
    fns = {"eager": eager,
           "compile": lambda x, b: compile_static(f"moe_routing:{model.name}", eager)(x, b)}
    names = [n for n in wanted if n in mb.ROUTING_BASELINES]
    for name in names:
        fn = fns[name]
        _time_checked(
            row, name,
            lambda fn=fn: mb.routing_rel_err(model, s0.logits, s0.bias, fn(s0.logits, s0.bias)),
            mb.ROUTING_REL_ERR,
            lambda fn=fn, name=name: [
                lambda s=s: s.keep.__setitem__(name, fn(s.logits, s.bias)) for s in sets],
            config, row["us"])
    return _finish(row, names)


def measure_align(model: mb.MoeModel, tokens: int, quant: str | None, config: TimingConfig,
                  cold: bool, pdl: bool | None, device: torch.device | str = "cuda"
                  ) -> dict[str, Any]:
    from ...ops.moe.moe_align_block_size import (
        max_padded_rows,
        reference_moe_align_block_size,
    )

    block_m = dispatched_block_m(tokens, quant)
    capacity = max_padded_rows(tokens * model.topk, model.experts, block_m)
    nbytes = tokens * model.topk * 4 + capacity * 4 + capacity // block_m * 4
    sets = make_inputs(model, tokens, buffer_sets(nbytes, l2_cache_bytes(), cold), False,
                       device)
    row: dict[str, Any] = {"op": "moe_align_block_size", "kind": "align",
                           "model": model.name, "tokens": tokens, "block_m": block_m,
                           "experts": model.experts, "topk": model.topk, "bytes": nbytes,
                           "rotated_sets": len(sets)}
    outs = [(torch.empty(capacity, dtype=torch.int32, device=device),
             torch.empty(capacity // block_m, dtype=torch.int32, device=device),
             torch.empty(1, dtype=torch.int32, device=device)) for _ in sets]

    def ours(i: int) -> None:
        torch.ops.fuseinfer.moe_align_block_size(*outs[i], sets[i].ids, model.experts,
                                                 block_m, enable_pdl=pdl)

    try:
        ours(0)
        want = reference_moe_align_block_size(sets[0].ids, model.experts, block_m)
        total = int(want[2].item())
        same = (torch.equal(outs[0][2], want[2])
                and torch.equal(outs[0][0][:total], want[0][:total])
                and torch.equal(outs[0][1][:total // block_m], want[1][:total // block_m]))
        _time_ours(row, 0.0 if same else 1.0, 0.0,
                   [lambda i=i: ours(i) for i in range(len(sets))], config)
    except Exception as error:
        row["note"] = f"ours failed: {describe(error)}"
    return row


def measure_layer(model: mb.MoeModel, tokens: int, weights: mb.LayerWeights,
                  wanted: Sequence[str], config: TimingConfig, copy_gbps: float | None,
                  pdl: bool | None, device: torch.device | str = "cuda",
                  flashinfer: FlashinferLayer | None = None,
                  dequant: mb.LayerWeights | None = None) -> dict[str, Any]:
    """`flashinfer`: the baseline prepared once for this model and quant (see
    prepare_flashinfer), or None when it is not wanted. `dequant`: for mxfp4 weights, the
    same experts dequantized to bf16 (mb.dequantized_bf16; the bf16_dequant and torch
    baselines run on it), or None."""
    from ...ops.moe.fused_moe import fused_moe

    quant = weights.quant
    per_expert = mb.expert_bytes(model, quant)
    guess = per_expert * min(model.experts, tokens * model.topk)
    sets = make_inputs(model, tokens, buffer_sets(guess, l2_cache_bytes(), cold=True), True,
                       device)
    # Counted on the host now: nothing inside the timed region syncs.
    hit = sum(int(s.ids.unique().numel()) for s in sets) / len(sets)
    row: dict[str, Any] = {
        "op": "fused_moe", "kind": "layer", "model": model.name, "tokens": tokens,
        "quant": quant or "bf16", "shape": quant or "bf16",
        "block_m": dispatched_block_m(tokens, quant), "experts": model.experts,
        "topk": model.topk, "hidden": model.hidden, "inter": model.inter,
        "activation": weights.activation, "bias": weights.w13_bias is not None,
        "experts_hit": hit, "weight_bytes": hit * per_expert, "rotated_sets": len(sets)}

    def ours(s: Inputs) -> None:
        fused_moe(s.hidden, weights.w13, weights.w2, s.weights, s.ids, enable_pdl=pdl,
                  out=s.out, **weights.op_kwargs())

    tol = mb.LAYER_REL_ERR[quant]
    try:
        s0 = sets[0]
        assert s0.out is not None and s0.hidden is not None
        s0.out.fill_(float("nan"))
        ours(s0)
        err = mb.layer_rel_err(s0.out, s0.hidden, weights, (s0.weights, s0.ids))
        if not _time_ours(row, err, tol, [lambda s=s: ours(s) for s in sets], config):
            return row
    except Exception as error:
        row["note"] = f"ours failed: {describe(error)}"
        return row
    row["weight_gbps"] = row["weight_bytes"] / row["us"] / 1e3
    row["pct_copy"] = 100 * row["weight_gbps"] / copy_gbps if copy_gbps else None
    row["tflops"] = mb.layer_flops(model, tokens) / row["us"] / 1e6
    names = [n for n in wanted if n in mb.LAYER_BASELINES]
    notes = []
    if "bf16_dequant" in names and (quant != "mxfp4" or dequant is None):
        names.remove("bf16_dequant")  # only mxfp4 rows have a dequantize-at-load twin
    torch_weights = dequant if quant == "mxfp4" else weights
    if "torch" in names and (torch_weights is None or torch_weights.quant is not None):
        notes.append("torch pipeline: bf16 rows only")
        names.remove("torch")
    elif "torch" in names and quant == "mxfp4":
        notes.append("torch pipeline: on the dequantized bf16 experts")
    if "flashinfer" in names:
        if flashinfer is None or flashinfer.note is not None:
            notes.append(FLASHINFER_NOTE if flashinfer is None else flashinfer.note)
            names.remove("flashinfer")
        else:
            _time_flashinfer(row, flashinfer, sets, weights, tol, config)
            if "flashinfer_error" in row:
                notes.append(f"flashinfer: {row['flashinfer_error']}")
    if "bf16_dequant" in names:
        assert dequant is not None
        _time_bf16_dequant(row, dequant, sets, weights, pdl, tol, config)
    if "torch" in names:
        assert torch_weights is not None
        # built inside the check, so a torch without _grouped_mm lands in torch_error
        pipeline: list[Callable[[torch.Tensor, mb.Routing], torch.Tensor]] = []

        def check() -> float:
            pipeline.append(mb.torch_layer(torch_weights))
            got = pipeline[0](s0.hidden, (s0.weights, s0.ids))
            return mb.layer_rel_err(got, s0.hidden, weights, (s0.weights, s0.ids))

        _time_checked(row, "torch", check, tol, lambda: [
            lambda s=s: s.keep.__setitem__("torch", pipeline[0](s.hidden, (s.weights, s.ids)))
            for s in sets], config, row["us"])
    row["note"] = "; ".join(notes) or None
    return _finish(row, names)


def _time_bf16_dequant(row: dict[str, Any], dequant: mb.LayerWeights, sets: list[Inputs],
                       weights: mb.LayerWeights, pdl: bool | None, tol: float,
                       config: TimingConfig) -> None:
    """fused_moe quant=None on the bf16 copy of the MXFP4 experts (dequantize-at-load),
    checked against the MXFP4 reference (the same values), each set into its own output."""
    from ...ops.moe.fused_moe import fused_moe

    outs = [torch.empty_like(s.out) for s in sets]
    s0 = sets[0]

    def call(s: Inputs, out: torch.Tensor) -> torch.Tensor:
        return fused_moe(s.hidden, dequant.w13, dequant.w2, s.weights, s.ids, enable_pdl=pdl,
                         out=out, **dequant.op_kwargs())

    def check() -> float:
        outs[0].fill_(float("nan"))
        got = call(s0, outs[0])
        return mb.layer_rel_err(got, s0.hidden, weights, (s0.weights, s0.ids))

    _time_checked(row, "bf16_dequant", check, tol, lambda: [
        lambda s=s, o=o: call(s, o) for s, o in zip(sets, outs, strict=True)],
        config, row["us"])


class FlashinferLayer:
    """The flashinfer baseline of one model and quant: its experts re-laid out and its
    workspace sized once (outside timing), or `note` saying why it cannot run."""

    def __init__(self, weights: mb.LayerWeights, topk: int, max_tokens: int) -> None:
        self.note: str | None = None
        self.call: Callable[[torch.Tensor, mb.Routing, torch.Tensor], torch.Tensor] | None
        self.call = None
        try:
            fi = mb.flashinfer_weights(weights)
            self.call = mb.flashinfer_layer(fi, topk, max_tokens)
        except Exception as error:  # not built, no layout for this shape, ...: one note
            self.note = f"flashinfer: {describe(error)}"


def prepare_flashinfer(weights: mb.LayerWeights, topk: int, max_tokens: int
                       ) -> FlashinferLayer | None:
    """None when FlashInfer does not import here (the rows then say FLASHINFER_NOTE)."""
    if not flashinfer_available("fused_moe"):
        return None
    return FlashinferLayer(weights, topk, max_tokens)


def _time_flashinfer(row: dict[str, Any], fi: FlashinferLayer, sets: list[Inputs],
                     weights: mb.LayerWeights, tol: float, config: TimingConfig) -> None:
    """Checked on the first set against the float32 reference, then timed over the sets,
    each into its own output buffer (a baseline output per set, made before timing)."""
    call = fi.call
    assert call is not None
    outs = [torch.empty_like(s.out) for s in sets]
    s0 = sets[0]

    def check() -> float:
        outs[0].fill_(float("nan"))
        got = call(s0.hidden, (s0.weights, s0.ids), outs[0])
        return mb.layer_rel_err(got, s0.hidden, weights, (s0.weights, s0.ids))

    _time_checked(row, "flashinfer", check, tol, lambda: [
        lambda s=s, o=o: call(s.hidden, (s.weights, s.ids), o)
        for s, o in zip(sets, outs, strict=True)],
        config, row["us"])


def run(models: Sequence[mb.MoeModel], tokens: Sequence[int], ops: Sequence[str],
        wanted: Sequence[str], quants: Sequence[str | None], copy_gbps: float | None,
        enable_pdl: bool | None = None, config: TimingConfig | None = None,
        cold: bool = False, device: torch.device | str = "cuda",
        fp8_backends: Sequence[str] = ("table",),
        per_expert: Sequence[int] = moe_grouped.PER_EXPERT) -> list[dict[str, Any]]:
    """Per model: the routing rows, the align rows, the layer rows per quant (the experts
    built once per model and quant, outside timing; fp8 once per backend), then the
    grouped-GEMM rows per rows-per-expert."""
    config = config or TimingConfig(repeats=15, target_graph_ms=2.0)
    layer_sets = sum(len(fp8_backends) if q == "fp8_block" else 1 for q in quants)
    steps = len(models) * (len(tokens) * (sum(op in ("routing", "align") for op in ops)
                                          + ("layer" in ops) * layer_sets)
                           + ("grouped" in ops) * len(per_expert))
    rows = []
    with Progress(steps, "bench moe") as progress:
        for model in models:
            for op in ops:
                if op == "grouped":
                    rows += _grouped_rows(model, per_expert, wanted, config, enable_pdl,
                                          device, progress)
                    continue
                for quant in quants if op == "layer" else [None]:
                    grid = {"fp8_block": 128, "mxfp4": 32}.get(quant or "", 1)
                    if (model.hidden % grid or model.inter % grid) and op == "layer":
                        for t in tokens:
                            progress.step(f"layer {model.name} tokens={t} {quant}: not run")
                            rows.append({"op": "fused_moe", "kind": "layer",
                                         "model": model.name, "tokens": t, "quant": quant,
                                         "shape": quant, "note": f"{quant} needs H and I "
                                         f"multiples of {grid} (H={model.hidden}, "
                                         f"I={model.inter})"})
                        continue
                    weights = mb.make_weights(model, quant, device) if op == "layer" else None
                    fi = (prepare_flashinfer(weights, model.topk, max(tokens))
                          if weights is not None and "flashinfer" in wanted else None)
                    dequant = (mb.dequantized_bf16(weights) if quant == "mxfp4"
                               and weights is not None
                               and {"bf16_dequant", "torch"} & set(wanted) else None)
                    fp8 = weights is not None and quant == "fp8_block"
                    for backend in fp8_backends if fp8 else [None]:
                        for t in tokens:
                            progress.step(f"{op} {model.name} tokens={t} {quant or ''} "
                                          f"{backend or ''}".strip())
                            if weights is not None:
                                rows.append(_layer_row(model, t, weights, wanted, config,
                                                       copy_gbps, enable_pdl, device, backend,
                                                       fi, dequant))
                            elif op == "routing":
                                rows.append(measure_routing(model, t, wanted, config, cold,
                                                            enable_pdl, device))
                            else:
                                rows.append(measure_align(model, t, None, config, cold,
                                                          enable_pdl, device))
                    del weights, fi, dequant
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()  # the next model's experts may be larger
    return rows


def _layer_row(model: mb.MoeModel, tokens: int, weights: mb.LayerWeights,
               wanted: Sequence[str], config: TimingConfig, copy_gbps: float | None,
               pdl: bool | None, device: torch.device | str, backend: str | None,
               flashinfer: FlashinferLayer | None = None,
               dequant: mb.LayerWeights | None = None) -> dict[str, Any]:
    """A layer row; an fp8 one under `backend` ("table": the entry's own choice)."""
    from ...ops.moe.fp8_blockwise_grouped_mm import cutlass_grouped_runs
    from ...ops.moe.moe_dispatch import effective, forced_fp8_backend

    forced = None if backend in (None, "table") else backend
    with forced_fp8_backend(forced):
        row = measure_layer(model, tokens, weights, wanted, config, copy_gbps, pdl, device,
                            flashinfer, dequant)
        if weights.quant == "mxfp4":
            row["backend"] = "triton"
        elif weights.quant:
            index = torch.device(device).index if torch.device(device).type == "cuda" else None
            config = effective(index).fp8_grouped_config(tokens * model.topk)
            # the layer's hidden states are bf16: the GPU alone decides (as fused_moe does)
            cutlass = config is not None and cutlass_grouped_runs(torch.device(device))
            row["backend"] = "cutlass" if cutlass else "triton"
            if cutlass:
                row["config"] = config
    return row


def _grouped_rows(model: mb.MoeModel, per_expert: Sequence[int], wanted: Sequence[str],
                  config: TimingConfig, pdl: bool | None, device: torch.device | str,
                  progress: Progress) -> list[dict[str, Any]]:
    names = [n for n in wanted if n in moe_grouped.GROUPED_BASELINES]
    if model.hidden % 128 or model.inter % 64:
        progress.step(f"grouped {model.name}: not run")
        return [{"op": "fp8_blockwise_grouped_mm", "kind": "grouped", "model": model.name,
                 "note": f"needs H a multiple of 128 (H={model.hidden})"}]
    rows = []
    for count in per_expert:
        progress.step(f"grouped {model.name} {count} rows/expert")
        rows.append(moe_grouped.measure_grouped(model, count, names, config, pdl,
                                                device=device))
    return rows


# ---- the command: `fuseinfer bench moe` ---------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", metavar="MODEL",
                        help=f"models (default: {' '.join(mb.MODELS)})")
    parser.add_argument("--tokens", nargs="+", type=int,
                        help=f"token counts (default: {' '.join(map(str, TOKENS))})")
    parser.add_argument("--ops", nargs="+", help=f"rows to time, of {' '.join(OPS)} "
                        f"(default: {' '.join(DEFAULT_OPS)})")
    parser.add_argument("--baselines", nargs="*",
                        default=list(mb.BASELINES) + list(moe_grouped.GROUPED_BASELINES),
                        help="baselines timed in the same run (eager, compile: routing; "
                        "torch, flashinfer: the layer (flashinfer: cutlass_fused_moe, on SM90 "
                        "a trimmed module built on first use); bf16_dequant: mxfp4 layer rows, "
                        "the experts dequantized to bf16 once through fused_moe; "
                        "torch_fp8_row, torch_bf16: grouped)")
    parser.add_argument("--fp8-backend", nargs="+", choices=FP8_BACKENDS, default=["table"],
                        help="the fp8 layer rows' path, once each (table: the entry's)")
    parser.add_argument("--per-expert", nargs="+", type=int,
                        help="rows per expert of the grouped rows (default: "
                        f"{' '.join(map(str, moe_grouped.PER_EXPERT))})")
    parser.add_argument("--quant", nargs="+", choices=list(QUANTS), default=["none"],
                        help="the layer's weights: none (bf16), fp8_block and/or mxfp4 "
                        "(W4A16; GPT-OSS: --models GPT-OSS-20B GPT-OSS-120B)")
    add_run_options(parser, "moe")


def run_command(args: argparse.Namespace) -> int:
    from ..ceilings import copy_bandwidth_gbps

    names = args.models or list(mb.MODELS)
    check_known("model", names, mb.MODELS)
    ops = args.ops or list(DEFAULT_OPS)
    check_known("op", ops, OPS)
    check_known("baseline", args.baselines,
                tuple(mb.BASELINES) + moe_grouped.GROUPED_BASELINES)
    per_expert = args.per_expert or list(moe_grouped.PER_EXPERT)
    if min(per_expert) < 1:
        raise SystemExit(f"rows per expert must be positive, got {per_expert}")
    tokens = args.tokens or list(TOKENS)
    if min(tokens) < 1:
        raise SystemExit(f"token counts must be positive, got {tokens}")
    copy_gbps = copy_bandwidth_gbps()
    rows = run([mb.MODELS[n] for n in names], tokens, ops, args.baselines,
               [QUANTS[q] for q in dict.fromkeys(args.quant)], copy_gbps,
               enable_pdl=PDL[args.pdl], cold=args.cold,
               fp8_backends=list(dict.fromkeys(args.fp8_backend)), per_expert=per_expert)
    return report_run("moe", COLUMNS, rows, copy_gbps, args)


register_suite(Suite(
    name="moe", help="MoE routing (topk_softmax, moe_fused_gate), moe_align_block_size and "
    "fused_moe (bf16, fp8_block, mxfp4) on Qwen3-30B-A3B, GPT-OSS-20B/120B and DeepSeek-V3 "
    "against torch (eager, torch.compile, a _grouped_mm pipeline) and, for mxfp4, the "
    "dequantize-at-load bf16 layer", run=run_command,
    add_arguments=add_arguments, records="moe",
    quick_args=("--models", "Qwen3-30B-A3B", "--tokens", "1", "128", "4096"),
    tune=tuner_in("moe_tune", help="fused_moe's Triton block sizes per token bucket (bf16, "
                  "fp8_block, mxfp4) and the fp8 path (Triton or a CUTLASS grouped "
                  "configuration) per routed-rows bucket (the moe entry)")))
