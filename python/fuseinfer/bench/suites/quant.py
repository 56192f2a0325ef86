"""`fuseinfer bench quant`: the FP8 activation quantizers on real model shapes against
torch (eager and torch.compile of the same math) and, for the fused producers, our own
unfused pair.

per_token_group_quant_fp8 times its three kernels on the same buffers: the Triton one,
the C++ one (csrc/quant) precise and built with --use_fast_math (us_triton, us_cuda,
us_cuda_fast_math); `us` is the one the dispatch table's quant entry picks on this GPU
(`backend`), the one the baseline ratios are taken against. Scales are written M-major
with the padded column stride an FP8 GEMM reads (column_major_scales); group size 128.

Bytes counted per call (the fewest any kernel must move), T tokens, K channels quantized,
G groups per row: input T*K*itemsize read (silu_and_mul_quant: T*2K), q T*K written,
scales T*G*4 (per token: T*4; per tensor: 4); fused_add_rmsnorm_quant also reads the
residual and writes it back (2*T*K*itemsize) and reads the weight (K*itemsize).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import quant_baselines
from ..kernel_suite import PDL, add_run_options, check_known, report_run
from ..progress import Progress
from ..registry import Suite, register_suite
from ..report import Column
from ..timing import TimingConfig, buffer_sets, l2_cache_bytes, time_calls

MODEL_HIDDEN = {
    2048: "Qwen3-30B-A3B",
    4096: "Llama-3-8B",
    5120: "Qwen3-32B",
    7168: "DeepSeek-V3",
    8192: "Llama-3-70B",
    18432: "DeepSeek-V3 inter",
}
TOKENS = (1, 16, 128, 1024, 4096, 8192)
OPS = ("per_token_group_quant_fp8", "silu_and_mul_quant_fp8", "fused_add_rmsnorm_quant_fp8",
       "per_token_quant_fp8", "per_tensor_quant_fp8")
GROUP = 128
MAX_NORM_HIDDEN = 16384  # fused_add_rmsnorm_quant_fp8 holds a row in registers
FP8 = torch.float8_e4m3fn
Sets = dict[str, torch.Tensor]

COLUMNS = [
    Column("op", "op", align="<"),
    Column("model", "model", align="<"),
    Column("hidden", "hidden"),
    Column("tokens", "tokens"),
    Column("backend", "backend", align="<"),
    Column("us", "us", "{:.2f}"),
    Column("us_triton", "us triton", "{:.2f}"),
    Column("us_cuda", "us cuda", "{:.2f}"),
    Column("us_cuda_fast_math", "us cuda fm", "{:.2f}"),
    Column("gbps", "GB/s", "{:.0f}"),
    Column("pct_copy", "% copy", "{:.1f}"),
    Column("vs_eager", "x eager", "{:.2f}"),
    Column("vs_compile", "x compile", "{:.2f}"),
    Column("vs_unfused", "x unfused", "{:.2f}"),
    Column("l2", "L2", align="<"),
    Column("rel_err", "rel err", "{:.1e}"),
]


@dataclass(frozen=True)
class Case:
    op: str
    tokens: int
    hidden: int  # channels quantized (silu_and_mul_quant: the inner size)


def cases(ops: Sequence[str], hidden: Sequence[int], tokens: Sequence[int]) -> list[Case]:
    """Every (op, hidden, tokens); fused_add_rmsnorm_quant only up to the hidden size its
    kernel holds in registers."""
    return [Case(op, t, h) for op in ops for h in hidden for t in tokens
            if op != "fused_add_rmsnorm_quant_fp8" or h <= MAX_NORM_HIDDEN]


def bytes_moved(case: Case, itemsize: int) -> int:
    t, k = case.tokens, case.hidden
    scales = {"per_token_quant_fp8": t * 4, "per_tensor_quant_fp8": 4}.get(
        case.op, t * (k // GROUP) * 4)
    read = 2 * t * k * itemsize if case.op == "silu_and_mul_quant_fp8" else t * k * itemsize
    if case.op == "fused_add_rmsnorm_quant_fp8":
        read += 2 * t * k * itemsize + k * itemsize
    return read + t * k + scales


def make_sets(case: Case, dtype: torch.dtype, count: int, device: torch.device | str = "cuda"
              ) -> list[Sets]:
    """Buffer sets: x (input; [T, 2K] for silu_and_mul_quant), r and w (norm), q, the
    scales s (M-major, padded, for the group ops; [T, 1] per token; [1] per tensor) and
    mid (the unfused pair's 16-bit activation)."""
    from ...ops.quant.per_token_group_quant_fp8 import empty_group_quant

    t, k = case.tokens, case.hidden
    width = 2 * k if case.op == "silu_and_mul_quant_fp8" else k
    w = 1 + 0.1 * torch.randn(k, device=device, dtype=dtype)
    sets = []
    for _ in range(count):
        q, s = empty_group_quant(t, k, GROUP, True, torch.device(device))
        if case.op == "per_token_quant_fp8":
            s = torch.empty(t, 1, device=device)
        elif case.op == "per_tensor_quant_fp8":
            s = torch.empty(1, device=device)
        x = torch.randn(t, width, device=device, dtype=dtype) * 3
        sets.append({"x": x, "r": torch.randn(t, k, device=device, dtype=dtype), "w": w,
                     "q": q, "s": s, "mid": torch.empty(t, k, device=device, dtype=dtype)})
    return sets


def _group_triton(s: Sets, pdl: bool | None) -> None:
    from ...ops.quant.per_token_group_quant_fp8 import launch_per_token_group_quant_fp8
    from ...ops.triton_launch import use_pdl

    launch_per_token_group_quant_fp8(s["q"], s["s"], s["x"], GROUP, False,
                                     use_pdl(pdl, s["x"].device))


def _group_cuda(fast_math: bool) -> Callable[[Sets, bool | None], None]:
    def call(s: Sets, pdl: bool | None) -> None:
        torch.ops.fuseinfer._per_token_group_quant_fp8_cuda(s["q"], s["s"], s["x"], GROUP,
                                                            False, pdl, fast_math)
    return call


# per_token_group_quant_fp8's kernels, each timed in every row
GROUP_KERNELS: dict[str, Callable[[Sets, bool | None], None]] = {
    "triton": _group_triton, "cuda": _group_cuda(False), "cuda_fast_math": _group_cuda(True)}


def ours(op: str, s: Sets, pdl: bool | None) -> None:
    """Our public op on one set."""
    fn = getattr(torch.ops.fuseinfer, op)
    if op == "fused_add_rmsnorm_quant_fp8":
        fn(s["q"], s["s"], s["x"], s["r"], s["w"], GROUP, enable_pdl=pdl)
    elif op in ("per_token_quant_fp8", "per_tensor_quant_fp8"):
        fn(s["q"], s["s"], s["x"], enable_pdl=pdl)
    else:
        fn(s["q"], s["s"], s["x"], GROUP, enable_pdl=pdl)


def chosen_kernel(s: Sets) -> str:
    """Which of GROUP_KERNELS the public op runs on these buffers (the table's choice)."""
    if s["x"].device.type != "cuda":
        return "triton"
    from ...ops.quant.group_quant_cuda import fast_math_choice

    fast_math = fast_math_choice(s["q"], s["x"])
    return "triton" if fast_math is None else "cuda_fast_math" if fast_math else "cuda"


def _dequantized(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """q * its scale, whatever the scale granularity (group, token or tensor)."""
    qf = q.float()
    per = qf.size(1) // s.size(1) if s.dim() == 2 else qf.size(1)
    scale = s.reshape(1, 1) if s.dim() == 1 else s
    return (qf.reshape(qf.size(0), -1, per) * scale[..., None]).reshape(qf.shape)


def check(case: Case, dtype: torch.dtype, run: Callable[[Sets], None],
          device: torch.device | str = "cuda") -> float:
    """Relative error of `run`'s dequantized output against the eager baseline's on fresh
    data (q poisoned with NaN first: an unwritten value gives NaN)."""
    s = make_sets(case, dtype, 1, device)[0]
    ref = quant_baselines.baseline_call("eager", case.op, GROUP)(
        {name: t.clone() for name, t in s.items()})
    s["q"].view(torch.uint8).fill_(0x7F)  # e4m3 NaN
    run(s)
    want = _dequantized(ref[0], ref[1])
    got = _dequantized(s["q"], s["s"])
    return ((got - want).norm() / want.norm()).item()


def _timed(row: dict[str, Any], key: str, calls: list[Callable[[], Any]],
           config: TimingConfig) -> float:
    us = time_calls(calls, config).median_us
    row[key] = us
    return us


def run(cases_: Sequence[Case], baselines: Sequence[str], copy_gbps: float | None,
        dtype: torch.dtype = torch.bfloat16, enable_pdl: bool | None = None,
        config: TimingConfig | None = None, cold: bool = False,
        device: torch.device | str = "cuda") -> list[dict[str, Any]]:
    """Time every case: one row each with our time, the group kernels' times and the
    baseline ratios. Every provider runs on the same buffer sets: one set, warm in L2,
    when a call's data fits in a quarter of L2, else enough rotated sets to defeat L2."""
    config = config or TimingConfig(repeats=15, target_graph_ms=2.0)
    l2 = l2_cache_bytes()
    itemsize = torch.empty((), dtype=dtype).element_size()
    rows = []
    with Progress(len(cases_), "bench quant") as progress:
        for case in cases_:
            progress.step(f"{case.op} tokens={case.tokens} hidden={case.hidden}")
            nbytes = bytes_moved(case, itemsize)
            sets = make_sets(case, dtype, buffer_sets(nbytes, l2, cold), device)
            row: dict[str, Any] = {
                "op": case.op, "model": MODEL_HIDDEN.get(case.hidden, ""),
                "hidden": case.hidden, "tokens": case.tokens, "group_size": GROUP,
                "dtype": str(dtype).removeprefix("torch."), "bytes": nbytes,
                "rotated_sets": len(sets), "l2": "cold" if cold or 4 * nbytes > l2 else "warm",
            }
            if case.op == "per_token_group_quant_fp8":
                for name, fn in GROUP_KERNELS.items():
                    _timed(row, f"us_{name}", [lambda s=s, fn=fn: fn(s, enable_pdl)
                                               for s in sets], config)
                row["backend"] = chosen_kernel(sets[0])
                row["us"] = row[f"us_{row['backend']}"]
                row["rel_err_cuda_fast_math"] = check(
                    case, dtype, lambda s: GROUP_KERNELS["cuda_fast_math"](s, enable_pdl),
                    device)
            else:
                row["backend"] = "triton"
                _timed(row, "us", [lambda s=s, op=case.op: ours(op, s, enable_pdl)
                                          for s in sets],
                       config)
            row["gbps"] = nbytes / row["us"] / 1e3
            row["pct_copy"] = 100 * row["gbps"] / copy_gbps if copy_gbps else None
            for name in baselines:
                call = quant_baselines.baseline_call(name, case.op, GROUP, enable_pdl)
                if call is None:
                    continue
                # outputs stay referenced by their set until its next call
                calls = [lambda s=s, c=call: s.__setitem__("out", c(s)) for s in sets]
                us = _timed(row, f"{name}_us", calls, config)
                row[f"vs_{name}"] = us / row["us"]
            row["rel_err"] = check(case, dtype,
                                   lambda s, op=case.op: ours(op, s, enable_pdl), device)
            rows.append(row)
            del sets
    return rows


# ---- the command: `fuseinfer bench quant` -----------------------------------------------
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ops", nargs="+", help=f"ops to time (default: {' '.join(OPS)})")
    parser.add_argument("--hidden", nargs="+", type=int,
                        help="channels quantized (default: 2048 4096 5120 7168 8192 18432)")
    parser.add_argument("--tokens", nargs="+", type=int,
                        help="token counts (default: 1 16 128 1024 4096 8192)")
    parser.add_argument("--baselines", nargs="*", default=list(quant_baselines.BASELINES),
                        help="baselines timed in the same run (unfused: the fused "
                        "producers' two-op path)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    add_run_options(parser, "quant")


def run_command(args: argparse.Namespace) -> int:
    from ..ceilings import copy_bandwidth_gbps

    ops = args.ops or list(OPS)
    check_known("op", ops, OPS)
    check_known("baseline", args.baselines, quant_baselines.BASELINES)
    hidden = args.hidden or list(MODEL_HIDDEN)
    tokens = args.tokens or list(TOKENS)
    if min(tokens) < 1 or any(h < GROUP or h % GROUP for h in hidden):
        raise SystemExit(f"--tokens must be positive and --hidden multiples of {GROUP}")
    todo = cases(ops, hidden, tokens)
    if not todo:
        raise SystemExit("no cases left: fused_add_rmsnorm_quant_fp8 takes hidden <= "
                         f"{MAX_NORM_HIDDEN}")
    copy_gbps = copy_bandwidth_gbps()
    rows = run(todo, args.baselines, copy_gbps, dtype=DTYPES[args.dtype],
               enable_pdl=PDL[args.pdl], cold=args.cold)
    return report_run("quant", COLUMNS, rows, copy_gbps, args)


register_suite(Suite(
    name="quant", help="FP8 activation quantizers (group, per token, per tensor, fused "
    "SwiGLU / add+RMSNorm) on real model shapes; the group kernel's Triton, CUDA and "
    "CUDA fast-math builds side by side", run=run_command, add_arguments=add_arguments,
    records="quant", quick_args=("--hidden", "7168", "--tokens", "1", "128", "4096")))
