"""The figures of docs/findings/poisonedfl-prodigy.md, recomputed from the run folders of the
`poisonedfl-prodigy` comparisons (no run).

    python scripts/prodigy_checks.py [FOLDER ...]   # default: docs/results/poisonedfl-prodigy/{iid,dirichlet}

For each split folder (a `compare --seeds` folder: seedN/<variant>/ with metrics.csv and, once a run
finished, summary.json) it prints:
  finals     each variant's final main accuracy: mean ± Student-t 95% half-width over the seeds
             whose run finished, the lowest seed, and the lowest round from round 5 on
  paired     the claims' paired differences of final main accuracy, seed by seed (the variants of
             one seed share selections, malicious set and initial model)
  kept       malicious uploads the server kept, over all rounds and seeds (`malicious_ids`, `kept`),
             and split by the number of attackers in the round
A run that has not finished is left out and counted as such.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sim.compare import folder_name  # noqa: E402  (the run folder of a variant label)
from sim.stats import mean_interval  # noqa: E402

DEFAULT = [ROOT / "docs" / "results" / "poisonedfl-prodigy" / name for name in ("iid", "dirichlet")]
# (attacked variant, reference variant): the difference each claim rests on.
PAIRS = [
    ("PoisonedFL fedavg", "clean fedavg"),
    ("PoisonedFL multikrum", "clean multikrum"),
    ("PoisonedFL prodigy", "clean prodigy"),
    ("PoisonedFL prodigy", "PoisonedFL multikrum"),
    ("noise 0.25 prodigy", "PoisonedFL prodigy"),
    ("noise 0.5 prodigy", "PoisonedFL prodigy"),
    ("noise 1.0 prodigy", "PoisonedFL prodigy"),
    ("flip 0.05 prodigy", "PoisonedFL prodigy"),
    ("flip 0.1 prodigy", "PoisonedFL prodigy"),
    ("flip 0.2 prodigy", "PoisonedFL prodigy"),
    ("PoisonedFL step 0.05 prodigy", "clean step 0.05 prodigy"),
    ("PoisonedFL random prodigy", "clean random prodigy"),
    ("PoisonedFL random prodigy", "PoisonedFL prodigy"),
    ("PoisonedFL partitioned prodigy", "PoisonedFL prodigy"),
]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def load(split: Path) -> tuple[dict[str, dict[int, dict]], list[str]]:
    """{variant: {seed: {"final": ..., "rows": [...]}}} for the finished runs of the variants that
    `PAIRS` names, and those labels in the order they first appear there."""
    order = list(dict.fromkeys(label for pair in PAIRS for label in pair))
    runs: dict[str, dict[int, dict]] = {label: {} for label in order}
    for seed_dir in sorted(split.glob("seed*")):
        seed = int(seed_dir.name[4:])
        for label in order:
            run = seed_dir / folder_name(label)
            if not (run / "summary.json").is_file():
                continue
            summary = json.loads((run / "summary.json").read_text())
            runs[label][seed] = {"final": float(summary["final_main_accuracy"]),
                                 "rows": read_rows(run / "metrics.csv")}
    return runs, order


def estimate_text(values: list[float]) -> str:
    if not values:
        return "no finished run"
    estimate = mean_interval(values)
    half = "" if estimate.half_width is None else f" ± {estimate.half_width:.1f}"
    return f"{estimate.mean:.1f}{half} (n {estimate.n})"


def kept_malicious(rows: list[dict[str, str]], by_count: dict[int, list[int]] | None = None) -> tuple[int, int]:
    """(malicious uploads kept, malicious uploads) over `rows`; `by_count` gathers the same per
    number of attackers in a round: {attackers: [kept, uploads]}."""
    kept = uploaded = 0
    for row in rows:
        malicious = set(row["malicious_ids"].split())
        held = len(malicious & set(row["kept"].split()))
        uploaded += len(malicious)
        kept += held
        if by_count is not None and malicious:
            tally = by_count.setdefault(len(malicious), [0, 0])
            tally[0] += held
            tally[1] += len(malicious)
    return kept, uploaded


def report(split: Path) -> None:
    runs, order = load(split)
    total = sum(len(seeds) for seeds in runs.values())
    print(f"== {split.relative_to(ROOT) if split.is_relative_to(ROOT) else split}: {total} finished runs")
    print("finals: variant | final main accuracy (%) | lowest seed | lowest round from round 5")
    for label in order:
        seeds = runs[label]
        if not seeds:
            print(f"  {label} | no finished run")
            continue
        finals = [seeds[s]["final"] for s in sorted(seeds)]
        lowest_round = min(float(row["main_accuracy"]) for s in seeds for row in seeds[s]["rows"]
                           if int(row["round"]) >= 5 and row["main_accuracy"])
        print(f"  {label} | {estimate_text(finals)} | {min(finals):.1f} | {lowest_round:.1f}")
    print("paired: attacked - reference, final main accuracy (points), seed by seed")
    for attacked, reference in PAIRS:
        common = sorted(set(runs[attacked]) & set(runs[reference]))
        differences = [runs[attacked][s]["final"] - runs[reference][s]["final"] for s in common]
        per_seed = ", ".join(f"{d:+.1f}" for d in differences)
        print(f"  {attacked} - {reference} | {estimate_text(differences)} | seeds {common}: {per_seed}")
    print("kept: malicious uploads the server kept, all rounds and seeds")
    for label in order:
        if label.startswith("clean") or not runs[label]:
            continue
        kept = uploaded = 0
        by_count: dict[int, list[int]] = {}
        for seed in runs[label].values():
            k, u = kept_malicious(seed["rows"], by_count)
            kept, uploaded = kept + k, uploaded + u
        split = ", ".join(f"{count} attackers: {held} of {total}" for count, (held, total) in sorted(by_count.items()))
        print(f"  {label} | {kept} of {uploaded} ({split})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, default=DEFAULT)
    args = parser.parse_args(argv)
    for folder in args.folders:
        if not folder.is_dir():
            print(f"error: {folder} is not a folder; fix: give a poisonedfl-prodigy comparison folder", file=sys.stderr)
            return 2
        report(folder.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
