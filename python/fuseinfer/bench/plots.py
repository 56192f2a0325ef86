"""Plots of the recorded kernel-suite results (docs/plots/<gpu>_<suite>.svg).

One SVG per GPU and suite, one panel per model shape (plot_panels.py derives them from the
recorded rows alone), one line per implementation, the run's measured ceiling dashed.

matplotlib is optional (`pip install 'fuseinfer[plot]'`): without it, plot_results says so
and draws nothing. The SVGs are deterministic (fixed hash salt, no dates or versions), and
small (text kept as text, coordinates cut to two decimals, empty groups dropped), so
regenerating unchanged results rewrites identical files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fuseinfer.bench.plot_panels import (
    IMPLEMENTATION_LABELS,
    OURS,
    Panel,
    suite_panels,
)
from fuseinfer.bench.report import latest_day_runs, load_recorded
from fuseinfer.bench.svg_compact import compact_svg

PLOT_INSTALL_HINT = "pip install 'fuseinfer[plot]'"

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
            # the newest of the latest day's runs that has something to plot
            drawable = [(r, suite_panels(r)) for r in latest_day_runs(recorded["runs"])]
            run, panels = next(((r, p) for r, p in drawable if p), ({}, None))
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
