"""The formatting `compare` and `sweep` share for their tables: percentages, estimates over seeds
(mean and 95% half-width) and Markdown table rows. No heavy imports."""

from __future__ import annotations

from typing import Any, Sequence


def percent(value: float | None, unit: str = "") -> str:
    """A percentage to one decimal (`n/a` for None), followed by `unit` (e.g. "%")."""
    return "n/a" if value is None else f"{value:.1f}{unit}"


def estimate_text(estimate: Any, signed: bool = False, digits: int = 1) -> str:
    """`mean ± half-width` of an estimate over seeds, or the mean alone when it has no interval
    (one value), `n/a` for None. `estimate` is a `sim.stats.Estimate` or its record as saved in
    JSON (`{"mean", "half_width", ...}`); `signed` writes the mean with its sign (a difference)."""
    if estimate is None:
        return "n/a"
    if isinstance(estimate, dict):
        mean, half_width = estimate["mean"], estimate["half_width"]
    else:
        mean, half_width = estimate.mean, estimate.half_width
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return text if half_width is None else f"{text} ± {half_width:.{digits}f}"


def table_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def table_head(header: Sequence[str], text_columns: int = 1) -> list[str]:
    """The header line and the alignment rule: the first `text_columns` left-aligned, the rest
    (figures) right-aligned."""
    rule = "| " + " | ".join(["---"] * text_columns + ["---:"] * (len(header) - text_columns)) + " |"
    return [table_row(header), rule]
