"""Markdown table of chosen rounds from several runs' metrics.csv, side by side.

    python scripts/rounds_table.py LABEL=RUN_DIR [LABEL=RUN_DIR ...] [--rounds 0-9,10,20] [--columns main,backdoor]

Each run contributes one column per requested metric (`main`: main_accuracy, `backdoor`:
backdoor_accuracy; from runs with `metrics.attack_effect`, `effect`, `uniform`, `rest` and
`ratio`: ‖δ‖, its uniform part and the rest, and the ratio to the previous round), and the
first run also gives the `malicious` column (clients of that round's
selection that are malicious; runs compared this way share selections). Rounds a run has not
reached are left empty, so partial runs can be shown as they stand.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sim.config import parse_seeds  # noqa: E402  (the same range syntax: 0-9,12,20-25)
from sim.reporting import read_metrics  # noqa: E402

# name: (metrics.csv column, title, decimals); the attack effect's from metrics.attack_effect runs
COLUMNS = {"main": ("main_accuracy", "main (%)", 1), "backdoor": ("backdoor_accuracy", "backdoor (%)", 1),
           "effect": ("attack_effect", "‖δ‖", 3), "uniform": ("attack_effect_uniform", "‖δ‖ uniform part", 3),
           "rest": ("attack_effect_rest", "‖δ‖ rest", 3), "ratio": ("attack_effect_ratio", "‖δ_t‖/‖δ_t-1‖", 3)}


def table(runs: dict[str, Path], rounds: list[int] | None, columns: list[str]) -> str:
    rows = {label: {row["round"]: row for row in read_metrics(folder)} for label, folder in runs.items()}
    first = next(iter(rows.values()))
    if rounds is None:
        rounds = sorted({r for by_round in rows.values() for r in by_round})
    header = ["round", "malicious"] + [f"{label}: {COLUMNS[c][1]}" for label in runs for c in columns]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---:" for _ in header) + " |"]
    for r in rounds:
        cells = [str(r), str(first[r]["malicious_selected"]) if r in first else ""]
        for label in runs:
            row = rows[label].get(r)
            for c in columns:
                key, _, digits = COLUMNS[c]
                value = None if row is None else row.get(key)
                cells.append("" if value is None else f"{value:.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    parser.add_argument("--rounds", help="rounds to show, e.g. 0-9,10,20 (default: every round)")
    parser.add_argument("--columns", default="main,backdoor", help="comma-separated, of: " + ", ".join(COLUMNS) + " (default: main,backdoor)")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        label, sep, folder = item.partition("=")
        if not sep or not Path(folder, "metrics.csv").is_file():
            parser.error(f"{item!r} is not LABEL=RUN_DIR with a metrics.csv in RUN_DIR; fix: e.g. None=runs/t1/None")
        runs[label] = Path(folder)
    columns = [c.strip() for c in args.columns.split(",")]
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        parser.error(f"--columns {','.join(unknown)} is not allowed; allowed: {', '.join(COLUMNS)}")
    print(table(runs, parse_seeds(args.rounds, "--rounds") if args.rounds else None, columns), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
