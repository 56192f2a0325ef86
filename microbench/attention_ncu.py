"""One attention kernel under Nsight Compute (developer tool, not a benchmark of record): a
bench attention case run under one of the sweeps' variants, its kernel's hardware counters
(speed of light, memory, occupancy, warp stalls) read by `ncu` and written as JSON.

    python microbench/attention_ncu.py decode Llama-3-8B 64x4096 --cache fp8 \\
        --variant "cuda w4 s4" --kernel decode --json F
    python microbench/attention_ncu.py prefill GPT-OSS 4x2k \\
        --variant "sm90a m128 n128 s4 persistent" --kernel prefill_hopper --json F

Variants are named as the sweeps print them (decode_cuda_sweep.py: "table ...", "cuda w4
s4"; prefill_hopper_sweep.py: "portable", "sm90a m192 n128 s2 persistent"); --list prints
a case's names. The case runs three times; ncu profiles the third launch of a kernel whose
name --kernel (a regular expression) finds, so warm-up launches (compiles, first-touch
page faults) stay out. Clocks are left alone (--clock-control none, as the device notes
ask): durations read here are not timings of record.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

SECTIONS = ("SpeedOfLight", "MemoryWorkloadAnalysis", "Occupancy", "LaunchStats",
            "SchedulerStats", "WarpStateStats")
# average warps stalled per issued instruction, by reason (what the stall columns mean:
# Nsight Compute's "Warp State Statistics")
STALLS = ("long_scoreboard", "short_scoreboard", "barrier", "membar", "mio_throttle",
          "lg_throttle", "math_pipe_throttle", "wait", "not_selected", "dispatch_stall",
          "no_instruction", "drain", "sleeping", "tex_throttle", "branch_resolving",
          "imc_miss", "misc")
STALL_METRIC = "smsp__average_warps_issue_stalled_{}_per_issue_active.ratio"
PAGE_SIZE = 64
RUNS = 3


def _case_and_tables(kind: str, model: str, shape: str, fp8: bool) -> tuple[Any, list]:
    """The bench case and the sweep's (name, table) variants for it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from decode_cuda_sweep import variants as decode_variants
    from prefill_hopper_sweep import variants as prefill_variants

    from fuseinfer.bench.suites.attention import MODELS, decode_cases, prefill_cases
    from fuseinfer.ops.attention.dispatch import attention_table

    m = MODELS[model]
    table = attention_table()
    if kind == "decode":
        batch, length = (int(x) for x in shape.split("x"))
        case = decode_cases([m], [batch], [length], extra=())[0]
        return case, decode_variants(table, m.head_dim, batch, fp8)
    return prefill_cases([m], [shape])[0], prefill_variants(table, m.head_dim)


def run_case(args: argparse.Namespace) -> None:
    """The child ncu watches: the case under the variant, RUNS times, synchronised."""
    import torch

    from fuseinfer.bench.suites.attention import make_inputs, ours

    case, variants = _case_and_tables(args.kind, args.model, args.shape, args.cache == "fp8")
    table = dict(variants)[args.variant]
    x = make_inputs(case, PAGE_SIZE, torch.bfloat16, fp8=args.cache == "fp8", table=table)
    fn = ours(x, window_left=case.model.window_left)
    for _ in range(RUNS):
        fn()
    torch.cuda.synchronize()


def parse_details(text: str) -> dict[str, dict[str, str]]:
    """ncu --csv --page details output -> {kernel: {"Section / Metric [unit]": value}}."""
    start = text.find('"ID"')
    out: dict[str, dict[str, str]] = {}
    for row in csv.DictReader(io.StringIO(text[start:] if start >= 0 else "")):
        name = row.get("Kernel Name", "")
        section, metric = row.get("Section Name", ""), row.get("Metric Name", "")
        unit = row.get("Metric Unit", "")
        key = f"{section} / {metric}" + (f" [{unit}]" if unit else "")
        out.setdefault(name, {})[key] = row.get("Metric Value", "")
    return out


def parse_raw(text: str) -> dict[str, dict[str, str]]:
    """ncu --csv --page raw output (one row per kernel, a column per metric) -> {kernel:
    {metric: value}} for the stall metrics."""
    lines = [line for line in text.splitlines() if line.startswith('"')]
    if len(lines) < 3:
        return {}
    rows = list(csv.reader(lines))
    header, data = rows[0], rows[2:]  # rows[1]: units
    out: dict[str, dict[str, str]] = {}
    for values in data:
        row = dict(zip(header, values, strict=False))
        out[row.get("Kernel Name", "")] = {k: v for k, v in row.items()
                                           if k.startswith("smsp__average_warps")}
    return out


def profile(args: argparse.Namespace) -> dict[str, Any]:
    ncu = shutil.which("ncu") or "/usr/local/cuda/bin/ncu"
    child = [sys.executable, __file__, args.kind, args.model, args.shape, "--cache",
             args.cache, "--variant", args.variant, "--child"]
    base = [ncu, "--clock-control", "none", "--target-processes", "all", "-k",
            f"regex:{args.kernel}", "--launch-skip", str(RUNS - 1), "--launch-count", "1",
            "--csv"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    sections = [a for s in SECTIONS for a in ("--section", s)]
    details = subprocess.run(base + sections + ["--page", "details"] + child, env=env,
                             capture_output=True, text=True, check=False)
    metrics = ",".join(STALL_METRIC.format(s) for s in STALLS)
    raw = subprocess.run(base + ["--metrics", metrics, "--page", "raw"] + child, env=env,
                         capture_output=True, text=True, check=False)
    result: dict[str, Any] = dict(kind=args.kind, model=args.model, shape=args.shape,
                                  cache=args.cache, variant=args.variant,
                                  kernel_regex=args.kernel, kernels={})
    stalls = parse_raw(raw.stdout)
    for name, values in parse_details(details.stdout).items():
        result["kernels"][name] = dict(details=values, stalls={
            k.split("stalled_")[1].split("_per_issue")[0]: v
            for k, v in stalls.get(name, {}).items()})
    if not result["kernels"]:
        result["error"] = (details.stderr or details.stdout)[-2000:]
    return result


def _number(value: str) -> float:
    """An ncu value as a number (thousands separators dropped; n/a and blanks are 0)."""
    try:
        return float(value.replace(",", ""))
    except ValueError:
        return 0.0


def summary(result: dict[str, Any]) -> str:
    lines = [f"{result['kind']} {result['model']} {result['shape']} {result['cache']} "
             f"{result['variant']}"]
    wanted = ("Duration", "Memory Throughput", "DRAM Throughput", "Compute (SM) Throughput",
              "Achieved Occupancy", "Registers Per Thread", "Warp Cycles Per Issued Instruction")
    for name, k in result["kernels"].items():
        lines.append(f"  {name[:100]}")
        for key, value in k["details"].items():
            if any(key.split(" / ")[-1].startswith(w) for w in wanted):
                lines.append(f"    {key}: {value}")
        top = sorted(((_number(v), s) for s, v in k["stalls"].items()), reverse=True)[:5]
        lines.append("    stalls per issue: " + ", ".join(f"{s} {v:.2f}" for v, s in top))
    if "error" in result:
        lines.append(f"  ncu found no kernel: {result['error']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=["decode", "prefill"])
    ap.add_argument("model")
    ap.add_argument("shape", help="decode: BATCHxLENGTH; prefill: a bench prefill name")
    ap.add_argument("--cache", choices=["bf16", "fp8"], default="bf16")
    ap.add_argument("--variant", help="a sweep variant name (--list shows them)")
    ap.add_argument("--kernel", help="regex for the kernel name ncu profiles (default: the "
                    "kind, which the attention kernels' names hold and setup kernels' do not)")
    ap.add_argument("--list", action="store_true", help="print the case's variant names")
    ap.add_argument("--json", type=Path, help="append the result here (a JSON list)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.list:
        _, variants = _case_and_tables(args.kind, args.model, args.shape, args.cache == "fp8")
        print("\n".join(name for name, _ in variants))
        return
    if args.variant is None:
        ap.error("--variant is required (--list shows the names)")
    if args.child:
        run_case(args)
        return
    args.kernel = args.kernel or args.kind
    result = profile(args)
    print(summary(result), flush=True)
    if args.json:
        done = json.loads(args.json.read_text()) if args.json.exists() else []
        args.json.write_text(json.dumps(done + [result], indent=1))


if __name__ == "__main__":
    main()
