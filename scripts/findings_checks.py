"""The figures behind the corrected statements of docs/findings/leadfl.md, recomputed from the
committed result files (no run, no torch).

    python scripts/findings_checks.py [CHECK ...]      # default: every check

Checks:
  lr-x2            finding 5: `none lr x2` against `none`, `original` and `original alpha 0`,
                   paired seed by seed (docs/results/decomposition/comparison.json)
  drift-alpha      section 2: `drift` minus `hessian` at each alpha, paired seed by seed, and the
                   largest single-seed gap (docs/results/alpha-frontier/comparison.json)
  table1-original  section 5: `LeadFL original` and `None` backdoor accuracy per round range
                   (docs/results/table1-fmnist/{None,LeadFL-original}/metrics.csv)
  r-share          the R = +q shares of docs/results/r-saturation/README.md, and every share
                   the documents quote beside them, checked against that file

Intervals are the project's: mean and Student-t 95% half-width over the seeds (`sim.stats`), of
per-seed differences where two variants share a seed (same selections, malicious set, model).
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sim.stats import mean_interval  # noqa: E402

RESULTS = ROOT / "docs" / "results"
ALPHAS = ("0.025", "0.05", "0.1", "0.2", "0.4")
# Documents that quote the R = +q share, relative to the repository root.
SHARE_DOCUMENTS = ("docs/findings/leadfl.md", "README.md", "docs/algorithms.md",
                   "docs/results/table1-fmnist/README.md")


def per_seed(comparison: dict, variant: str, key: str) -> dict[int, float]:
    """{seed: summary[key]} of one variant of a `compare --seeds` comparison.json."""
    runs = comparison["variants"][variant]["runs"]
    return {int(seed): float(run["summary"][key]) for seed, run in runs.items()
            if run.get("summary", {}).get(key) is not None}


def paired(first: dict[int, float], second: dict[int, float]) -> tuple[dict[int, float], str]:
    """Per-seed differences first - second over the seeds both have, and 'mean ± half-width'."""
    seeds = sorted(set(first) & set(second))
    differences = {seed: first[seed] - second[seed] for seed in seeds}
    return differences, estimate_text(list(differences.values()))


def estimate_text(values: list[float]) -> str:
    estimate = mean_interval(values)
    if estimate.half_width is None:
        return f"{estimate.mean:+.1f} (one seed, no interval)"
    return f"{estimate.mean:+.1f} ± {estimate.half_width:.1f} (n {estimate.n})"


def seeds_text(differences: dict[int, float], digits: int = 1) -> str:
    return ", ".join(f"seed {seed} {value:+.{digits}f}" for seed, value in differences.items())


def check_lr_x2() -> None:
    comparison = json.loads((RESULTS / "decomposition" / "comparison.json").read_text())
    print("## lr-x2: docs/results/decomposition/comparison.json, seeds", comparison["seeds"])
    pairs = [("none lr x2", "none"), ("none lr x2", "original"), ("none lr x2", "original alpha 0"),
             ("original", "none"), ("original alpha 0", "none")]
    for key, title in [("mean_backdoor_accuracy", "backdoor accuracy, average"),
                       ("final_backdoor_accuracy", "backdoor accuracy, final"),
                       ("final_main_accuracy", "main accuracy, final")]:
        print(f"{title} (points), paired:")
        for first, second in pairs:
            differences, text = paired(per_seed(comparison, first, key), per_seed(comparison, second, key))
            print(f"  {first} - {second}: {text}; {seeds_text(differences)}")
    print()


def check_drift_alpha() -> None:
    comparison = json.loads((RESULTS / "alpha-frontier" / "comparison.json").read_text())
    print("## drift-alpha: docs/results/alpha-frontier/comparison.json, seeds", comparison["seeds"])
    for key, title in [("final_main_accuracy", "main accuracy, final"),
                       ("mean_backdoor_accuracy", "backdoor accuracy, average"),
                       ("final_backdoor_accuracy", "backdoor accuracy, final")]:
        print(f"drift - hessian, {title} (points), paired:")
        for alpha in ALPHAS:
            differences, text = paired(per_seed(comparison, f"drift alpha {alpha}", key),
                                       per_seed(comparison, f"hessian alpha {alpha}", key))
            seed, gap = max(differences.items(), key=lambda item: abs(item[1]))
            print(f"  alpha {alpha}: {text}; largest single-seed gap {gap:+.2f} (seed {seed}); "
                  f"{seeds_text(differences, 2)}")
    print()


def backdoor_by_round(folder: Path) -> dict[int, tuple[float, int]]:
    """{round: (backdoor accuracy, malicious clients selected)} from a run's metrics.csv."""
    with open(folder / "metrics.csv", newline="") as stream:
        return {int(row["round"]): (float(row["backdoor_accuracy"]), int(row["malicious_selected"]))
                for row in csv.DictReader(stream)}


def span_text(by_round: dict[int, tuple[float, int]], rounds: range) -> str:
    values = [by_round[r][0] for r in rounds]
    return f"{min(values):.1f}-{max(values):.1f}%"


def check_table1_original(threshold: float = 93.0) -> None:
    folder = RESULTS / "table1-fmnist"
    none = backdoor_by_round(folder / "None")
    original = backdoor_by_round(folder / "LeadFL-original")
    last = max(none)
    print(f"## table1-original: docs/results/table1-fmnist/{{None,LeadFL-original}}/metrics.csv, rounds 0-{last}")
    for rounds in (range(2, 9), range(17, 65), range(17, last + 1), range(65, 71), range(71, last + 1)):
        print(f"  rounds {rounds.start}-{rounds.stop - 1}: None {span_text(none, rounds)}, "
              f"LeadFL original {span_text(original, rounds)}")
    for rounds in (range(17, 65), range(17, last + 1)):
        below = [r for r in rounds if original[r][0] < threshold]
        print(f"  LeadFL original under {threshold:g}% in {len(below)} of the {len(rounds)} rounds "
              f"{rounds.start}-{rounds.stop - 1}: "
              + ", ".join(f"{r} ({original[r][0]:.1f}%, {original[r][1]} malicious)" for r in below))
    busy = sum(1 for backdoor, malicious in none.values() if 2 <= malicious <= 5)
    print(f"  rounds with 2-5 malicious clients: {busy} of {len(none)}")
    print()


def measured_shares(readme: Path) -> dict[str, float]:
    """{model: R = +q share in %} from the output table of docs/results/r-saturation/README.md."""
    shares = {}
    for line in readme.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"\d+\.\d+", cells[1]):
            shares[cells[0]] = float(cells[1])
    if not shares:
        raise SystemExit(f"no share table in {readme}; fix: restore the output block of scripts/r_saturation.py")
    return shares


def quoted_shares(text: str) -> list[str]:
    """Percentages 99.x quoted in the paragraphs that speak of R = +q per element-step."""
    quotes = []
    # A paragraph, or one item of a list (whose items are not separated by blank lines).
    for paragraph in re.split(r"\n\s*\n|\n(?=\s*(?:[-*]|\d+\.) )", text):
        if "+q" in paragraph and "element-step" in paragraph:
            quotes += re.findall(r"99\.\d+", paragraph)
    return quotes


def share_disagreements(quotes: list[str], shares: list[float]) -> list[str]:
    """The quotes that are not a measured share written to their own number of decimals."""
    wrong = []
    for quote in quotes:
        decimals = len(quote.split(".")[1])
        if not any(f"{share:.{decimals}f}" == quote for share in shares):
            wrong.append(quote)
    return wrong


def check_r_share() -> int:
    readme = RESULTS / "r-saturation" / "README.md"
    shares = measured_shares(readme)
    print("## r-share: docs/results/r-saturation/README.md")
    for model, share in shares.items():
        print(f"  {model}: {share:.3f}%")
    print(f"  range {min(shares.values()):.3f}-{max(shares.values()):.3f}%")
    failures = 0
    for name in SHARE_DOCUMENTS:
        quotes = quoted_shares((ROOT / name).read_text())
        wrong = share_disagreements(quotes, list(shares.values()))
        failures += len(wrong)
        verdict = "agrees" if not wrong else "DISAGREES: " + ", ".join(wrong)
        print(f"  {name}: quotes {', '.join(quotes) or 'none'}; {verdict}")
    print()
    return failures


CHECKS = {"lr-x2": check_lr_x2, "drift-alpha": check_drift_alpha,
          "table1-original": check_table1_original, "r-share": check_r_share}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checks", nargs="*", metavar="CHECK", help="of: " + ", ".join(CHECKS) + " (default: all)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.checks if name not in CHECKS]
    if unknown:
        parser.error(f"unknown check {', '.join(unknown)}; allowed: {', '.join(CHECKS)}")
    failures = 0
    for name in args.checks or CHECKS:
        failures += CHECKS[name]() or 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
