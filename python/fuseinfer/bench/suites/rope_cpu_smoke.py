"""What `fuseinfer bench rope` runs on a machine with no GPU: the CPU reference kernels on
the suite's model shapes with few tokens, each checked against a float64 textbook rotation
(each pair of dims as a complex number times e^(i * position * inv_freq)), timed with the
host clock."""

from __future__ import annotations

from typing import Any

import torch

from ..progress import Progress
from ..report import Column
from ..timing import time_eager_cpu
from .rope import COLUMNS as ROPE_COLUMNS
from .rope import MODELS, Case, Model, cases, make_sets

TOKENS = (1, 8, 32)

COLUMNS = [
    *ROPE_COLUMNS[:3],  # op, model, tokens
    Column("us", "CPU us", "{:.1f}"),
    Column("rel_err", "rel err vs fp64", "{:.1e}"),
]


def float64_rope(positions: torch.Tensor, x: torch.Tensor, m: Model) -> torch.Tensor:
    """x [tokens, heads * head_size] rotated in float64 from the angles themselves."""
    heads = x.double().unflatten(-1, (-1, m.head_size))
    rot, rest = heads[..., :m.rotary_dim], heads[..., m.rotary_dim:]
    re, im = rot.chunk(2, dim=-1) if m.is_neox else (rot[..., 0::2], rot[..., 1::2])
    exponent = torch.arange(0, m.rotary_dim, 2, dtype=torch.float64) / m.rotary_dim
    angle = positions.double()[:, None, None] * m.theta ** -exponent
    z = torch.complex(re, im) * torch.polar(torch.ones_like(angle), angle)
    if m.is_neox:
        rot = torch.cat((z.real, z.imag), dim=-1)
    else:
        rot = torch.stack((z.real, z.imag), dim=-1).flatten(-2)
    return torch.cat((rot, rest), dim=-1).flatten(1)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm()).item()


def _check_and_time(case: Case, dtype: torch.dtype) -> tuple[float, float]:
    """(relative error against float64, median CPU microseconds) of one case."""
    m = case.model
    s = make_sets(m, case.tokens, dtype, 1, device="cpu")[0]
    for name in ("k_cache", "v_cache"):
        if name in s:
            s[name].fill_(float("nan"))
    pos, q, k, v = s["positions"], s["q"].clone(), s["k"].clone(), s.get("v")
    if case.op == "store_kv":
        def call() -> None:
            torch.ops.fuseinfer.store_kv_cache(s["k_cache"], s["v_cache"], s["loc"], s["k"],
                                               v, None, None, None)
        want = {"k_cache": k.double(), "v_cache": v.double()}
    else:
        def call() -> None:
            torch.ops.fuseinfer.rope_with_cos_sin_cache(
                pos, s["q"], s["k"], m.head_size, s["cos_sin"], m.is_neox, v,
                s.get("k_cache"), s.get("v_cache"), s.get("loc"), None, None, None)
        k_rot = float64_rope(pos, k, m)
        want = {"q": float64_rope(pos, q, m), "k": k_rot}
        if m.kv_cache:
            want.update(k_cache=k_rot, v_cache=v.double())
    call()
    errs = []
    for name, expected in want.items():
        got = s[name][s["loc"]].flatten(1) if name.endswith("cache") else s[name]
        errs.append(_rel(got, expected))
    # torch's max keeps a NaN (an unwritten cache row); Python's may drop it.
    return torch.tensor(errs).max().item(), time_eager_cpu(call, repeats=3).median_us


def run(dtype: torch.dtype = torch.bfloat16) -> list[dict[str, Any]]:
    rows = []
    todo = cases(list(MODELS.values()), TOKENS)
    with Progress(len(todo), "cpu smoke") as progress:
        for case in todo:
            progress.step(f"{case.op} {case.model.name} tokens={case.tokens}")
            err, us = _check_and_time(case, dtype)
            rows.append({"op": case.op, "model": case.model.name, "tokens": case.tokens,
                         "us": us, "rel_err": err})
    return rows
