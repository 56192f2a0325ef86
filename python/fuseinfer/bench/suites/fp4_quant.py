"""`fuseinfer bench fp4-quant`: nvfp4_quantize, mxfp4_quantize and mxfp8_quantize on real
model shapes (GPT-OSS 2880, Llama-3-8B 4096, DeepSeek-V3 7168; 1 .. 8192 tokens) against
copy bandwidth, torch (eager and torch.compile of the reference math) and FlashInfer's
quantizers where they run.

METHOD as the other kernel suites: CUDA-graph replay of many calls, median of repeats,
buffers rotated past L2 for shapes whose data exceeds a quarter of it, every baseline timed
in the same run on the same inputs. nvfp4 writes swizzled scales (its default, what an
NVFP4 GEMM reads), the MX ops linear ones (theirs); mxfp8 pads GPT-OSS's 2880 to 3072
(--mxfp8-pad) inside the kernel.

Bytes counted per call (the fewest any kernel must move), T tokens, K hidden, N mxfp8's
output width: input T*K*itemsize read; q T*K/2 (fp4) or T*N written; scales T*K/16
(nvfp4), T*K/32 (mxfp4), T*N/32 (mxfp8). Targets (H200): >= 80% of copy bandwidth at
4096 x 7168, <= 3 us at <= 16 tokens.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import fp4_quant_baselines
from ..kernel_suite import PDL, add_run_options, check_known, report_run
from ..progress import Progress
from ..registry import Suite, register_suite
from ..report import Column
from ..timing import TimingConfig, buffer_sets, l2_cache_bytes, time_calls

MODEL_HIDDEN = {2880: "GPT-OSS", 4096: "Llama-3-8B", 7168: "DeepSeek-V3"}
TOKENS = (1, 16, 128, 1024, 4096, 8192)
OPS = ("nvfp4", "mxfp4", "mxfp8")
MXFP8_PAD = {2880: 3072}  # GPT-OSS pads its hidden size for the MXFP8 x MXFP4 experts
Sets = dict[str, torch.Tensor]

COLUMNS = [
    Column("op", "op", align="<"),
    Column("model", "model", align="<"),
    Column("hidden", "hidden"),
    Column("out_hidden", "out"),
    Column("tokens", "tokens"),
    Column("us", "us", "{:.2f}"),
    Column("gbps", "GB/s", "{:.0f}"),
    Column("pct_copy", "% copy", "{:.1f}"),
    Column("vs_eager", "x eager", "{:.2f}"),
    Column("vs_compile", "x compile", "{:.2f}"),
    Column("vs_flashinfer", "x flashinfer", "{:.2f}"),
    Column("l2", "L2", align="<"),
    Column("rel_err", "rel err", "{:.1e}"),
]


@dataclass(frozen=True)
class Case:
    op: str
    tokens: int
    hidden: int
    out_hidden: int  # mxfp8's padded width; hidden for the others


def cases(ops: Sequence[str], hidden: Sequence[int], tokens: Sequence[int],
          pad: bool = True) -> list[Case]:
    return [Case(op, t, h, MXFP8_PAD.get(h, h) if op == "mxfp8" and pad else h)
            for op in ops for h in hidden for t in tokens]


def bytes_moved(case: Case, itemsize: int) -> int:
    t, k, n = case.tokens, case.hidden, case.out_hidden
    if case.op == "mxfp8":
        return t * k * itemsize + t * n + t * n // 32
    return t * k * itemsize + t * k // 2 + t * k // (16 if case.op == "nvfp4" else 32)


def make_sets(case: Case, dtype: torch.dtype, count: int, device: torch.device | str = "cuda"
              ) -> list[Sets]:
    """Buffer sets: x, its global scale gs (nvfp4), and our op's outputs q and s."""
    from ...ops.fp4_quant.checks import MXFP4, MXFP8, NVFP4, empty_outputs
    from ...ops.fp4_quant.nvfp4_quantize import global_scale_for

    fmt = {"nvfp4": NVFP4, "mxfp4": MXFP4, "mxfp8": MXFP8}[case.op]
    sets = []
    for _ in range(count):
        x = torch.randn(case.tokens, case.hidden, device=device, dtype=dtype) * 3
        q, s = empty_outputs(fmt, x, case.out_hidden, swizzled=case.op == "nvfp4")
        sets.append({"x": x, "gs": global_scale_for(x), "q": q, "s": s})
    return sets


def ours(op: str, s: Sets, pdl: bool | None) -> None:
    """Our public op on one set (destination passing, the wrappers' default layouts)."""
    if op == "nvfp4":
        torch.ops.fuseinfer.nvfp4_quantize(s["q"], s["s"], s["x"], s["gs"], True,
                                           enable_pdl=pdl)
    else:
        getattr(torch.ops.fuseinfer, f"{op}_quantize")(s["q"], s["s"], s["x"], False,
                                                       enable_pdl=pdl)


def dequantized(op: str, q: torch.Tensor, scales: torch.Tensor, s: Sets) -> torch.Tensor:
    """float32 values of our outputs (scales in our layout)."""
    from ...ops.fp4_quant.nvfp4_quantize import dequantize_nvfp4
    from ...ops.fp4_quant.scale_layout import from_layout
    from ...ops.quant.fp4_format import dequantize_mxfp4, e8m0_to_float

    t = q.shape[0]
    if op == "nvfp4":
        k = q.shape[1] * 2
        linear = from_layout(scales.view(torch.uint8), t, k // 16, True)
        return dequantize_nvfp4(q, linear.view(torch.float8_e4m3fn), s["gs"])
    if op == "mxfp4":
        return dequantize_mxfp4(q, scales)
    return q.float() * e8m0_to_float(scales).repeat_interleave(32, dim=-1)


def check(case: Case, dtype: torch.dtype, run: Callable[[Sets], None],
          device: torch.device | str = "cuda") -> float:
    """Relative error of `run`'s dequantized output against the input on fresh data, after
    poisoning the outputs (an unwritten byte gives a large error or NaN)."""
    s = make_sets(case, dtype, 1, device)[0]
    s["q"].view(torch.uint8).fill_(0x77)
    s["s"].view(torch.uint8).fill_(0xFF)
    run(s)
    got = dequantized(case.op, s["q"], s["s"], s)[:, :case.hidden]
    want = s["x"].float()
    return ((got - want).norm() / want.norm()).item()


# A baseline's packed values must equal ours this often (rounding ties may differ) for its
# time to count: a kernel that writes nothing (FlashInfer's fp4_quantize body is compiled
# for sm_100+ only, empty on Hopper) otherwise looks fast.
MIN_AGREEMENT = 0.99


def agreement(case: Case, dtype: torch.dtype, call: Callable[[Sets], Any],
              enable_pdl: bool | None, device: torch.device | str = "cuda") -> float | None:
    """Fraction of a baseline's packed output bytes equal to ours on fresh data (None: its
    output is not a packed tensor of our size, e.g. the torch math's float values)."""
    s = make_sets(case, dtype, 1, device)[0]
    ours(case.op, s, enable_pdl)
    got = call(s)
    q = got[0] if isinstance(got, (tuple, list)) else got
    if not isinstance(q, torch.Tensor) or q.dtype.is_floating_point and q.element_size() > 1:
        return None
    mine = s["q"].contiguous().view(torch.uint8).flatten()
    theirs = q.contiguous().view(torch.uint8).flatten()
    if theirs.numel() != mine.numel():
        return None
    return (theirs == mine).float().mean().item()


def run(cases_: Sequence[Case], baselines: Sequence[str], copy_gbps: float | None,
        dtype: torch.dtype = torch.bfloat16, enable_pdl: bool | None = None,
        config: TimingConfig | None = None, cold: bool = False,
        device: torch.device | str = "cuda") -> list[dict[str, Any]]:
    """One row per case: our time, GB/s, % of copy bandwidth and the baselines' ratios
    (a baseline that cannot run here leaves a note instead)."""
    config = config or TimingConfig(repeats=15, target_graph_ms=2.0)
    l2 = l2_cache_bytes()
    itemsize = torch.empty((), dtype=dtype).element_size()
    rows = []
    with Progress(len(cases_), "bench fp4-quant") as progress:
        for case in cases_:
            progress.step(f"{case.op} tokens={case.tokens} hidden={case.hidden}")
            nbytes = bytes_moved(case, itemsize)
            sets = make_sets(case, dtype, buffer_sets(nbytes, l2, cold), device)
            row: dict[str, Any] = {
                "op": case.op, "model": MODEL_HIDDEN.get(case.hidden, ""),
                "hidden": case.hidden, "out_hidden": case.out_hidden, "tokens": case.tokens,
                "dtype": str(dtype).removeprefix("torch."), "bytes": nbytes,
                "rotated_sets": len(sets), "l2": "cold" if cold or 4 * nbytes > l2 else "warm",
                "swizzled": case.op == "nvfp4",
            }
            row["us"] = time_calls([lambda s=s, op=case.op: ours(op, s, enable_pdl)
                                    for s in sets], config).median_us
            row["gbps"] = nbytes / row["us"] / 1e3
            row["pct_copy"] = 100 * row["gbps"] / copy_gbps if copy_gbps else None
            for name in baselines:
                call, note = fp4_quant_baselines.baseline_call(name, case.op)
                if call is None:
                    row[f"{name}_note"] = note
                    continue
                try:
                    calls = [lambda s=s, c=call: s.__setitem__("out", c(s)) for s in sets]
                    us = time_calls(calls, config).median_us
                except Exception as error:  # a baseline that imports but cannot run here
                    row[f"{name}_note"] = f"failed: {type(error).__name__}: {error}"[:200]
                    continue
                agree = agreement(case, dtype, call, enable_pdl, device)
                if agree is not None:
                    row[f"{name}_agree"] = agree
                    if agree < MIN_AGREEMENT:  # a time of wrong output is no baseline
                        row[f"{name}_note"] = (f"output disagrees: {100 * agree:.1f}% of its "
                                               f"packed bytes equal ours; time "
                                               f"{us:.2f} us not used")
                        continue
                row[f"{name}_us"] = us
                row[f"vs_{name}"] = us / row["us"]
            row["rel_err"] = check(case, dtype,
                                   lambda s, op=case.op: ours(op, s, enable_pdl), device)
            rows.append(row)
            del sets
    return rows


# ---- the command: `fuseinfer bench fp4-quant` -------------------------------------------
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ops", nargs="+", help=f"ops to time (default: {' '.join(OPS)})")
    parser.add_argument("--hidden", nargs="+", type=int,
                        help="hidden sizes (default: 2880 4096 7168)")
    parser.add_argument("--tokens", nargs="+", type=int,
                        help="token counts (default: 1 16 128 1024 4096 8192)")
    parser.add_argument("--baselines", nargs="*", default=list(fp4_quant_baselines.BASELINES),
                        help="baselines timed in the same run")
    parser.add_argument("--no-mxfp8-pad", action="store_true",
                        help="mxfp8 without GPT-OSS's 2880 -> 3072 padding")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    add_run_options(parser, "fp4_quant")


def run_command(args: argparse.Namespace) -> int:
    from ..ceilings import copy_bandwidth_gbps

    ops = args.ops or list(OPS)
    check_known("op", ops, OPS)
    check_known("baseline", args.baselines, fp4_quant_baselines.BASELINES)
    hidden = args.hidden or list(MODEL_HIDDEN)
    tokens = args.tokens or list(TOKENS)
    if min(tokens) < 1 or any(h < 32 or h % 32 for h in hidden):
        raise SystemExit("--tokens must be positive and --hidden multiples of 32")
    copy_gbps = copy_bandwidth_gbps()
    rows = run(cases(ops, hidden, tokens, not args.no_mxfp8_pad), args.baselines, copy_gbps,
               dtype=DTYPES[args.dtype], enable_pdl=PDL[args.pdl], cold=args.cold)
    return report_run("fp4_quant", COLUMNS, rows, copy_gbps, args)


register_suite(Suite(
    name="fp4-quant", help="NVFP4 / MXFP4 / MXFP8 activation quantizers on real model "
    "shapes against copy bandwidth, torch eager / torch.compile and FlashInfer",
    run=run_command, add_arguments=add_arguments, records="fp4_quant",
    quick_args=("--hidden", "7168", "--tokens", "1", "16", "4096")))
