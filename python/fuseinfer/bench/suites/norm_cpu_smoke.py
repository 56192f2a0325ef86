"""What `fuseinfer bench norm` runs on a machine with no GPU: the CPU reference kernels on
small model shapes, each checked against float64 math, timed with the host clock."""

from __future__ import annotations

from typing import Any

import torch

from ..progress import Progress
from ..report import Column
from ..timing import time_eager_cpu
from .norm import COLUMNS as NORM_COLUMNS
from .norm import MODEL_HIDDEN

TOKENS = (1, 8, 32)
EPS = 1e-6

COLUMNS = [
    *NORM_COLUMNS[:4],  # op, model, hidden, tokens
    Column("us", "CPU us", "{:.1f}"),
    Column("rel_err", "rel err vs fp64", "{:.1e}"),
]


def _float64_rmsnorm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w.double()


def _check_and_time(op: str, x: torch.Tensor, r: torch.Tensor, w: torch.Tensor
                    ) -> tuple[float, float]:
    """(relative error against float64, median CPU microseconds) of one op on one shape."""
    if op == "fused_add_rmsnorm":
        expected = _float64_rmsnorm((x.double() + r.double()).to(x.dtype), w)
        got, residual = x.clone(), r.clone()
        torch.ops.fuseinfer.fused_add_rmsnorm(got, residual, w, EPS, None)

        def call() -> None:
            torch.ops.fuseinfer.fused_add_rmsnorm(x.clone(), r.clone(), w, EPS, None)
    else:
        expected = _float64_rmsnorm(x, w)
        got = torch.empty_like(x)

        def call() -> None:
            torch.ops.fuseinfer.rmsnorm(got, x, w, EPS, None)

        call()
    err = ((got.double() - expected).norm() / expected.norm()).item()
    return err, time_eager_cpu(call, repeats=3).median_us


def run(dtype: torch.dtype = torch.bfloat16) -> list[dict[str, Any]]:
    rows = []
    shapes = [(t, h) for h in MODEL_HIDDEN for t in TOKENS]
    with Progress(2 * len(shapes), "cpu smoke") as progress:
        for op in ("fused_add_rmsnorm", "rmsnorm"):
            for tokens, hidden in shapes:
                progress.step(f"{op} tokens={tokens} hidden={hidden}")
                x = torch.randn(tokens, hidden, dtype=dtype)
                r = torch.randn_like(x)
                w = torch.randn(hidden, dtype=dtype)
                err, us = _check_and_time(op, x, r, w)
                rows.append({"op": op, "model": MODEL_HIDDEN[hidden], "hidden": hidden,
                             "tokens": tokens, "us": us, "rel_err": err})
    return rows
