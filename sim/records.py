"""The per-round record of a run and its file, `metrics.csv`: the columns, writing them so equal
runs give byte-equal files, and reading them back."""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.errors import ConfigError
from sim.io import METRICS_FILE


@dataclass
class RoundRecord:
    """One finished round; the fields, in order, are the columns of `metrics.csv`. Client ids
    are space-separated text; accuracies are percent."""

    round: int
    # The scores are empty in a round `eval.every` leaves unscored (sim.metrics.is_scored_round);
    # backdoor_accuracy also when the target class is the only one left to score.
    main_accuracy: float | None
    backdoor_accuracy: float | None
    test_loss: float | None
    malicious_selected: int
    selected: str
    malicious_ids: str
    kept: str
    rejected_nonfinite: str
    aggregate_rejected: int  # 1: the aggregate gave a non-finite model, which was rejected (previous model kept)
    wall_time_s: float
    # With `metrics.attack_effect` (sim.attack_effect), else empty: ||W_t - W_t^M||, its uniform
    # part and the rest, ||delta_t|| / ||delta_{t-1}|| (empty after a zero delta), and the shadow
    # model's main accuracy.
    attack_effect: float | None = None
    attack_effect_uniform: float | None = None
    attack_effect_rest: float | None = None
    attack_effect_ratio: float | None = None
    shadow_main_accuracy: float | None = None
    # With an attack scored by parts of its trigger too (DBA), else empty: the trigger-to-target
    # rate of each part alone, in the attack's order, space-separated.
    backdoor_accuracy_pieces: str = ""
    # With a backdoor target (attack.target_label), in a scored round: the mean over the triggered
    # test images of logit[target] - max of the other logits (sim.metrics.margins).
    backdoor_margin: float | None = None
    # With `metrics.attack_effect` and a backdoor target, else empty: the shadow model's backdoor
    # margin (scored rounds), and (delta_t . g) / ||g|| with g the backdoor task's gradient at the
    # shadow model (sim.attack_effect.backdoor_gradient; every round).
    shadow_backdoor_margin: float | None = None
    attack_effect_backdoor: float | None = None
    # With `metrics.upload_stats`, else empty: each group's mean upload norm, mean distance and mean
    # cosine to the benign centre (benign rows: the mean of the other benign rows), sim.upload_stats.
    upload_norm_benign: float | None = None
    upload_norm_malicious: float | None = None
    upload_distance_benign: float | None = None
    upload_distance_malicious: float | None = None
    upload_cosine_benign: float | None = None
    upload_cosine_malicious: float | None = None

    def as_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


METRIC_COLUMNS = tuple(field.name for field in dataclasses.fields(RoundRecord))
# Columns whose values depend on the machine's speed, not on the run's maths.
TIMING_COLUMNS = ("wall_time_s",)
_PARSERS = {"int": int, "float": float, "float | None": float, "str": str}


def ids_text(ids) -> str:
    return " ".join(str(i) for i in ids)


def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # round-trips exactly, so equal runs give byte-equal files
    return str(value)


def metrics_csv_text(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(METRIC_COLUMNS)
    for row in rows:
        # .get: rows checkpointed before a column existed leave it empty
        writer.writerow([_format_cell(row.get(column)) for column in METRIC_COLUMNS])
    return out.getvalue()


def _parse(text: str | None, kind: str) -> Any:
    if text is None:  # a column added after the file was written
        return None
    if kind != "str" and text == "":
        return None
    return _PARSERS[kind](text)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a `metrics.csv`, with numbers as numbers and id lists as text."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise ConfigError(f"no {METRICS_FILE} at {path}; fix: point at the folder of a run")
    kinds = {field.name: str(field.type) for field in dataclasses.fields(RoundRecord)}
    rows = []
    with open(path, newline="") as stream:
        for line, record in enumerate(csv.DictReader(stream), start=2):
            # A row with fewer or more cells than the header was cut short or joined: refuse it
            # rather than read its missing cells as empty.
            if None in record or None in record.values():
                raise ConfigError(f"{path} line {line} does not have one cell per column (the file was cut short "
                                  "or edited); fix: restore it from a copy, or run the run again")
            # A column the file lacks (written before it existed) reads as empty.
            rows.append({name: _parse(record.get(name) or "", kind) for name, kind in kinds.items()})
    return rows
