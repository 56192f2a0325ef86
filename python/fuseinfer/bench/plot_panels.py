"""Panels of the recorded kernel-suite results, the data behind docs/plots/<gpu>_<suite>.svg.

From the latest run of microbench/results/<gpu>/<suite>.json alone: achieved GB/s (rows with
`bytes`) or TFLOP/s (rows with `flops`) of our kernel (`us`) and of every baseline timed in
the same run (a `<name>_us` time next to its `vs_<name>` ratio, so a new baseline column is
drawn without code changes), against tokens, or against the sequence length per batch size
where rows give a `<batch>x<length>` shape; with the run's measured ceiling (copy
bandwidth, matmul peak). A baseline's rate is the row's bytes or FLOPs over its own time:
the same work, so the lines compare speed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fuseinfer.bench.report import positive_number, timed_baselines

OURS = "ours"
# Readable names for the implementations known today; any other `<name>_us` baseline is
# drawn under its own name.
IMPLEMENTATION_LABELS = {
    OURS: "fuseinfer",
    "separate": "fuseinfer, two launches",
    "flashinfer": "FlashInfer",
    "compile": "torch.compile",
    "eager": "torch eager",
    "liger": "liger-kernel",
    "cublas": "cuBLAS",
    "sdpa": "torch SDPA",
    "flex": "flex_attention",
}
# Row keys naming a panel, in title order (op or kind first: it starts a figure row).
_PANEL_KEYS = ("op", "kind", "model")
_BATCH_SHAPE = re.compile(r"^(\d+)x(\d+)(k?)$")


@dataclass(frozen=True)
class Series:
    """One implementation's achieved rate at each x of a panel (x: a value, or the index of
    a categorical label)."""

    implementation: str
    points: tuple[tuple[float, float], ...]

    @property
    def label(self) -> str:
        return IMPLEMENTATION_LABELS.get(self.implementation, self.implementation)


@dataclass(frozen=True)
class Panel:
    """One model shape: x axis, rate unit, the run's ceiling for that unit, one series per
    implementation present."""

    title: str
    group: str  # panels of one op or kind share a figure row
    x_label: str
    categories: tuple[str, ...] | None  # labels of a categorical x axis, else None (log2)
    unit: str  # "GB/s" or "TFLOP/s"
    ceiling: float | None
    ceiling_label: str
    series: tuple[Series, ...]


def implementations(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """"ours", then every baseline timed in the rows (`<name>_us` with `vs_<name>`), in order
    of first appearance. Other `*_us` keys (a variant of our own kernel timed for a cost
    column) have no ratio and are not implementations."""
    names: list[str] = [OURS]
    for row in rows:
        names += [name for name in timed_baselines(row) if name not in names]
    return names


def _unit(row: Mapping[str, Any]) -> str | None:
    """What a row's rates are in: TFLOP/s when it counts FLOPs, GB/s when it counts bytes."""
    if positive_number(row.get("flops")) is not None:
        return "TFLOP/s"
    return "GB/s" if positive_number(row.get("bytes")) is not None else None


def _rate(row: Mapping[str, Any], implementation: str) -> float | None:
    """One implementation's rate in one row, in _unit(row): the row's FLOPs or bytes over
    its own time; None when it was not timed there or its `<name>_error` says it failed
    (a baseline that disagreed with our output is not a point on the plot)."""
    if f"{implementation}_error" in row:
        return None
    us = positive_number(row.get("us" if implementation == OURS else f"{implementation}_us"))
    unit = _unit(row)
    if us is None or unit is None:
        return None
    if unit == "TFLOP/s":
        return float(row["flops"]) / us / 1e6
    return float(row["bytes"]) / us / 1e3


def _ceiling(ceilings: Mapping[str, Any], unit: str, dtype: str) -> tuple[float | None, str]:
    if unit == "GB/s":
        value = positive_number(ceilings.get("copy_gbps"))
        return value, f"copy bandwidth ({value:.0f} GB/s)" if value else ""
    kind = "fp8" if "float8" in dtype else "bf16"
    value = positive_number(ceilings.get(f"{kind}_tflops"))
    return value, f"{kind} matmul peak ({value:.0f} TFLOP/s)" if value else ""


def _shape_length(shape: str) -> tuple[int, int] | None:
    """(batch, tokens per sequence) of a `<batch>x<length>[k]` shape, else None."""
    match = _BATCH_SHAPE.match(shape)
    if not match:
        return None
    return int(match[1]), int(match[2]) * (1024 if match[3] else 1)


def _panel_rows(rows: Sequence[Mapping[str, Any]]
                ) -> list[tuple[str, str, str, list[tuple[Any, Mapping[str, Any]]]]]:
    """(group, title, x label, [(x, row)]) per panel, in order of first appearance. x is a
    number (tokens, or length at one batch size) or a shape label (categorical)."""
    grouped: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        key = tuple(str(row[k]) for k in _PANEL_KEYS if k in row)
        grouped.setdefault(key, []).append(row)
    panels = []
    for key, members in grouped.items():
        group, title = key[0] if key else "", ", ".join(key)
        if all("tokens" in r for r in members):
            panels.append((group, title, "tokens", [(r["tokens"], r) for r in members]))
            continue
        shapes = [str(r.get("shape", "")) for r in members]
        parsed = [_shape_length(s) for s in shapes]
        if all(p is not None for p in parsed):
            # Batch x length: one panel per batch size, the length on the x axis.
            by_batch: dict[int, list[tuple[Any, Mapping[str, Any]]]] = {}
            for batch_length, r in zip(parsed, members, strict=True):
                assert batch_length is not None
                by_batch.setdefault(batch_length[0], []).append((batch_length[1], r))
            for batch in sorted(by_batch):
                panels.append((group, f"{title}, batch {batch}", "tokens per sequence",
                               by_batch[batch]))
        else:
            panels.append((group, title, "shape", list(zip(shapes, members, strict=True))))
    return panels


def suite_panels(run: Mapping[str, Any]) -> list[Panel]:
    """The panels of one recorded run; rows without a time (skipped shapes) are left out,
    and a run with nothing to plot gives none."""
    rows = [r for r in run.get("rows") or [] if _rate(r, OURS) is not None]
    names = implementations(rows)
    ceilings = run.get("ceilings") or {}
    panels = []
    for group, title, x_label, members in _panel_rows(rows):
        unit = _unit(members[0][1])
        members = [(x, r) for x, r in members if _unit(r) == unit]  # one unit per panel
        if any(isinstance(x, str) for x, _ in members):
            categories: tuple[str, ...] | None = tuple(dict.fromkeys(str(x) for x, _ in members))
            positions = [float(categories.index(str(x))) for x, _ in members]
        else:
            categories, positions = None, [float(x) for x, _ in members]
        series = []
        for name in names:
            points = [(position, rate) for position, (_, row) in zip(positions, members,
                                                                     strict=True)
                      if (rate := _rate(row, name)) is not None]
            if points:
                series.append(Series(name, tuple(sorted(points))))
        ceiling, ceiling_label = _ceiling(ceilings, str(unit),
                                          str(members[0][1].get("dtype", "")))
        panels.append(Panel(title, group, x_label, categories, str(unit), ceiling,
                            ceiling_label, tuple(series)))
    return panels
