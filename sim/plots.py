"""Figures of a run, of a comparison and of a sweep, drawn with matplotlib's Agg canvas.

Figures are built as `matplotlib.figure.Figure` objects without pyplot, so plotting never opens
a window, needs no display, and does not change the backend of a session that imports `sim`.
Each PNG is written to a temporary name and moved into place.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sim.io import write_atomic
from sim.stats import count_of_seeds

MALICIOUS_COLOR = "tab:red"
MAIN_COLOR = "tab:blue"
BACKDOOR_COLOR = "tab:orange"


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    write_atomic(Path(path), buffer.getvalue())


def _malicious_bars(axes, rounds: Sequence[int], counts: Sequence[int], label: bool = True):
    """Malicious clients per round as light bars on a right-hand axis (empty for all-benign rounds)."""
    twin = axes.twinx()
    twin.bar(
        rounds,
        counts,
        width=0.9,
        color=MALICIOUS_COLOR,
        alpha=0.18,
        label="malicious clients selected" if label else None,
        zorder=0,
    )
    twin.set_ylabel("malicious clients selected", color=MALICIOUS_COLOR)
    twin.tick_params(axis="y", colors=MALICIOUS_COLOR)
    twin.set_ylim(0, max(1, max(counts, default=0)) * 3)  # keeps the bars in the lower third
    twin.yaxis.get_major_locator().set_params(integer=True)
    # Curves in front of the bars.
    axes.set_zorder(twin.get_zorder() + 1)
    axes.patch.set_visible(False)
    return twin


def plot_run(rows: list[dict[str, Any]], path: str | Path, title: str = "", metric: str = "backdoor accuracy") -> Path:
    """Main and backdoor accuracy (named `metric`, see `sim.metrics.attack_metric_name`) per round,
    with the malicious clients of each round as bars."""
    path = Path(path)
    rounds = [row["round"] for row in rows]
    figure = Figure(figsize=(8, 4.5))
    axes = figure.add_subplot()
    twin = _malicious_bars(axes, rounds, [row["malicious_selected"] for row in rows])
    main = [(row["round"], row["main_accuracy"]) for row in rows if row["main_accuracy"] is not None]  # eval.every
    if main:
        axes.plot(*zip(*main), color=MAIN_COLOR, marker=".", label="main accuracy")
    backdoor = [(row["round"], row["backdoor_accuracy"]) for row in rows if row["backdoor_accuracy"] is not None]
    if backdoor:
        axes.plot(*zip(*backdoor), color=BACKDOOR_COLOR, marker=".", label=metric)
    axes.set_xlabel("round")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    axes.grid(True, alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    bar_handles, bar_labels = twin.get_legend_handles_labels()
    axes.legend(handles + bar_handles, labels + bar_labels, loc="center right", fontsize="small")
    if title:
        axes.set_title(textwrap.fill(title, 80), fontsize="medium")
    _save(figure, path)
    return path


def _shade_malicious_rounds(axes, rows: list[dict[str, Any]]) -> None:
    """A light band over every round that had malicious clients (one legend entry)."""
    labelled = False
    for row in rows:
        if row["malicious_selected"] > 0:
            axes.axvspan(row["round"] - 0.5, row["round"] + 0.5, color=MALICIOUS_COLOR, alpha=0.12, linewidth=0,
                         label=None if labelled else "rounds with malicious clients")
            labelled = True


def plot_attack_effect(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """`||W_t - W_t^M||` per round on a log scale with its uniform part and the rest (top), the
    run's and the shadow's main accuracy (bottom); rounds with malicious clients shaded
    (sim.attack_effect)."""
    path = Path(path)
    figure = Figure(figsize=(8, 7))
    effect_axes, accuracy_axes = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    for axes in (effect_axes, accuracy_axes):
        _shade_malicious_rounds(axes, rows)
    curves = (
        ("attack_effect", "||delta_t|| = ||W_t - W_t^M||", "black", "-"),
        ("attack_effect_uniform", "uniform part (per-tensor mean)", "tab:purple", "--"),
        ("attack_effect_rest", "rest", "tab:green", ":"),
    )
    drawn = False
    for column, label, color, style in curves:
        # A zero (no attack effect yet) has no place on a log axis: it is left out of the curve.
        points = [(row["round"], row[column]) for row in rows if row.get(column)]
        if points:
            effect_axes.plot(*zip(*points), color=color, linestyle=style, marker=".", label=label)
            drawn = True
    if drawn:
        effect_axes.set_yscale("log")
    else:
        effect_axes.text(0.5, 0.5, "delta_t = 0 in every round", transform=effect_axes.transAxes, ha="center")
    effect_axes.set_ylabel("attack effect (L2 norm)")
    effect_axes.grid(True, alpha=0.3, which="both")
    if effect_axes.get_legend_handles_labels()[0]:
        effect_axes.legend(loc="best", fontsize="small")

    main = [(row["round"], row["main_accuracy"]) for row in rows if row["main_accuracy"] is not None]  # eval.every
    if main:
        accuracy_axes.plot(*zip(*main), color=MAIN_COLOR, marker=".", label="main accuracy")
    shadow = [(row["round"], row["shadow_main_accuracy"]) for row in rows if row.get("shadow_main_accuracy") is not None]
    if shadow:
        accuracy_axes.plot(*zip(*shadow), color=MAIN_COLOR, linestyle="--", label="shadow (malicious clients benign)")
    accuracy_axes.set_ylabel("main accuracy (%)")
    accuracy_axes.set_xlabel("round")
    accuracy_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    accuracy_axes.grid(True, alpha=0.3)
    accuracy_axes.legend(loc="lower right", fontsize="small")
    if title:
        effect_axes.set_title(textwrap.fill(title, 80), fontsize="medium")
    _save(figure, path)
    return path



def _accuracy_axes(backdoor_axes, main_axes, metric: str) -> None:
    """Labels, 0-100% limits and grids of the two accuracy panels of a comparison."""
    backdoor_axes.set_ylabel(f"{metric} (%)")
    main_axes.set_ylabel("main accuracy (%)")
    main_axes.set_xlabel("round")
    main_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    for axes in (backdoor_axes, main_axes):
        axes.set_ylim(0, 100)
        axes.grid(True, alpha=0.3)


def _legend_and_title(axes, handles, labels, curves: int, right: float, title: str) -> None:
    """The legend over the curves, or beside the axes (at x = `right`) when it is long; the title."""
    if curves > 6:
        axes.legend(handles, labels, loc="upper left", bbox_to_anchor=(right, 1.0), fontsize="small")
    else:
        axes.legend(handles, labels, loc="upper right", fontsize="small")
    if title:
        axes.set_title(textwrap.fill(title, 90), fontsize="medium")


def plot_comparison(runs: dict[str, list[dict[str, Any]]], path: str | Path, title: str = "",
                    metric: str = "backdoor accuracy") -> Path:
    """Backdoor accuracy (top) and main accuracy (bottom), one curve per run label.

    When every run selected the same number of malicious clients each round (runs that differ
    only in a defense), those counts are drawn once as bars; otherwise each curve marks its own
    malicious rounds with a point on the curve.
    """
    path = Path(path)
    figure = Figure(figsize=(9, 7.5))
    backdoor_axes, main_axes = figure.subplots(2, 1, sharex=True)
    counts = {label: [row["malicious_selected"] for row in rows] for label, rows in runs.items()}
    shared = len({tuple(c) for c in counts.values()}) <= 1
    longest = max(runs.values(), key=len, default=[])
    twins = []
    if shared and longest:
        for axes in (backdoor_axes, main_axes):
            twins.append(_malicious_bars(axes, [row["round"] for row in longest], counts[next(iter(runs))]))

    colors = [f"C{i % 10}" for i in range(len(runs))]
    # Past ten curves the colours repeat, so each further ten get their own line style.
    styles = [("-", "--", ":", "-.")[(i // 10) % 4] for i in range(len(runs))]
    for color, style, (label, rows) in zip(colors, styles, runs.items()):
        for axes, column in ((backdoor_axes, "backdoor_accuracy"), (main_axes, "main_accuracy")):
            points = [(row["round"], row[column]) for row in rows if row[column] is not None]
            if not points:
                continue
            axes.plot(*zip(*points), color=color, linestyle=style, label=label)
            if not shared:
                marked = [
                    (row["round"], row[column])
                    for row in rows
                    if row[column] is not None and row["malicious_selected"] > 0
                ]
                if marked:
                    axes.plot(*zip(*marked), linestyle="none", marker="v", markersize=4, color=color)

    _accuracy_axes(backdoor_axes, main_axes, metric)
    handles, labels = backdoor_axes.get_legend_handles_labels()
    if twins:
        bar_handles, bar_labels = twins[0].get_legend_handles_labels()
        handles, labels = handles + bar_handles, labels + bar_labels
    elif runs:
        labels = labels + ["(triangles: rounds with malicious clients)"]
        handles = handles + [backdoor_axes.plot([], [], linestyle="none", marker="v", color="grey")[0]]
    # clear of the bar axis' labels when the malicious counts are drawn as bars
    _legend_and_title(backdoor_axes, handles, labels, len(runs), 1.12 if twins else 1.01, title)
    _save(figure, path)
    return path


def plot_comparison_bands(runs: dict[str, dict[int, list[dict[str, Any]]]], path: str | Path, title: str = "",
                          metric: str = "backdoor accuracy") -> Path:
    """Backdoor accuracy (top) and main accuracy (bottom) over several seeds: per run label the mean
    curve over its seeds and a band from their minimum to their maximum. Seeds select different
    clients, so malicious rounds are not marked."""
    path = Path(path)
    figure = Figure(figsize=(9, 7.5))
    backdoor_axes, main_axes = figure.subplots(2, 1, sharex=True)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    styles = [("-", "--", ":", "-.")[(i // 10) % 4] for i in range(len(runs))]
    for color, style, (label, by_seed) in zip(colors, styles, runs.items()):
        for axes, column in ((backdoor_axes, "backdoor_accuracy"), (main_axes, "main_accuracy")):
            per_round: dict[int, list[float]] = {}
            for rows in by_seed.values():
                for row in rows:
                    if row[column] is not None:
                        per_round.setdefault(row["round"], []).append(row[column])
            rounds = sorted(per_round)
            if not rounds:
                continue
            values = [per_round[r] for r in rounds]
            axes.fill_between(rounds, [min(v) for v in values], [max(v) for v in values], color=color, alpha=0.18,
                              linewidth=0)
            axes.plot(rounds, [sum(v) / len(v) for v in values], color=color, linestyle=style,
                      label=f"{label} (mean of {count_of_seeds(len(by_seed))})")
    _accuracy_axes(backdoor_axes, main_axes, metric)
    handles, labels = backdoor_axes.get_legend_handles_labels()
    labels = labels + ["(bands: lowest to highest seed)"]
    handles = handles + [backdoor_axes.fill_between([], [], [], color="grey", alpha=0.18)]
    _legend_and_title(backdoor_axes, handles, labels, len(runs), 1.01, title)
    _save(figure, path)
    return path


def plot_frontier(families: dict[str, list[tuple[Any, float, float | None, float, float | None]]],
                  baseline: tuple[str, float, float | None], path: str | Path, key: str,
                  metric: str = "backdoor accuracy", title: str = "") -> Path:
    """Cost against effect: per family a line through its points `(value, cost, cost half-width,
    backdoor, backdoor half-width)` in the given order, each point labelled with its value and
    drawn with its 95% intervals as error bars; the baseline `(label, backdoor, half-width)` at
    cost 0."""
    path = Path(path)
    figure = Figure(figsize=(8, 6))
    axes = figure.subplots()
    label, backdoor, half = baseline
    axes.errorbar([0.0], [backdoor], yerr=None if half is None else [half], color="black", marker="s",
                  capsize=3, linestyle="none", label=f"{label} (baseline)")
    for index, (family, points) in enumerate(families.items()):
        color = f"C{index % 10}"
        xs, ys = [p[1] for p in points], [p[3] for p in points]
        xerr = [0.0 if p[2] is None else p[2] for p in points]
        yerr = [0.0 if p[4] is None else p[4] for p in points]
        axes.errorbar(xs, ys, xerr=xerr, yerr=yerr, color=color, marker="o", capsize=3, label=family)
        for value, x, _, y, _ in points:
            axes.annotate(f"{value}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize="x-small",
                          color=color)
    axes.set_xlabel("main-accuracy cost (points below the baseline, paired over seeds)")
    axes.set_ylabel(f"{metric}, average over rounds (%)")
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper right", fontsize="small", title=f"point labels: {key}; bars: 95% intervals",
                title_fontsize="x-small")
    if title:
        axes.set_title(textwrap.fill(title, 90), fontsize="medium")
    _save(figure, path)
    return path


def plot_levels(estimates: dict[tuple, Any], axes: dict[str, list[str]], x_axis: str, panel_axis: str | None,
                line_axes: Sequence[str], panels: Sequence[Any], *, ylabel: str, title: str, path: str | Path) -> Path:
    """A figure over a grid of settings (a sweep's report): one panel per level in `panels` of
    `panel_axis`, in each one line per combination of the `line_axes` levels, the estimate (mean
    and 95% half-width as error bars) against the levels of `x_axis`. `estimates` maps the levels
    of a point, as a tuple of (axis, level) pairs in `axes` order, to its estimate (`.mean`,
    `.half_width`); a point without one is left out."""
    import itertools
    import math

    path = Path(path)
    xs = axes[x_axis]
    by_levels = {frozenset(key): estimate for key, estimate in estimates.items()}
    columns = min(len(panels), 4)
    rows_of_panels = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.4 * rows_of_panels + 0.6))
    FigureCanvasAgg(figure)
    line_levels = list(itertools.product(*(axes[a] for a in line_axes))) or [()]
    for index, panel in enumerate(panels):
        ax = figure.add_subplot(rows_of_panels, columns, index + 1)
        for offset, line in enumerate(line_levels):
            points = []
            for position, x in enumerate(xs):
                levels = {x_axis: x, **dict(zip(line_axes, line))}
                if panel_axis:
                    levels[panel_axis] = panel
                estimate = by_levels.get(frozenset(levels.items()))
                if estimate is not None:
                    shift = (offset - (len(line_levels) - 1) / 2) * 0.08
                    points.append((position + shift, estimate.mean, estimate.half_width or 0.0))
            if points:
                label = ", ".join(f"{a}={v}" for a, v in zip(line_axes, line)) or None
                ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                            marker="o", capsize=3, linestyle="-", label=label)
        ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.set_xticks(range(len(xs)))
        ax.set_xticklabels(xs, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{panel_axis}={panel}" if panel_axis else "", fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        if index == 0 and line_axes:
            ax.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    write_atomic(path, buffer.getvalue())
    return path


def plot_heatmap(cells: Sequence[dict[str, Any]], row_levels: Sequence[str], column_levels: Sequence[str],
                 row_axis: str, column_axis: str, *, label: str, title: str, path: str | Path,
                 scale: tuple[float, float] | None = None) -> Path:
    """A sweep's metric as heatmaps (a sweep's report): one panel per distinct `panel` of `cells`,
    stacked, rows the `row_levels`, columns the `column_levels`; each cell (`row`, `column`,
    `panel`, `mean`, `half_width`, `status`) coloured by its mean on one scale for all panels
    (`scale`, else the means' range) and annotated `mean` over `± half-width`; a cell without a
    value is hatched grey and says its `status` (`excluded`, `n/a`). A panel leaves out the rows
    whose every cell is excluded."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    path = Path(path)
    panels = list(dict.fromkeys(cell["panel"] for cell in cells))
    means = [cell["mean"] for cell in cells if cell["mean"] is not None]
    low, high = scale if scale else ((min(means), max(means)) if means else (0.0, 1.0))
    if high <= low:
        low, high = low - 1.0, high + 1.0
    norm, cmap = Normalize(low, high), colormaps["viridis"]
    # A panel shows the row levels it runs: rows whose every cell is excluded are left out.
    panel_rows = {}
    for panel in panels:
        run = {cell["row"] for cell in cells if cell["panel"] == panel and cell["status"] != "excluded"}
        panel_rows[panel] = [level for level in row_levels if level in run] or list(row_levels)
    width = 2.4 + 0.95 * len(column_levels) + 1.2
    heights = [0.5 * len(panel_rows[panel]) + 0.9 for panel in panels]
    panel_height = sum(heights) / len(heights)
    figure = Figure(figsize=(max(width, 6.0), sum(heights) + 1.2), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    columns_at = {level: j for j, level in enumerate(column_levels)}
    image = None
    for ax, panel in zip(grid, panels):
        row_levels = panel_rows[panel]
        rows_at = {level: i for i, level in enumerate(row_levels)}
        matrix = np.full((len(row_levels), len(column_levels)), np.nan)
        for cell in cells:
            if cell["panel"] != panel or cell["row"] not in rows_at:
                continue
            i, j = rows_at[cell["row"]], columns_at[cell["column"]]
            if cell["mean"] is None:
                ax.add_patch(_missing_patch(j, i))
                ax.text(j, i, cell["status"], ha="center", va="center", fontsize=7, color="dimgray",
                        style="italic")
                continue
            matrix[i, j] = cell["mean"]
            red, green, blue, _ = cmap(norm(cell["mean"]))
            colour = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"
            text = f"{cell['mean']:.1f}" if cell["half_width"] is None else \
                f"{cell['mean']:.1f}\n±{cell['half_width']:.1f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7.5, color=colour, linespacing=1.0)
        image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, norm=norm, aspect="auto",
                          interpolation="nearest")
        ax.set_xticks(range(len(column_levels)))
        ax.set_xticklabels(column_levels, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(row_levels)))
        ax.set_yticklabels(row_levels, fontsize=8)
        ax.set_xticks(np.arange(-0.5, len(column_levels)), minor=True)
        ax.set_yticks(np.arange(-0.5, len(row_levels)), minor=True)
        ax.grid(which="minor", color="white", linewidth=1.0)
        ax.tick_params(which="minor", length=0)
        ax.set_xlim(-0.5, len(column_levels) - 0.5)
        ax.set_ylim(len(row_levels) - 0.5, -0.5)
        ax.set_ylabel(row_axis, fontsize=9)
        ax.set_xlabel(column_axis, fontsize=9)
        if panel:
            ax.set_title(panel, fontsize=9, loc="left")
    if image is not None:
        bar = figure.colorbar(image, ax=list(grid), shrink=min(1.0, 6.0 / (panel_height * len(panels))), pad=0.01)
        bar.set_label(label, fontsize=8)
        bar.ax.tick_params(labelsize=8)
    figure.suptitle(textwrap.fill(title, 100), fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    write_atomic(path, buffer.getvalue())
    return path


def _missing_patch(x: float, y: float):
    """A hatched grey square over the cell at (x, y), for a combination without a value."""
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1.0, 1.0, facecolor="#eeeeee", edgecolor="#bbbbbb", hatch="//",
                     linewidth=0.0, zorder=0.5)
