"""`fuseinfer bench sampling`: greedy_sample (the argmax of each logits row, written to the
tokens and to a buffer of tokens in flight, one kernel) against what it replaces in the
runtime's greedy step, torch.argmax then a copy into that buffer (two launches), on the
bundled models' vocabularies and decode batch sizes.

Bytes counted per call: the logits read, rows * vocab * itemsize. Logits are random with
the row maximum planted at a random column; the tokens are checked against torch.argmax.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from ...ops.sampling.greedy_sample import chunking, greedy_sample
from ..kernel_suite import PDL, add_run_options, report_run
from ..progress import Progress
from ..registry import Suite, register_suite
from ..report import Column
from ..timing import TimingConfig, buffer_sets, l2_cache_bytes, time_calls

VOCABS = {151936: "Qwen3", 128256: "Llama-3", 201088: "GPT-OSS"}
ROWS = (1, 8, 32, 64, 256)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

COLUMNS = [
    Column("model", "model", align="<"),
    Column("vocab", "vocab"),
    Column("rows", "rows"),
    Column("chunks", "chunks/row"),
    Column("us", "us", "{:.2f}"),
    Column("torch_us", "us torch", "{:.2f}"),
    Column("vs_torch", "x torch", "{:.2f}"),
    Column("gbps", "GB/s", "{:.0f}"),
    Column("pct_copy", "% copy", "{:.1f}"),
    Column("l2", "L2", align="<"),
]


def _logits(rows: int, vocab: int, dtype: torch.dtype) -> torch.Tensor:
    x = torch.randn(rows, vocab, device="cuda", dtype=dtype)
    x[torch.arange(rows), torch.randint(0, vocab, (rows,))] = 20.0
    return x


def _case(vocab: int, rows: int, dtype: torch.dtype, copy_gbps: float | None,
          enable_pdl: bool | None, cold: bool, config: TimingConfig, l2: int
          ) -> dict[str, Any]:
    """One (vocab, rows) row: both paths timed on the same logits sets, then checked."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = rows * vocab * itemsize
    sets = [_logits(rows, vocab, dtype) for _ in range(buffer_sets(nbytes, l2, cold))]
    future = torch.zeros(4 * rows + 4, dtype=torch.int64, device="cuda")
    tokens = torch.empty(rows, dtype=torch.int64, device="cuda")

    def ours(x: torch.Tensor) -> None:
        torch.ops.fuseinfer.greedy_sample(tokens, x, future, 1, enable_pdl=enable_pdl)

    def replaced(x: torch.Tensor) -> None:  # the runtime's unfused greedy step
        future[1:1 + rows].copy_(x.argmax(dim=-1))

    row: dict[str, Any] = {
        "model": VOCABS.get(vocab, ""), "vocab": vocab, "rows": rows,
        "chunks": chunking(rows, vocab)[0], "dtype": str(dtype).removeprefix("torch."),
        "bytes": nbytes, "rotated_sets": len(sets),
        "l2": "cold" if cold or 4 * nbytes > l2 else "warm"}
    row["us"] = time_calls([lambda x=x: ours(x) for x in sets], config).median_us
    row["torch_us"] = time_calls([lambda x=x: replaced(x) for x in sets], config).median_us
    row["vs_torch"] = row["torch_us"] / row["us"]
    row["gbps"] = nbytes / row["us"] / 1e3
    row["pct_copy"] = 100 * row["gbps"] / copy_gbps if copy_gbps else None
    got = greedy_sample(sets[0], enable_pdl=enable_pdl)
    row["mismatches"] = int((got != sets[0].argmax(dim=-1)).sum().item())
    return row


def run(vocabs: list[int], rows_: list[int], dtype: torch.dtype, copy_gbps: float | None,
        enable_pdl: bool | None, cold: bool) -> list[dict[str, Any]]:
    config = TimingConfig(repeats=15, target_graph_ms=2.0)
    l2 = l2_cache_bytes()
    out = []
    with Progress(len(vocabs) * len(rows_), "bench sampling") as progress:
        for vocab in vocabs:
            for rows in rows_:
                progress.step(f"vocab={vocab} rows={rows}")
                out.append(_case(vocab, rows, dtype, copy_gbps, enable_pdl, cold, config, l2))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vocab", nargs="+", type=int,
                        help=f"vocabulary sizes (default: {' '.join(map(str, VOCABS))})")
    parser.add_argument("--rows", nargs="+", type=int,
                        help=f"logits rows (default: {' '.join(map(str, ROWS))})")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    add_run_options(parser, "sampling")


def run_command(args: argparse.Namespace) -> int:
    from ..ceilings import copy_bandwidth_gbps

    vocabs, rows = args.vocab or list(VOCABS), args.rows or list(ROWS)
    if min(vocabs) < 1 or min(rows) < 1:
        raise SystemExit("--vocab and --rows must be positive")
    copy_gbps = copy_bandwidth_gbps()
    rows_out = run(vocabs, rows, DTYPES[args.dtype], copy_gbps, PDL[args.pdl], args.cold)
    bad = [r for r in rows_out if r["mismatches"]]
    status = report_run("sampling", COLUMNS, rows_out, copy_gbps, args)
    if bad:
        print(f"greedy_sample disagreed with torch.argmax in {len(bad)} case(s)")
        return 1
    return status


register_suite(Suite(
    name="sampling", help="greedy_sample (argmax + the in-flight token buffer write, one "
    "kernel) against torch.argmax and a copy, on model vocabularies and decode batches",
    run=run_command, add_arguments=add_arguments, records="sampling",
    quick_args=("--vocab", "151936", "--rows", "1", "64")))
