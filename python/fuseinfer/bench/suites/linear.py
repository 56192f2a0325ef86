"""`fuseinfer bench gemm`: the linear family's small-M matmuls (small_batch_linear's gemv and
split_k kernels) on the bundled models' projection shapes at M = 1 .. 128, against cuBLAS
(torch.mm) and FlashInfer's small-batch bf16 GEMM (tinygemm_bf16) in the same run.

Every row times, on the same rotated buffers: split_k with the `linear` table's rule for M
(M <= 64; its tile), the gemv (M <= 8, K <= 16384) and cuBLAS; `us` is the kernel the table
picks for M (what small_batch_linear runs: gemv, split_k or cublas), `x cublas` cuBLAS's
time over it. Where FlashInfer imports (bf16, M <= 64) its tinygemm_bf16 runs on the same
sets once its output agrees with ours (`x flashinfer`: its time over ours;
flashinfer_baselines). Bytes per call: the
weight N*K*itemsize (x and out are read/written once too but are small at these M); GB/s
and % copy are the weight bytes over each time. METHOD as the other kernel suites:
CUDA-graph replay of many calls, median of repeats, buffers rotated past L2 where the
weight is under a quarter of it. Targets (H200, issue 19): >= 85% of copy at M <= 16 and
>= 75% at M <= 64 on every 8B projection; >= 1.3x cuBLAS at M = 2..64 where cuBLAS is
below 70% of copy.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import flashinfer_baselines
from ..kernel_suite import PDL, add_run_options, check_known, report_run
from ..progress import Progress
from ..registry import Suite, register_suite, tuner_in
from ..report import Column
from ..timing import TimingConfig, buffer_sets, l2_cache_bytes, time_calls

TOKENS = (1, 2, 4, 8, 16, 32, 64, 128)
MODELS = ("qwen3-0.6b", "qwen3-8b", "llama-3.1-8b", "llama-3-70b-mlp")

COLUMNS = [
    Column("model", "model", align="<"),
    Column("proj", "proj", align="<"),
    Column("m", "M"),
    Column("n", "N"),
    Column("k", "K"),
    Column("kernel", "kernel", align="<"),
    Column("us", "us", "{:.2f}"),
    Column("gbps", "GB/s", "{:.0f}"),
    Column("pct_copy", "% copy", "{:.1f}"),
    Column("cublas_us", "cublas us", "{:.2f}"),
    Column("cublas_pct_copy", "cublas % copy", "{:.1f}"),
    Column("vs_cublas", "x cublas", "{:.2f}"),
    Column("split_k_us", "split_k us", "{:.2f}"),
    Column("splits", "splits"),
    Column("gemv_us", "gemv us", "{:.2f}"),
    Column("flashinfer_us", "flashinfer us", "{:.2f}"),
    Column("vs_flashinfer", "x flashinfer", "{:.2f}"),
    Column("rel_err", "rel err", "{:.1e}"),
]


@dataclass(frozen=True)
class Shape:
    model: str
    proj: str
    n: int
    k: int


def _projections(model: str, hidden: int, inter: int, q_heads: int, kv_heads: int,
                 head_dim: int, vocab: int) -> list[Shape]:
    return [Shape(model, "qkv", (q_heads + 2 * kv_heads) * head_dim, hidden),
            Shape(model, "o", hidden, q_heads * head_dim),
            Shape(model, "gate_up", 2 * inter, hidden),
            Shape(model, "down", hidden, inter),
            Shape(model, "lm_head", vocab, hidden)]


def shapes(models: Sequence[str]) -> list[Shape]:
    """Each model's dense projections (from its bundled config; Llama-3-70B: its MLP down
    projection, the widest K, 28672)."""
    from ...models.bundled import resolve_model
    from ...models.config import ModelConfig

    out = []
    for name in models:
        if name == "llama-3-70b-mlp":
            out.append(Shape(name, "down", 8192, 28672))
            continue
        c = ModelConfig.from_folder(resolve_model(name))
        out += _projections(name, c.hidden_size, c.intermediate_size, c.num_heads,
                            c.num_kv_heads, c.head_dim, c.vocab_size)
    return out


def run(shapes_: Sequence[Shape], tokens: Sequence[int], copy_gbps: float | None,
        dtype: torch.dtype = torch.bfloat16, enable_pdl: bool | None = None,
        config: TimingConfig | None = None, cold: bool = False) -> list[dict[str, Any]]:
    from ...ops.linear.dispatch import effective
    from ...ops.linear.small_batch_linear import (
        GEMV_MAX_K,
        GEMV_MAX_M,
        MAX_M,
        launch_rule,
        launch_small_batch_linear,
        launch_small_m_matmul,
        reference_small_batch_linear,
    )
    from ...ops.triton_launch import use_pdl

    config = config or TimingConfig(repeats=15, target_graph_ms=2.0)
    pdl = use_pdl(enable_pdl, torch.device("cuda"))
    flashinfer = dtype == torch.bfloat16 and flashinfer_baselines.available("gemm")
    table = effective()
    l2 = l2_cache_bytes()
    itemsize = torch.empty((), dtype=dtype).element_size()
    rows = []
    with Progress(len(shapes_) * len(tokens), "bench gemm") as progress:
        for shape in shapes_:
            nbytes = shape.n * shape.k * itemsize
            count = buffer_sets(nbytes, l2, cold)
            weights = [torch.randn(shape.n, shape.k, device="cuda", dtype=dtype)
                       / shape.k ** 0.5 for _ in range(count)]
            for m in tokens:
                progress.step(f"{shape.model} {shape.proj} M={m}")
                xs = [torch.randn(m, shape.k, device="cuda", dtype=dtype) for _ in weights]
                outs = [torch.empty(m, shape.n, device="cuda", dtype=dtype) for _ in weights]
                sets = list(zip(xs, weights, outs, strict=True))
                rule = table.rule(min(m, MAX_M), shape.n, shape.k)
                row: dict[str, Any] = {
                    "model": shape.model, "proj": shape.proj, "m": m, "n": shape.n,
                    "k": shape.k, "dtype": str(dtype).removeprefix("torch."),
                    "weight_bytes": nbytes, "rotated_sets": count,
                }
                if m <= MAX_M:  # past it only cuBLAS runs
                    row["rule"] = (f"{rule.kernel} {rule.block_n}x{rule.block_k} "
                                   f"p{rule.min_programs} s{rule.min_k_steps} "
                                   f"w{rule.num_warps} st{rule.num_stages}")
                row["cublas_us"] = _timed(sets, config, lambda x, w, o: torch.mm(x, w.t(), out=o))
                row["cublas_pct_copy"] = _pct(nbytes, row["cublas_us"], copy_gbps)
                if m <= MAX_M:
                    row["split_k_us"] = _timed(
                        sets, config, lambda x, w, o, r=rule: launch_small_m_matmul(o, x, w, r,
                                                                                    pdl))
                    row["splits"] = rule.split_k(shape.n, shape.k)[0]  # what the launch runs
                gemv = m <= GEMV_MAX_M and shape.k <= GEMV_MAX_K
                if gemv:
                    row["gemv_us"] = _timed(
                        sets, config, lambda x, w, o: launch_small_batch_linear(o, x, w, pdl))
                kernel = None if m > MAX_M else rule.kernel if rule.kernel != "gemv" \
                    else "gemv" if gemv else "split_k"
                if kernel is not None:
                    row["kernel"] = kernel
                    row["us"] = row[f"{kernel}_us"]
                    row["gbps"] = nbytes / row["us"] / 1e3
                    row["pct_copy"] = _pct(nbytes, row["us"], copy_gbps)
                    row["vs_cublas"] = row["cublas_us"] / row["us"]
                    x, w, o = sets[0]
                    o.fill_(float("nan"))
                    launch_rule(o, x, w, rule, pdl)
                    want = reference_small_batch_linear(x, w)[0]
                    row["rel_err"] = ((o.float() - want).norm() / want.norm()).item()
                    if flashinfer:
                        _time_flashinfer(row, sets, o, config, pdl)
                rows.append(row)
            del weights
    return rows


def _timed(sets: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
           config: TimingConfig,
           launch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any]) -> float:
    """Median µs of one call of `launch(x, w, out)`, the sets rotated."""
    return time_calls([lambda s=s: launch(*s) for s in sets], config).median_us


def _time_flashinfer(row: dict[str, Any],
                     sets: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                     ours: torch.Tensor, config: TimingConfig, pdl: bool) -> None:
    """FlashInfer's small-M GEMM on the timed sets, once its output on the first set
    agrees with ours (`ours`, that set's result; flashinfer_* keys of row)."""
    def agreement() -> float:
        x, w, _ = sets[0]
        theirs = torch.full_like(ours, float("nan"))
        flashinfer_baselines.small_m_matmul(theirs, x, w, pdl)
        return flashinfer_baselines.rel_err(theirs, ours)

    flashinfer_baselines.check_then_time(
        row, agreement,
        lambda: time_calls([lambda s=s: flashinfer_baselines.small_m_matmul(s[2], s[0], s[1],
                                                                            pdl)
                            for s in sets], config),
        row["us"])


def _pct(nbytes: int, us: float, copy_gbps: float | None) -> float | None:
    return 100 * nbytes / us / 1e3 / copy_gbps if copy_gbps else None


# ---- the command: `fuseinfer bench gemm` -------------------------------------------------
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+",
                        help=f"models whose projections to time (default: {' '.join(MODELS)})")
    parser.add_argument("--proj", nargs="+",
                        help="only these projections (qkv o gate_up down lm_head)")
    parser.add_argument("--tokens", nargs="+", type=int,
                        help="M values (default: 1 2 4 8 16 32 64 128)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    add_run_options(parser, "gemm")


def run_command(args: argparse.Namespace) -> int:
    from ..ceilings import copy_bandwidth_gbps

    models = args.models or list(MODELS)
    check_known("model", models, MODELS)
    tokens = args.tokens or list(TOKENS)
    if min(tokens) < 1:
        raise SystemExit("--tokens must be positive")
    chosen = shapes(models)
    if args.proj:
        check_known("projection", args.proj, ("qkv", "o", "gate_up", "down", "lm_head"))
        chosen = [s for s in chosen if s.proj in args.proj]
    copy_gbps = copy_bandwidth_gbps()
    rows = run(chosen, tokens, copy_gbps, dtype=DTYPES[args.dtype],
               enable_pdl=PDL[args.pdl], cold=args.cold)
    return report_run("gemm", COLUMNS, rows, copy_gbps, args)


register_suite(Suite(
    name="gemm", help="small-M bf16 matmuls (small_batch_linear: gemv and split_k) on the "
    "bundled models' projections at M = 1..128 against cuBLAS",
    run=run_command, add_arguments=add_arguments, records="gemm",
    quick_args=("--models", "qwen3-8b", "--tokens", "1", "16", "64"),
    tune=tuner_in("linear_tune", help="small_batch_linear's kernel and split_k tile per M "
                  "(the linear table entry)")))
