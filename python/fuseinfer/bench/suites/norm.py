"""`fuseinfer bench norm`: RMSNorm kernels on real model shapes against torch, liger and
FlashInfer (`fuseinfer tune norm`: their launch shapes, in norm_tune.py).

Bytes counted per call (the fewest any kernel must move): rmsnorm reads x and writes y;
fused_add_rmsnorm reads x and r and writes both; plus the weight once.

FlashInfer (when installed) runs its kernel for every op, gemma variants included, called
as ours is (in place for the fused ops, into the same output buffer otherwise), after its
output agreed with ours on fresh data (flashinfer_baselines).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import flashinfer_baselines, norm_baselines  # noqa: I001
from ..kernel_suite import PDL, add_run_options, check_known, report_run
from ..progress import Progress
from ..registry import Suite, register_suite, tuner_in
from ..report import Column
from ..timing import TimingConfig, buffer_sets, l2_cache_bytes, time_calls

MODEL_HIDDEN = {
    1024: "Qwen3-0.6B",
    2880: "GPT-OSS",
    4096: "Llama-3-8B",
    5120: "Qwen3-32B",
    7168: "DeepSeek-V3",
    8192: "Llama-3-70B",
}
TOKENS = (1, 8, 32, 128, 512, 2048, 8192, 32768)
OPS = ("fused_add_rmsnorm", "rmsnorm")
ALL_OPS = OPS + ("gemma_fused_add_rmsnorm", "gemma_rmsnorm")
BASELINES = ("eager", "compile", "liger", "flashinfer")
EPS = 1e-6

COLUMNS = [
    Column("op", "op", align="<"),
    Column("model", "model", align="<"),
    Column("hidden", "hidden"),
    Column("tokens", "tokens"),
    Column("us", "us", "{:.2f}"),
    Column("gbps", "GB/s", "{:.0f}"),
    Column("pct_copy", "% copy", "{:.1f}"),
    Column("vs_eager", "x eager", "{:.2f}"),
    Column("vs_compile", "x compile", "{:.2f}"),
    Column("vs_liger", "x liger", "{:.2f}"),
    Column("vs_flashinfer", "x flashinfer", "{:.2f}"),
    Column("l2", "L2", align="<"),
    Column("rel_err", "rel err", "{:.1e}"),
]


@dataclass(frozen=True)
class Shape:
    tokens: int
    hidden: int


def parse_shapes(specs: Sequence[str]) -> list[Shape]:
    """'512x4096' -> Shape(tokens=512, hidden=4096)."""
    shapes = []
    for spec in specs:
        try:
            tokens, hidden = (int(v) for v in spec.lower().split("x"))
        except ValueError:
            raise ValueError(
                f"bad shape '{spec}': expected TOKENSxHIDDEN, e.g. 512x4096") from None
        if tokens < 1 or hidden < 1:
            raise ValueError(f"bad shape '{spec}': sizes must be positive")
        shapes.append(Shape(tokens, hidden))
    return shapes


def default_shapes() -> list[Shape]:
    return [Shape(t, h) for h in MODEL_HIDDEN for t in TOKENS]


def bytes_moved(op: str, shape: Shape, itemsize: int) -> int:
    tensors = 4 if "fused" in op else 2
    return (tensors * shape.tokens + 1) * shape.hidden * itemsize


def _ours(op: str, sets: list[dict[str, torch.Tensor]], enable_pdl: bool | None,
          fn: Callable[..., Any] | None = None) -> list[Callable[[], Any]]:
    """One call of our op per set; `fn`: another kernel taking our op's arguments."""
    fn = fn or getattr(torch.ops.fuseinfer, op)
    if "fused" in op:
        return [lambda s=s: fn(s["x"], s["r"], s["w"], EPS, enable_pdl) for s in sets]
    return [lambda s=s: fn(s["y"], s["x"], s["w"], EPS, enable_pdl) for s in sets]


def _baseline(name: str, op: str, sets: list[dict[str, torch.Tensor]]
              ) -> list[Callable[[], Any]]:
    fn = norm_baselines.baseline_fn(name, op)
    # The outputs stay referenced by their set until its next call, so the allocator
    # hands out as many output buffers as there are input sets.
    if "fused" in op:
        return [lambda s=s: s.__setitem__("out", fn(s["x"], s["r"], s["w"], EPS)) for s in sets]
    return [lambda s=s: s.__setitem__("out", fn(s["x"], s["w"], EPS)) for s in sets]


def _make_sets(shape: Shape, dtype: torch.dtype, count: int,
               device: torch.device | str = "cuda") -> list[dict[str, torch.Tensor]]:
    w = torch.randn(shape.hidden, device=device, dtype=dtype)
    sets = []
    for _ in range(count):
        x = torch.randn(shape.tokens, shape.hidden, device=device, dtype=dtype)
        sets.append({"x": x, "r": torch.randn_like(x), "y": torch.empty_like(x), "w": w})
    return sets


def _check(op: str, shape: Shape, dtype: torch.dtype, enable_pdl: bool | None) -> float:
    """Relative error of our op against the eager baseline on fresh data."""
    s = _make_sets(shape, dtype, 1)[0]
    x, r, w = s["x"].clone(), s["r"].clone(), s["w"]
    # Gemma applies the weight as (1 + w): the plain reference with w + 1 is its oracle.
    w_ref = w.float() + 1.0 if op.startswith("gemma") else w
    fn = getattr(torch.ops.fuseinfer, op)
    if "fused" in op:
        ref, _ = norm_baselines.torch_fused_add_rmsnorm(x, r, w_ref, EPS)
        fn(s["x"], s["r"], w, EPS, enable_pdl)
        got = s["x"]
    else:
        ref = norm_baselines.torch_rmsnorm(x, w_ref, EPS)
        got = s["y"]
        fn(got, s["x"], w, EPS, enable_pdl)
    return ((got.float() - ref.float()).norm() / ref.float().norm()).item()


def _flashinfer_rel_err(op: str, shape: Shape, dtype: torch.dtype, enable_pdl: bool | None
                        ) -> float:
    """FlashInfer's outputs against ours on the same fresh data (both outputs of the fused
    ops: the normalized input and the summed residual)."""
    ours = _make_sets(shape, dtype, 1)[0]
    theirs = {name: t.clone() for name, t in ours.items()}
    _ours(op, [ours], enable_pdl)[0]()
    _ours(op, [theirs], enable_pdl, flashinfer_baselines.norm(op))[0]()
    names = ("x", "r") if "fused" in op else ("y",)
    return flashinfer_baselines.worst_rel_err([(theirs[n], ours[n]) for n in names])


def _time_flashinfer(row: dict[str, Any], op: str, shape: Shape, dtype: torch.dtype,
                     sets: list[dict[str, torch.Tensor]], enable_pdl: bool | None,
                     config: TimingConfig, ours_us: float) -> None:
    """FlashInfer on the timed sets, once it agrees with ours (flashinfer_* keys of row)."""
    flashinfer_baselines.check_then_time(
        row, lambda: _flashinfer_rel_err(op, shape, dtype, enable_pdl),
        lambda: time_calls(_ours(op, sets, enable_pdl, flashinfer_baselines.norm(op)),
                           config), ours_us)


def run(shapes: Sequence[Shape], ops: Sequence[str], baselines: Sequence[str],
        copy_gbps: float | None, dtype: torch.dtype = torch.bfloat16,
        enable_pdl: bool | None = None, config: TimingConfig | None = None,
        cold: bool = False) -> list[dict[str, Any]]:
    """Time every (op, shape); one row per pair with our time and baseline ratios.

    Every provider runs on the same buffer sets: one set, warm in L2, when a call's data
    fits in a quarter of L2 (decode-sized), else enough rotated sets to defeat L2; `cold`
    rotates for every shape."""
    config = config or TimingConfig(repeats=15, target_graph_ms=2.0)
    if "liger" in baselines and not norm_baselines.liger_available():
        baselines = [b for b in baselines if b != "liger"]
    if "flashinfer" in baselines and not flashinfer_baselines.available("norm"):
        baselines = [b for b in baselines if b != "flashinfer"]
    l2 = l2_cache_bytes()
    itemsize = torch.empty((), dtype=dtype).element_size()
    rows = []
    with Progress(len(shapes) * len(ops), "bench norm") as progress:
        for op in ops:
            for shape in shapes:
                progress.step(f"{op} tokens={shape.tokens} hidden={shape.hidden}")
                nbytes = bytes_moved(op, shape, itemsize)
                sets = _make_sets(shape, dtype, buffer_sets(nbytes, l2, cold))
                ours = time_calls(_ours(op, sets, enable_pdl), config)
                row: dict[str, Any] = {
                    "op": op, "model": MODEL_HIDDEN.get(shape.hidden, ""),
                    "hidden": shape.hidden, "tokens": shape.tokens,
                    "dtype": str(dtype).removeprefix("torch."), "bytes": nbytes,
                    "us": ours.median_us, "us_p20": ours.p20_us, "us_p80": ours.p80_us,
                    "timing": ours.method, "calls_per_replay": ours.calls_per_replay,
                    "rotated_sets": len(sets),
                    "l2": "cold" if cold or 4 * nbytes > l2 else "warm",
                    "gbps": nbytes / ours.median_us / 1e3,
                }
                row["pct_copy"] = 100 * row["gbps"] / copy_gbps if copy_gbps else None
                for name in baselines:
                    if name == "flashinfer":
                        _time_flashinfer(row, op, shape, dtype, sets, enable_pdl, config,
                                         ours.median_us)
                        continue
                    if op.startswith("gemma"):
                        continue  # the other baselines implement the plain weight only
                    base = time_calls(_baseline(name, op, sets), config)
                    row[f"{name}_us"] = base.median_us
                    row[f"vs_{name}"] = base.median_us / ours.median_us
                row["rel_err"] = _check(op, shape, dtype, enable_pdl)
                rows.append(row)
                del sets
    return rows


# ---- the command: `fuseinfer bench norm` and `fuseinfer tune norm` ----------------------
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shapes", nargs="+", metavar="TOKENSxHIDDEN",
                        help="explicit shapes, e.g. 512x4096 (default: model shapes)")
    parser.add_argument("--hidden", nargs="+", type=int, help="keep only these hidden sizes")
    parser.add_argument("--tokens", nargs="+", type=int, help="keep only these token counts")
    parser.add_argument("--ops", nargs="+", default=None,
                        help="ops to time (default: fused_add_rmsnorm rmsnorm)")
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES),
                        help="baselines timed in the same run (liger and flashinfer "
                        "skipped if absent)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    add_run_options(parser, "norm")


def select_shapes(args: argparse.Namespace) -> list[Shape]:
    shapes = parse_shapes(args.shapes) if args.shapes else default_shapes()
    if args.hidden:
        shapes = [s for s in shapes if s.hidden in args.hidden]
    if args.tokens:
        shapes = [s for s in shapes if s.tokens in args.tokens]
    if not shapes:
        raise SystemExit("no shapes left after --hidden/--tokens filtering")
    return shapes


def run_command(args: argparse.Namespace) -> int:
    from ..ceilings import copy_bandwidth_gbps

    ops = args.ops or list(OPS)
    check_known("op", ops, ALL_OPS)
    shapes = select_shapes(args)
    copy_gbps = copy_bandwidth_gbps()
    rows = run(shapes, ops, args.baselines, copy_gbps, dtype=DTYPES[args.dtype],
               enable_pdl=PDL[args.pdl], cold=args.cold)
    return report_run("norm", COLUMNS, rows, copy_gbps, args)


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hidden", nargs="+", type=int,
                        help="hidden sizes to tune (default: 1024 ... 16384); the entry "
                        "written covers only these, each rule serving sizes up to its own")


register_suite(Suite(
    name="norm", help="RMSNorm kernels on real model shapes", run=run_command,
    add_arguments=add_arguments, records="norm",
    quick_args=("--hidden", "4096", "--tokens", "1", "128", "8192"),
    tune=tuner_in("norm_tune", help="the RMSNorm family's launch shapes (rmsnorm, "
                  "fused_add_rmsnorm)", add_arguments=add_tune_arguments)))
