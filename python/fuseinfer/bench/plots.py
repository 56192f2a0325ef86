"""Plots of the recorded kernel-suite results (docs/plots/<gpu>_<suite>.svg).

Every figure is derived from the latest run of microbench/results/<gpu>/<suite>.json alone:
achieved GB/s (rows with `bytes`) or TFLOP/s (rows with `flops`) of our kernel (`us`) and of
every baseline timed in the same run (a `<name>_us` time next to its `vs_<name>` ratio, so a
new baseline column is drawn without code changes), against tokens, or against the
sequence length per batch size where rows give a `<batch>x<length>` shape; the measured
ceiling of the run (copy bandwidth, matmul peak) is a dashed line. A baseline's rate is the
row's bytes or FLOPs over its own time: the same work, so the lines compare speed.

matplotlib is optional (`pip install 'fuseinfer[plot]'`): without it, plot_results says so
and draws nothing. The SVGs are deterministic (fixed hash salt, no dates or versions), and
small (text kept as text, coordinates cut to two decimals, empty groups dropped), so
regenerating unchanged results rewrites identical files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from fuseinfer.bench.report import load_recorded, positive_number, timed_baselines

PLOT_INSTALL_HINT = "pip install 'fuseinfer[plot]'"

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
# Fixed colors so an implementation looks the same in every figure; others take the rest.
_COLORS = {
    OURS: "#d62728",
    "flashinfer": "#1f77b4",
    "compile": "#2ca02c",
    "eager": "#7f7f7f",
    "liger": "#9467bd",
    "cublas": "#8c564b",
    "sdpa": "#2ca02c",
    "flex": "#9467bd",
    "separate": "#ff7f0e",
}
_SPARE_COLORS = ("#17becf", "#bcbd22", "#e377c2", "#8c564b", "#1f77b4", "#ff7f0e")

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


def _grid_columns(panels: Sequence[Panel]) -> int:
    """4 or 3 columns, whichever divides the largest op/kind group (each group starts a
    row), so rows line up by model or batch."""
    sizes: dict[str, int] = {}
    for panel in panels:
        sizes[panel.group] = sizes.get(panel.group, 0) + 1
    largest = max(sizes.values())
    return next((c for c in (4, 3) if largest % c == 0), min(4, largest))


def _compact(value: float) -> str:
    """Axis numbers: 16384 -> 16k, 0.5 -> 0.5."""
    if value >= 1024 and value % 1024 == 0:
        return f"{value / 1024:g}k"
    return f"{value:g}"


_SVG_NS = "http://www.w3.org/2000/svg"
_XLINK_NS = "http://www.w3.org/1999/xlink"


def _unwrap_plain_groups(element: ElementTree.Element) -> None:
    """Replace every <g> without attributes by its children (such a group does nothing)."""
    children: list[ElementTree.Element] = []
    for child in element:
        _unwrap_plain_groups(child)
        if child.tag == f"{{{_SVG_NS}}}g" and not child.attrib:
            children.extend(child)
        else:
            children.append(child)
    element[:] = children


def compact_svg(svg: str) -> str:
    """Drop what only adds bytes to matplotlib's SVG: sub-pixel digits, group ids (nothing
    refers to them; clip paths keep theirs), the groups then left without attributes,
    no-op rotations and indentation."""
    svg = re.sub(r"(\d+\.\d\d)\d+", r"\1", svg)
    svg = re.sub(r'(<g) id="[^"]*"', r"\1", svg)
    svg = re.sub(r' transform="rotate\(-0 [^"]*\)"', "", svg)
    svg = re.sub(r' d="([^"]*)"', lambda m: ' d="' + " ".join(m[1].split()) + '"', svg)
    ElementTree.register_namespace("", _SVG_NS)
    ElementTree.register_namespace("xlink", _XLINK_NS)
    root = ElementTree.fromstring(svg)
    _unwrap_plain_groups(root)
    text = ElementTree.tostring(root, encoding="unicode")
    return re.sub(r" *\n\s*", "\n", text).strip() + "\n"


def _layout(panels: Sequence[Panel]) -> tuple[int, list[Panel | None]]:
    """(columns, slots): panels in order, each op or kind starting a new row (None: an
    empty slot)."""
    columns = _grid_columns(panels)
    slots: list[Panel | None] = []
    for index, panel in enumerate(panels):
        if index and panel.group != panels[index - 1].group and len(slots) % columns:
            slots += [None] * (columns - len(slots) % columns)
        slots.append(panel)
    return columns, slots + [None] * (-len(slots) % columns)


def draw_panels(panels: Sequence[Panel], title: str, path: Path) -> None:
    """Draw `panels` into one SVG at `path` (needs matplotlib). Panels of one unit share
    the y axis and panels of one x quantity the x axis; tick labels are drawn on the left
    column and at the bottom of each op's or kind's rows only."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator

    columns, slots = _layout(panels)
    rows = len(slots) // columns
    names = list(dict.fromkeys(s.implementation for p in panels for s in p.series))
    spare = iter(_SPARE_COLORS * (1 + len(names)))
    colors = {n: _COLORS.get(n) or next(spare) for n in names}
    compact_format = FuncFormatter(lambda value, _: _compact(value))

    style = {
        "svg.hashsalt": "fuseinfer",  # fixed clip-path ids: identical files on rerun
        "svg.fonttype": "none",  # text as text, not glyph outlines
        "font.family": "sans-serif",
        "font.sans-serif": ["DejaVu Sans"],  # ships with matplotlib: the same layout anywhere
        "font.size": 8,
        "axes.titlesize": 8,
        "axes.labelsize": 7,
        "xtick.labelsize": 6.5,
        "ytick.labelsize": 6.5,
        "path.simplify": True,
    }
    with matplotlib.rc_context(style):
        figure = Figure(figsize=(2.6 * columns, 1.9 * rows + 0.6))
        axes = figure.subplots(rows, columns, squeeze=False)
        x_ticks: dict[str, list[float]] = {}  # shared x axes: every panel's x values
        for panel in panels:
            if panel.categories is None:
                values = {x for s in panel.series for x, _ in s.points}
                x_ticks[panel.x_label] = sorted(values.union(x_ticks.get(panel.x_label, [])))
        share_y: dict[str, Any] = {}
        share_x: dict[str, Any] = {}
        for index, (slot, ax) in enumerate(zip(slots, axes.flat, strict=True)):
            if slot is None:
                ax.set_visible(False)
                continue
            if slot.unit in share_y:
                ax.sharey(share_y[slot.unit])
            share_y.setdefault(slot.unit, ax)
            if slot.categories is None:
                if slot.x_label in share_x:
                    ax.sharex(share_x[slot.x_label])
                share_x.setdefault(slot.x_label, ax)
            for series in slot.series:
                ours = series.implementation == OURS
                ax.plot([x for x, _ in series.points], [y for _, y in series.points],
                        color=colors[series.implementation], linewidth=1.5 if ours else 0.9,
                        zorder=3 if ours else 2)
            if slot.ceiling is not None:
                ax.axhline(slot.ceiling, color="black", linestyle="--", linewidth=0.8)
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10))
            ax.yaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_major_formatter(compact_format)
            # The y grid stands in for tick marks (fewer elements in the SVG).
            ax.grid(True, axis="y", linewidth=0.3, color="#cccccc")
            ax.tick_params(length=0)
            ax.spines[["top", "right"]].set_visible(False)
            ax.patch.set_visible(False)  # the figure's white background shows through
            if slot.categories is not None:
                ax.set_xticks(range(len(slot.categories)), slot.categories, rotation=20)
                ax.set_xlim(-0.3, len(slot.categories) - 0.7)
            else:
                ax.set_xscale("log", base=2)
                ax.xaxis.set_major_locator(FixedLocator(x_ticks[slot.x_label]))
                ax.xaxis.set_major_formatter(compact_format)
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_title(slot.title, pad=3)
            if index % columns == 0:
                ax.set_ylabel(slot.unit)
            else:
                ax.tick_params(axis="y", labelleft=False)
            below = slots[index + columns] if index + columns < len(slots) else None
            if below is None or below.group != slot.group or below.x_label != slot.x_label:
                ax.set_xlabel(slot.x_label)
            else:
                ax.tick_params(axis="x", labelbottom=False)
        handles = [Line2D([], [], color=colors[n], linewidth=1.5 if n == OURS else 0.9)
                   for n in names]
        labels = [IMPLEMENTATION_LABELS.get(n, n) for n in names]
        ceiling_labels = sorted({p.ceiling_label for p in panels if p.ceiling is not None})
        if ceiling_labels:
            handles.append(Line2D([], [], color="black", linestyle="--", linewidth=0.8))
            labels.append("measured " + "; ".join(ceiling_labels))
        legend_rows = math.ceil(len(labels) / columns)  # as wide as the grid allows
        legend_columns = math.ceil(len(labels) / legend_rows)
        top = 0.3 + 0.16 * legend_rows  # inches above the panels: title, then legend
        height = figure.get_figheight()
        figure.suptitle(title, y=1.0 - 0.06 / height, fontsize=9)
        figure.legend(handles, labels, loc="upper center", ncols=legend_columns,
                      frameon=False, bbox_to_anchor=(0.5, 1.0 - 0.22 / height),
                      handlelength=2.5, columnspacing=1.5)
        figure.tight_layout(rect=(0, 0, 1, 1.0 - top / height), h_pad=0.6, w_pad=0.4)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".svg.tmp")
        # No metadata block: no date, no matplotlib version.
        no_metadata = {key: None for key in ("Date", "Creator", "Format", "Type")}
        figure.savefig(tmp, format="svg", metadata=no_metadata)
    tmp.write_text(compact_svg(tmp.read_text()))
    tmp.replace(path)


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        return False
    return True


def plot_name(gpu: str, suite: str) -> str:
    return f"{gpu}_{suite}.svg"


def plot_results(results_dir: Path, plots_dir: Path) -> dict[tuple[str, str], Path] | None:
    """Draw one SVG per recorded (gpu, suite) with something to plot into `plots_dir`,
    removing SVGs there that no recorded run draws any more. Returns {(gpu, suite): path};
    None, drawing nothing, without matplotlib."""
    if not Path(results_dir).is_dir():
        raise FileNotFoundError(f"results folder {results_dir} does not exist")
    if not matplotlib_available():
        return None
    drawn: dict[tuple[str, str], Path] = {}
    for gpu_dir in sorted(p for p in Path(results_dir).iterdir() if p.is_dir()):
        for results in sorted(gpu_dir.glob("*.json")):
            recorded = load_recorded(results)
            if not recorded["runs"]:
                continue
            run = recorded["runs"][-1]
            panels = suite_panels(run)
            if not panels:
                continue
            env = run.get("environment") or {}
            title = f"{recorded['suite']}, {env.get('gpu') or gpu_dir.name}: higher is better"
            path = Path(plots_dir) / plot_name(gpu_dir.name, recorded["suite"])
            draw_panels(panels, title, path)
            drawn[(gpu_dir.name, recorded["suite"])] = path
    if Path(plots_dir).is_dir():
        for stale in sorted(set(Path(plots_dir).glob("*.svg")) - set(drawn.values())):
            stale.unlink()  # docs/plots holds generated plots only
    return drawn
