"""`fuseinfer bench fp8-gemm`: fp8_blockwise_mm (the configuration the `fp8_gemm` dispatch
table picks, recorded per row) on the linear layers of real models against cuBLAS
(per-tensor, rowwise and blockwise scaled mm), bf16 cuBLAS and FlashInfer (its Hopper
block-scaled GEMM and its per-tensor bmm_fp8). `fuseinfer tune fp8-gemm`: the table's
rules, in fp8_gemm_tune.py.

Per row (M tokens through an N x K weight): our time, TFLOP/s (2*M*N*K), % of the measured
fp8 matmul peak, weight GB/s (N*K bytes over our time: what bounds decode), % of the
roofline (the larger of compute time at the fp8 peak and bytes moved at copy bandwidth,
over our time) and the baselines' times over ours. Before anything is timed its output is
compared with the float32 reference on its own scales (fp8_gemm_baselines); a mismatch or a
failure is reported in the row, not timed.

Every shape rotates buffer sets past L2 (weights of a model's layers are never L2-warm when
the next call reads them), so decode rows measure weights streamed from HBM.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import fp8_gemm_baselines as baselines
from ..flashinfer_baselines import describe
from ..kernel_suite import PDL, add_output_options, check_known, report_run
from ..progress import Progress
from ..registry import Suite, register_suite, tuner_in
from ..report import Column
from ..timing import TimingConfig, buffer_sets, l2_cache_bytes, time_calls


@dataclass(frozen=True)
class GemmShape:
    model: str
    proj: str
    n: int  # output channels
    k: int  # input channels


def _model(name: str, *projs: tuple[str, int, int]) -> list[GemmShape]:
    return [GemmShape(name, proj, n, k) for proj, n, k in projs]


SHAPES: tuple[GemmShape, ...] = (
    *_model("DeepSeek-V3", ("q_b", 24576, 1536), ("kv_b", 32768, 512), ("o", 7168, 16384),
            ("expert_gate_up", 4096, 7168), ("qkv_a", 2112, 7168), ("expert_down", 7168, 2048)),
    *_model("Qwen3-8B", ("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 24576, 4096),
            ("down", 4096, 12288)),
    *_model("Qwen3-32B", ("qkv", 10240, 5120), ("o", 5120, 8192), ("gate_up", 51200, 5120),
            ("down", 5120, 25600)),
    *_model("Llama-3-8B", ("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096),
            ("down", 4096, 14336)),
    *_model("Llama-3-70B", ("qkv", 10240, 8192), ("o", 8192, 8192), ("gate_up", 57344, 8192),
            ("down", 8192, 28672)),
    GemmShape("square", "7168x7168", 7168, 7168),
)
MODELS = tuple(dict.fromkeys(s.model for s in SHAPES))
M_VALUES = (1, 4, 16, 64, 128, 512, 2048, 4096, 8192)
OP = "fp8_blockwise_mm"

COLUMNS = [
    Column("model", "model", align="<"),
    Column("proj", "proj", align="<"),
    Column("m", "M"),
    Column("n", "N"),
    Column("k", "K"),
    Column("config", "config", align="<"),
    Column("us", "us", "{:.2f}"),
    Column("tflops", "TFLOP/s", "{:.0f}"),
    Column("pct_fp8", "% fp8", "{:.1f}"),
    Column("weight_gbps", "weight GB/s", "{:.0f}"),
    Column("pct_roofline", "% roofline", "{:.1f}"),
    Column("vs_cublas_tensor", "x cuBLAS tensor", "{:.2f}"),
    Column("vs_cublas_row", "x cuBLAS row", "{:.2f}"),
    Column("vs_cublas_block", "x cuBLAS block", "{:.2f}"),
    Column("vs_bf16", "x bf16", "{:.2f}"),
    Column("vs_flashinfer", "x flashinfer", "{:.2f}"),
    Column("vs_flashinfer_tensor", "x flashinfer tensor", "{:.2f}"),
    Column("rel_err", "rel err", "{:.1e}"),
    Column("not_timed", "not timed", align="<"),
    Column("note", "note", align="<"),
]


@dataclass(frozen=True)
class Peaks:
    """The measured ceilings a row is reported against (None: not measured)."""

    fp8_tflops: float | None
    copy_gbps: float | None


def parse_nk(specs: Sequence[str]) -> list[tuple[int, int]]:
    """'2112x7168' -> (2112, 7168)."""
    out = []
    for spec in specs:
        try:
            n, k = (int(v) for v in spec.lower().split("x"))
        except ValueError:
            raise SystemExit(f"bad weight shape '{spec}': expected NxK, e.g. 2112x7168") from None
        out.append((n, k))
    return out


def select_shapes(models: Sequence[str] | None, nk: Sequence[tuple[int, int]] | None = None
                  ) -> list[GemmShape]:
    """The model shapes of `models` (default all), only the N x K pairs `nk` if given."""
    shapes = [s for s in SHAPES if (not models or s.model in models)
              and (not nk or (s.n, s.k) in nk)]
    if not shapes:
        raise SystemExit("no shapes left after --models/--nk filtering")
    return shapes


def dispatched_config(m: int, n: int, k: int) -> str:
    """The configuration the dispatch table names for this problem on the present GPU."""
    from ...ops.gemm.fp8_gemm_dispatch import effective

    index = torch.cuda.current_device() if torch.cuda.is_available() else None
    return effective(index).config_for(m, n, k)


def ours(sets: Sequence[baselines.Operands], enable_pdl: bool | None,
         config: str | None = None) -> list[Callable[[], torch.Tensor]]:
    """One call of our op per set, into the set's own output (`config`: a named
    configuration instead of the table's choice)."""
    from ...ops.gemm.fp8_blockwise_mm import fp8_blockwise_mm

    return [lambda s=s: fp8_blockwise_mm(s.a_q, s.a_scales, s.b_q, s.b_scales, out=s.out,
                                         config=config, enable_pdl=enable_pdl)
            for s in sets]


def rates(m: int, n: int, k: int, us: float, peaks: Peaks) -> dict[str, float | None]:
    """TFLOP/s, % fp8 peak, weight GB/s and % roofline of one call taking `us`."""
    flops = 2 * m * n * k
    floor_us = [flops / (peaks.fp8_tflops * 1e6)] if peaks.fp8_tflops else []
    if peaks.copy_gbps:
        floor_us.append(baselines.operand_bytes(m, n, k) / (peaks.copy_gbps * 1e3))
    tflops = flops / us / 1e6
    # pct_roofline first: `bench all` shows a row's first pct_* key as its "% ceiling".
    return {
        "tflops": tflops,
        "pct_roofline": 100 * max(floor_us) / us if floor_us else None,
        "pct_fp8": 100 * tflops / peaks.fp8_tflops if peaks.fp8_tflops else None,
        "weight_gbps": n * k / us / 1e3,
    }


# A baseline failing like this cannot run any shape in this process (it did not import or
# its JIT build failed): the rest of the run reports the same error without retrying, since
# a failed build can cost a minute per row.
_FATAL_WORDS = ("ninja", "compil", "build", "no module", "has no attribute")


def _time_baseline(row: dict[str, Any], name: str, sets: Sequence[baselines.Operands],
                   config: TimingConfig, ours_us: float, broken: dict[str, str]) -> None:
    """Check `name` on the first set, then time it on all: `<name>_us` and `vs_<name>`, or
    `<name>_error` (failed to run or disagreed with the reference; not timed). `broken`:
    the baselines that cannot run at all here, with why (read and extended)."""
    if name in broken:
        row[f"{name}_error"] = broken[name]
        return
    try:
        calls = [baselines.PREPARE[name](sets[0])]
        err = baselines.checked_rel_err(calls[0], sets[0], name)
        row[f"{name}_rel_err"] = err
        if not err <= baselines.AGREE_REL_ERR:  # NaN included
            row[f"{name}_error"] = (f"disagrees with the reference: rel err {err:.1e} > "
                                    f"{baselines.AGREE_REL_ERR:.0e}, not timed")
            return
        calls += [baselines.PREPARE[name](s) for s in sets[1:]]
        timed = time_calls(calls, config)
    except Exception as error:  # a baseline that cannot run a shape is reported, not fatal
        row[f"{name}_error"] = describe(error)
        if any(word in str(error).lower() for word in _FATAL_WORDS):
            broken[name] = row[f"{name}_error"]
        return
    row[f"{name}_us"] = timed.median_us
    row[f"vs_{name}"] = timed.median_us / ours_us


def measure(shape: GemmShape, m: int, wanted: Sequence[str], peaks: Peaks,
            enable_pdl: bool | None, config: TimingConfig, device: str = "cuda",
            broken: dict[str, str] | None = None) -> dict[str, Any]:
    """One row: check ours, time it, then each baseline on the same rotated sets."""
    n, k = shape.n, shape.k
    nbytes = baselines.operand_bytes(m, n, k)
    count = buffer_sets(nbytes, l2_cache_bytes(), cold=True)
    sets = [baselines.make_operands(m, n, k, device) for _ in range(count)]
    row: dict[str, Any] = {
        "op": OP, "model": shape.model, "proj": shape.proj, "m": m, "n": n, "k": k,
        "shape": f"{shape.proj} M={m} N={n} K={k}", "config": dispatched_config(m, n, k),
        "bytes": nbytes, "rotated_sets": count,
    }
    try:
        err = baselines.checked_rel_err(ours(sets[:1], enable_pdl)[0], sets[0], "ours")
    except Exception as error:
        row["note"] = f"ours failed: {describe(error)}"
        return row
    row["rel_err"] = err
    if not err <= baselines.AGREE_REL_ERR:
        row["note"] = (f"MISMATCH: rel err {err:.1e} > {baselines.AGREE_REL_ERR:.0e} "
                       "against the float32 reference, not timed")
        return row
    timed = time_calls(ours(sets, enable_pdl), config)
    row.update({"us": timed.median_us, "us_p20": timed.p20_us, "us_p80": timed.p80_us,
                "timing": timed.method, "calls_per_replay": timed.calls_per_replay})
    row.update(rates(m, n, k, timed.median_us, peaks))
    for name in wanted:
        _time_baseline(row, name, sets, config, timed.median_us,
                       {} if broken is None else broken)
    failed = [name for name in wanted if f"{name}_error" in row]
    row["not_timed"] = ", ".join(failed) or None
    return row


def run(shapes: Sequence[GemmShape], ms: Sequence[int], wanted: Sequence[str], peaks: Peaks,
        enable_pdl: bool | None = None, config: TimingConfig | None = None,
        device: str = "cuda") -> list[dict[str, Any]]:
    """Every (shape, M): one row each, shapes in order, M ascending."""
    config = config or TimingConfig(repeats=15, target_graph_ms=2.0)
    wanted = [name for name in wanted if baselines.available(name)]
    broken: dict[str, str] = {}
    rows = []
    with Progress(len(shapes) * len(ms), "bench fp8-gemm") as progress:
        for shape in shapes:
            for m in ms:
                progress.step(f"{shape.model} {shape.proj} M={m} N={shape.n} K={shape.k}")
                rows.append(measure(shape, m, wanted, peaks, enable_pdl, config, device,
                                    broken))
                if device == "cuda":
                    torch.cuda.empty_cache()  # the next shape's sets may be far larger
    return rows


# ---- the command: `fuseinfer bench fp8-gemm` and `fuseinfer tune fp8-gemm` ---------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", metavar="MODEL",
                        help=f"models to time (default: all of {', '.join(MODELS)})")
    parser.add_argument("--nk", nargs="+", metavar="NxK",
                        help="keep only these weight shapes, e.g. 2112x7168")
    parser.add_argument("--m", nargs="+", type=int, metavar="M",
                        help=f"token counts (default: {' '.join(map(str, M_VALUES))})")
    parser.add_argument("--baselines", nargs="*", default=list(baselines.BASELINES),
                        help="baselines timed in the same run (flashinfer skipped if absent)")
    parser.add_argument("--pdl", choices=list(PDL), default="auto")
    # Always cold: a model's weights are never L2-resident when their layer runs again.
    parser.set_defaults(cold=True)
    add_output_options(parser, "fp8_gemm", continue_run=True)


def peaks() -> Peaks:
    """The cached fp8 peak and copy bandwidth, measured first where missing."""
    from ..ceilings import load_ceilings, measure_ceilings

    cached = load_ceilings()
    missing = [kind for kind, key in (("copy", "copy_gbps"), ("fp8", "fp8_tflops"))
               if cached is None or getattr(cached, key) is None]
    if missing:
        cached = measure_ceilings(missing)
    return Peaks(cached.fp8_tflops, cached.copy_gbps)


def run_command(args: argparse.Namespace) -> int:
    check_known("model", args.models or [], MODELS)
    check_known("baseline", args.baselines, baselines.BASELINES)
    ms = args.m or list(M_VALUES)
    if any(m < 1 for m in ms):
        raise SystemExit(f"token counts must be positive, got {ms}")
    limits = peaks()
    rows = run(select_shapes(args.models, parse_nk(args.nk or [])), ms, args.baselines, limits,
               enable_pdl=PDL[args.pdl])
    return report_run("fp8_gemm", COLUMNS, rows, limits.copy_gbps, args)


register_suite(Suite(
    name="fp8-gemm", help="FP8 blockwise GEMM on model linear layers against cuBLAS "
    "(per-tensor, rowwise, blockwise), bf16 cuBLAS and FlashInfer", run=run_command,
    add_arguments=add_arguments, records="fp8_gemm",
    quick_args=("--models", "DeepSeek-V3", "square", "--nk", "7168x7168", "2112x7168",
                "7168x16384", "--m", "1", "16", "128", "4096"),
    tune=tuner_in("fp8_gemm_tune",
                  help="the FP8 GEMM configuration per M bucket (the fp8_gemm entry)")))
