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
  original-demo    section 1, finding 4: `original` against `none` and against `original alpha 0`,
                   paired seed by seed (docs/results/decomposition/comparison.json)
  curvature-alpha  section 2: `curvature` minus `none` at each alpha, paired seed by seed, naming
                   the intervals that exclude 0 (docs/results/alpha-frontier/comparison.json)
  frontier-tables  the tables of docs/results/alpha-frontier/README.md are the 5-seed frontier.md
                   and table.md of the same folder, not a one-seed build
  table1-kept      section 5: malicious uploads Multi-Krum kept per Table I row, by attackers per
                   round (docs/results/table1-fmnist/*/metrics.csv, `malicious_ids` and `kept`)
  table1-hessian   section 5: `LeadFL hessian`'s backdoor per round, the rounds above 3.5%
                   (docs/results/table1-fmnist/LeadFL-hessian/metrics.csv)
  switches-kept    section 4: malicious uploads kept in rounds 1-9 of the authors' setting and
                   each switch (docs/results/table1-fmnist-authors{,-switches}/*/metrics.csv)
  authors-bursts   section 4 and the verdict: the rounds after each burst of 5 malicious clients in
                   the authors' setting, what the server kept and where the backdoor went
                   (docs/results/table1-fmnist-authors/{None,LeadFL}/metrics.csv)
  demo-kept        sections 1 and 2: malicious uploads kept per variant and seed at demo scale
                   (docs/results/{decomposition,decomposition-controls,alpha-frontier}/seed*/)
  detection-followed  section 5: `hessian` and `original` with the attacker that follows the client
                   defense, paired seed by seed with the decomposition's runs
                   (docs/results/detection-confound/, docs/results/decomposition/)

  switch-replication  section 4: the authors' setting's first 20 rounds with no defense, LeadFL and
                   LeadFL alpha 0 over seeds 0-4, backdoor after the isolated burst (round 9), after
                   the late bursts (round 19) and on average, paired seed by seed
                   (docs/results/switch-replication/, seed 0 from table1-fmnist-authors{,-switches})
  crossover        section 4: the same measures with the local work swapped, the authors' setting
                   at 20 local steps and the demo at 380 (docs/results/crossover/)
  effect-measures  section 3: at demo scale, what is left of each burst eight benign rounds later by
                   three measures: the L2 attack effect, the gap between the real and the shadow
                   model's backdoor margin, and the effect along the backdoor gradient
                   (docs/results/attack-effect-measures/)
  table1-detection section 5: the first 10 rounds of Table I per client defense, with and without
                   the attacker that follows it: malicious uploads kept, and where they sat
                   (`metrics.upload_stats`; docs/results/table1-detection/)

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
from sim.compare import folder_name  # noqa: E402
from sim.stats import mean_interval  # noqa: E402
from sim.upload_stats import UPLOAD_STAT_COLUMNS  # noqa: E402

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


def level_text(values: list[float], digits: int = 1) -> str:
    """Like `estimate_text`, for a level rather than a difference (no sign)."""
    estimate = mean_interval(values)
    if estimate.half_width is None:
        return f"{estimate.mean:.{digits}f} (one seed, no interval)"
    return f"{estimate.mean:.{digits}f} ± {estimate.half_width:.{digits}f} (n {estimate.n})"


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


def excludes_zero(values: list[float]) -> bool:
    """Whether the Student-t 95% interval of the mean of `values` lies wholly on one side of 0."""
    estimate = mean_interval(values)
    return estimate.half_width is not None and abs(estimate.mean) > estimate.half_width


def check_original_demo() -> None:
    comparison = json.loads((RESULTS / "decomposition" / "comparison.json").read_text())
    print("## original-demo: docs/results/decomposition/comparison.json, seeds", comparison["seeds"])
    for key, title in [("final_main_accuracy", "main accuracy, final"),
                       ("mean_backdoor_accuracy", "backdoor accuracy, average"),
                       ("final_backdoor_accuracy", "backdoor accuracy, final")]:
        print(f"{title} (points), paired:")
        for first, second in [("original", "none"), ("original alpha 0", "none"),
                              ("original", "original alpha 0")]:
            differences, text = paired(per_seed(comparison, first, key), per_seed(comparison, second, key))
            print(f"  {first} - {second}: {text}; {seeds_text(differences)}")
    print()


def check_curvature_alpha() -> None:
    comparison = json.loads((RESULTS / "alpha-frontier" / "comparison.json").read_text())
    print("## curvature-alpha: docs/results/alpha-frontier/comparison.json, seeds", comparison["seeds"])
    for key, title in [("final_main_accuracy", "main accuracy, final"),
                       ("mean_backdoor_accuracy", "backdoor accuracy, average"),
                       ("final_backdoor_accuracy", "backdoor accuracy, final")]:
        print(f"curvature - none, {title} (points), paired:")
        for alpha in ALPHAS:
            differences, text = paired(per_seed(comparison, f"curvature alpha {alpha}", key),
                                       per_seed(comparison, "none", key))
            verdict = "EXCLUDES 0" if excludes_zero(list(differences.values())) else "contains 0"
            print(f"  alpha {alpha}: {text}, interval {verdict}; {seeds_text(differences, 2)}")
    print()


def markdown_tables(text: str) -> list[str]:
    """Every markdown table of `text` (runs of lines starting with '|'), each as one string."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line.rstrip())
        elif current:
            tables.append("\n".join(current))
            current = []
    return tables


def foreign_tables(document: str, sources: list[str]) -> list[str]:
    """The tables of `document` that are neither a table of a source file nor its own summary
    (the first table, written by hand from the same comparison), by their header line."""
    known = {table for source in sources for table in markdown_tables(source)}
    return [table.splitlines()[0] for table in markdown_tables(document)[1:] if table not in known]


def check_frontier_tables() -> int:
    folder = RESULTS / "alpha-frontier"
    readme = (folder / "README.md").read_text()
    sources = [(folder / name).read_text() for name in ("frontier.md", "table.md")]
    print("## frontier-tables: docs/results/alpha-frontier/README.md against frontier.md and table.md")
    failures = 0
    for name, source in zip(("frontier.md", "table.md"), sources):
        seeds = re.findall(r"\| (\d+) \|", source)
        counts = sorted({int(n) for n in seeds})
        print(f"  {name}: seed counts in its n column {counts}")
    wrong = foreign_tables(readme, sources)
    one_seed = re.findall(r"\b1 seeds \(\d+\)", readme)
    for header in wrong:
        print(f"  README table not in frontier.md or table.md: {header[:80]}")
    if one_seed:
        print(f"  README caption of a one-seed build: {', '.join(one_seed)}")
    failures = len(wrong) + len(one_seed)
    print("  agrees" if not failures else "  DISAGREES")
    print()
    return failures


def rows_of(folder: Path) -> list[dict[str, str]] | None:
    """The rows of a run's metrics.csv (cells as text), None where the run has none."""
    path = folder / "metrics.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def malicious_kept_by_round(folder: Path, rows: list[dict[str, str]] | None = None) -> dict[int, tuple[int, int]]:
    """{round: (malicious clients selected, of them kept by the server)} from a run's metrics.csv
    (`malicious_ids` and `kept` are space-separated client ids), or from its `rows` already read."""
    by_round = {}
    for row in rows_of(folder) if rows is None else rows:
        malicious, kept = set(row["malicious_ids"].split()), set(row["kept"].split())
        by_round[int(row["round"])] = (len(malicious), len(malicious & kept))
    return by_round


def kept_text(by_round: dict[int, tuple[int, int]], rounds=None) -> str:
    """'kept K of M malicious uploads', then per number of attackers a round: kept / uploads (rounds)."""
    rounds = sorted(by_round) if rounds is None else list(rounds)
    total = sum(by_round[r][0] for r in rounds)
    kept = sum(by_round[r][1] for r in rounds)
    groups = {}
    for r in rounds:
        count, held = by_round[r]
        if count:
            group = groups.setdefault(count, [0, 0, 0])
            group[0] += 1
            group[1] += held
            group[2] += count
    detail = "; ".join(f"{count} a round: {held} of {uploads} ({n} rounds)"
                       for count, (n, held, uploads) in sorted(groups.items()))
    return f"kept {kept} of {total} malicious uploads ({detail})"


def check_table1_kept() -> None:
    folder = RESULTS / "table1-fmnist"
    print("## table1-kept: docs/results/table1-fmnist/*/metrics.csv (`malicious_ids`, `kept`)")
    for name in ("None", "LDP", "FL-WBC", "LeadFL-hessian", "LeadFL-original"):
        by_round = malicious_kept_by_round(folder / name)
        few = [r for r, (count, _) in by_round.items() if 1 <= count <= 3]
        clean = [r for r in few if by_round[r][1] == 0]
        print(f"  {name}: {kept_text(by_round)}")
        print(f"    rounds with 1-3 attackers: {len(few)}; all of them dropped in {len(clean)}")
    by_round = malicious_kept_by_round(folder / "None")
    busy = sum(1 for count, _ in by_round.values() if 2 <= count <= 5)
    print(f"  rounds with 2-5 malicious clients: {busy} of {len(by_round)}")
    print()


def check_table1_hessian(threshold: float = 3.5) -> None:
    folder = RESULTS / "table1-fmnist" / "LeadFL-hessian"
    backdoor = backdoor_by_round(folder)
    kept = malicious_kept_by_round(folder)
    values = [backdoor[r][0] for r in sorted(backdoor)]
    last = max(backdoor)
    print("## table1-hessian: docs/results/table1-fmnist/LeadFL-hessian/metrics.csv")
    print(f"  average {sum(values) / len(values):.1f}%, final (round {last}) {backdoor[last][0]:.1f}%, "
          f"range {min(values):.1f}-{max(values):.1f}%")
    above = [r for r in sorted(backdoor) if backdoor[r][0] > threshold]
    print(f"  rounds above {threshold:g}%: {len(above)}: "
          + ", ".join(f"{r} ({backdoor[r][0]:.1f}%, {kept[r][1]} of {kept[r][0]} malicious kept; "
                      f"round {r + 1}: {backdoor[r + 1][0]:.1f}%)" if r < last else
                      f"{r} ({backdoor[r][0]:.1f}%, {kept[r][1]} of {kept[r][0]} malicious kept)"
                      for r in above))
    rest = [backdoor[r][0] for r in backdoor if r not in above]
    print(f"  the other {len(rest)} rounds: {min(rest):.1f}-{max(rest):.1f}%")
    print()


def check_switches_kept() -> None:
    runs = [("None", RESULTS / "table1-fmnist-authors" / "None"),
            ("LeadFL", RESULTS / "table1-fmnist-authors" / "LeadFL")]
    runs += [(folder.name, folder) for folder in sorted((RESULTS / "table1-fmnist-authors-switches").iterdir())
             if (folder / "metrics.csv").exists()]
    print("## switches-kept: docs/results/table1-fmnist-authors{,-switches}/*/metrics.csv, rounds 1-9")
    for name, folder in runs:
        by_round = malicious_kept_by_round(folder)
        dropped = ", ".join(f"round {r}: {count - held} of {count}" for r in range(1, 10)
                            for count, held in [by_round[r]] if held < count)
        print(f"  {name}: {kept_text(by_round, range(1, 10))}; dropped: {dropped or 'none'}")
    print()


def check_authors_bursts() -> None:
    """The authors' 80-round setting, seed 0 (table1-fmnist-authors) and seed 1 (its second seed):
    the backdoor between each burst of 5 malicious clients and the next, and the uploads kept."""
    for folder_name, seed in (("table1-fmnist-authors", 0), ("table1-fmnist-authors-seed1", 1)):
        folder = RESULTS / folder_name
        print(f"## authors-bursts: docs/results/{folder_name}/{{None,LeadFL}}/metrics.csv (seed {seed})")
        if not folder.is_dir():
            print("  no such folder: not run\n")
            continue
        for name in ("LeadFL", "None"):
            if not (folder / name / "metrics.csv").is_file():
                print(f"  {name}: not started")
                continue
            backdoor = backdoor_by_round(folder / name)
            kept = malicious_kept_by_round(folder / name)
            last = max(backdoor)
            state = "" if (folder / name / "summary.json").is_file() else f" (unfinished: rounds 0-{last})"
            bursts = [r for r in sorted(kept) if kept[r][0] == 5]
            print(f"  {name}{state}: bursts (5 malicious) in rounds {', '.join(map(str, bursts))}; backdoor average "
                  f"{sum(v for v, _ in backdoor.values()) / len(backdoor):.1f}%, last {backdoor[last][0]:.1f}%")
            for burst, following in zip(bursts, bursts[1:] + [last + 1]):
                between = range(burst + 1, following)
                if not between:
                    continue
                held = sum(kept[r][1] for r in between)
                uploads = sum(kept[r][0] for r in between)
                values = [backdoor[r][0] for r in between]
                tenth = f", round {burst + 10}: {backdoor[burst + 10][0]:.1f}%" if burst + 10 in between else ""
                print(f"    after round {burst}: rounds {between.start}-{between.stop - 1} ({len(between)}), "
                      f"kept {held} of {uploads} malicious uploads, backdoor {min(values):.1f}-{max(values):.1f}%"
                      f"{tenth}, last {values[-1]:.1f}%")
        print()


def check_demo_kept() -> None:
    print("## demo-kept: malicious uploads kept at demo scale, per variant (seeds 0-4 summed, then per seed)")
    for name in ("decomposition", "decomposition-controls", "alpha-frontier"):
        totals: dict[str, list[int]] = {}
        for seed_folder in sorted((RESULTS / name).glob("seed*")):
            for run in sorted(seed_folder.iterdir()):
                if not (run / "metrics.csv").exists():
                    continue
                by_round = malicious_kept_by_round(run)
                total = totals.setdefault(run.name, [0, 0, []])
                total[0] += sum(held for _, held in by_round.values())
                total[1] += sum(count for count, _ in by_round.values())
                total[2].append(f"{seed_folder.name} {sum(held for _, held in by_round.values())}")
        print(f"  docs/results/{name}/:")
        for variant, (held, uploads, seeds) in totals.items():
            print(f"    {variant}: kept {held} of {uploads} ({', '.join(seeds)})")
    print()


def summary_of(run: Path) -> dict | None:
    path = run / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def check_detection_followed() -> None:
    """The attacker that follows the client defense at demo scale (docs/results/detection-confound/),
    paired seed by seed with the decomposition's runs of the same seeds (its `hessian` rerun here
    must match the decomposition's exactly for the pairing to hold)."""
    print("## detection-followed: hessian and original with the attacker following the client defense "
          "(docs/results/detection-confound/ against docs/results/decomposition/)")
    confound, decomposition = RESULTS / "detection-confound", RESULTS / "decomposition"
    seeds = sorted(int(folder.name[4:]) for folder in confound.glob("seed*"))
    rows: dict[str, dict[int, dict]] = {}
    for seed in seeds:
        for label, folder in (("none", decomposition / f"seed{seed}" / "none"),
                              ("hessian", decomposition / f"seed{seed}" / "hessian"),
                              ("original", decomposition / f"seed{seed}" / "original"),
                              ("hessian rerun", confound / f"seed{seed}" / "hessian"),
                              ("hessian followed", confound / f"seed{seed}" / "hessian-followed"),
                              ("original followed", confound / f"seed{seed}" / "original-followed")):
            summary = summary_of(folder)
            if summary is None:
                continue
            by_round = malicious_kept_by_round(folder)
            rows.setdefault(label, {})[seed] = {
                "main": summary["final_main_accuracy"], "mean_backdoor": summary["mean_backdoor_accuracy"],
                "final_backdoor": summary["final_backdoor_accuracy"],
                "kept": sum(held for _, held in by_round.values()),
                "uploads": sum(count for count, _ in by_round.values())}
    rerun, original_runs = rows.get("hessian rerun", {}), rows.get("hessian", {})
    same = [seed for seed in rerun if seed in original_runs and rerun[seed] == original_runs[seed]]
    print(f"  hessian rerun equals the decomposition's on seeds {same} of {sorted(rerun)}")
    for label in ("none", "hessian", "hessian followed", "original", "original followed"):
        done = rows.get("hessian followed", {})  # the seeds the comparison has reached
        runs = {seed: value for seed, value in rows.get(label, {}).items() if seed in done}
        if not runs:
            print(f"  {label}: no finished run")
            continue
        kept = sum(run["kept"] for run in runs.values())
        uploads = sum(run["uploads"] for run in runs.values())
        print(f"  {label} (seeds {sorted(runs)}): main {estimate_text([r['main'] for r in runs.values()])}, "
              f"mean backdoor {estimate_text([r['mean_backdoor'] for r in runs.values()])}, final backdoor "
              f"{estimate_text([r['final_backdoor'] for r in runs.values()])}, malicious uploads kept {kept} of {uploads}")
    for followed, ignored in (("hessian followed", "hessian"), ("original followed", "original"),
                              ("hessian followed", "none"), ("original followed", "none")):
        for key in ("mean_backdoor", "final_backdoor", "main"):
            first = {seed: run[key] for seed, run in rows.get(followed, {}).items()}
            second = {seed: run[key] for seed, run in rows.get(ignored, {}).items()}
            if not set(first) & set(second):
                continue
            differences, text = paired(first, second)
            if differences:
                print(f"  {followed} - {ignored}, {key}: {text} (seeds: {seeds_text(differences)})")
    print()


def decay_measures(folder: Path, first: int, last: int) -> dict[str, float]:
    """A run's backdoor accuracy at round 9 and round `last`, and its mean over rounds
    `first`-`last`, where the run reaches them."""
    backdoor = {round_: value for round_, (value, _) in backdoor_by_round(folder).items()}
    measures = {}
    if 9 in backdoor:
        measures["round 9"] = backdoor[9]
    if last in backdoor:
        measures[f"round {last}"] = backdoor[last]
        measures[f"mean {first}-{last}"] = sum(backdoor[r] for r in range(first, last + 1)) / (last - first + 1)
    return measures


def finished_runs(study: Path, labels, seeds=None) -> dict[str, dict[int, Path]]:
    """{label: {seed: run folder}} of a `compare --seeds` output folder, finished runs only (those
    with a summary.json); the seeds are the folder's own unless given."""
    if seeds is None:
        seeds = sorted(int(path.name[4:]) for path in study.glob("seed*"))
    runs = {label: {} for label in labels}
    for label in labels:
        for seed in seeds:
            run = study / f"seed{seed}" / folder_name(label)
            if (run / "summary.json").is_file():
                runs[label][seed] = run
    return runs


def print_decay_study(title: str, runs: dict[str, dict[int, Path]], reference: str, last: int = 19) -> None:
    """Per variant the decay measures over its seeds, then each variant minus `reference` and the
    first two variants' difference, paired seed by seed."""
    print(title)
    values: dict[str, dict[str, dict[int, float]]] = {}
    for label, folders in runs.items():
        for seed, folder in sorted(folders.items()):
            for measure, value in decay_measures(folder, 0, last).items():
                values.setdefault(label, {}).setdefault(measure, {})[seed] = value
    measures = tuple(dict.fromkeys(("round 9", f"round {last}", f"mean 0-{last}")))
    for label in runs:
        for measure in measures:
            by_seed = values.get(label, {}).get(measure, {})
            if by_seed:
                print(f"  {label}, backdoor {measure} (%): {level_text(list(by_seed.values()))}; "
                      + ", ".join(f"seed {seed} {value:.1f}" for seed, value in by_seed.items()))
    labels = list(runs)
    pairs = [(label, reference) for label in labels if label != reference]
    others = [label for label in labels if label != reference]
    if len(others) >= 2:
        pairs.append((others[0], others[1]))
    for first, second in pairs:
        for measure in measures:
            a, b = values.get(first, {}).get(measure, {}), values.get(second, {}).get(measure, {})
            if set(a) & set(b):
                differences, text = paired(a, b)
                print(f"  {first} - {second}, backdoor {measure}: {text}; {seeds_text(differences)}")
    print()


def check_switch_replication() -> None:
    runs = finished_runs(RESULTS / "switch-replication", ("None", "LeadFL", "LeadFL alpha 0"))
    for label, seed0 in (("None", RESULTS / "table1-fmnist-authors" / "None"),
                         ("LeadFL", RESULTS / "table1-fmnist-authors" / "LeadFL"),
                         ("LeadFL alpha 0", RESULTS / "table1-fmnist-authors-switches" / "LeadFL-alpha-0")):
        runs[label] = {0: seed0, **runs[label]}
    print_decay_study("## switch-replication: the authors' setting, rounds 0-19 (seed 0: the 80-round runs' first 20 "
                      "rounds; its alpha 0 run has 10), finished runs only", runs, "None")


def check_crossover() -> None:
    folder = RESULTS / "crossover"
    for study, labels, reference, last in (("authors-20-steps", ("None", "LeadFL", "LeadFL alpha 0"), "None", 19),
                                           ("demo-380-steps", ("none", "original", "original alpha 0"), "none", 9)):
        print_decay_study(f"## crossover: docs/results/crossover/{study}/, finished runs only",
                          finished_runs(folder / study, labels), reference, last)


EFFECT_MEASURES = {"backdoor accuracy": lambda row: float(row["backdoor_accuracy"]),
                   "L2 attack effect": lambda row: float(row["attack_effect"]),
                   "margin gap (real - shadow)": lambda row: float(row["backdoor_margin"])
                   - float(row["shadow_backdoor_margin"]),
                   "effect along the backdoor gradient": lambda row: float(row["attack_effect_backdoor"])}


def print_effect_shares(runs: dict[str, dict[int, Path]], bursts: tuple[int, ...], later: int = 8) -> None:
    """Per variant and measure: its value at the end of each burst (round b) and the share left
    `later` rounds on (value at b + later over value at b), the bursts of a seed averaged first;
    mean ± 95% half-width over the seeds."""
    for variant, folders in runs.items():
        if not folders:
            print(f"  {variant}: no finished run")
            continue
        for name, value in EFFECT_MEASURES.items():
            shares, starts = {}, {}
            for seed, run in folders.items():
                rows = {int(row["round"]): row for row in rows_of(run)}
                pairs = [(value(rows[last]), value(rows[last + later])) for last in bursts if last + later in rows]
                shares[seed] = sum(after / before for before, after in pairs) / len(pairs)
                starts[seed] = sum(before for before, _ in pairs) / len(pairs)
            print(f"  {variant}, {name}: at the burst's end {level_text(list(starts.values()), 3)}; left {later} rounds "
                  f"later {level_text(list(shares.values()), 2)} (shares; "
                  + ", ".join(f"seed {seed} {share:.2f}" for seed, share in shares.items()) + ")")


def check_effect_measures() -> None:
    """The demo's bursts (rounds 0-1 and 10-11 of its periodic selection): the share of each
    measure left after the eight benign rounds that follow (round 9 / round 1, round 19 / round 11)."""
    folder = RESULTS / "attack-effect-measures"
    print("## effect-measures: docs/results/attack-effect-measures/, share of each measure left 8 benign rounds "
          "after a burst (value at round 9 / round 1 and round 19 / round 11), finished runs only")
    if not folder.is_dir():
        print("  no such folder: not run\n")
        return
    print_effect_shares(finished_runs(folder, ("none", "hessian", "original")), (1, 11))
    print()


def check_authors_measures() -> None:
    """The authors' setting's first 10 rounds (one burst, round 0; then 0-3 attackers a round,
    dropped or kept alike in the real run and its shadow): each measure per round, and the share
    left 8 rounds after the burst (round 8 / round 0)."""
    folder = RESULTS / "attack-effect-authors-measures"
    print("## authors-measures: docs/results/attack-effect-authors-measures/ (seed 0), each measure by round and "
          "the share left at round 8 of its round-0 value, finished runs only")
    if not folder.is_dir():
        print("  no such folder: not run\n")
        return
    runs = {label: {0: folder / label} for label in ("None", "LeadFL") if (folder / label / "summary.json").is_file()}
    for label, folders in runs.items():
        rows = rows_of(folders[0])
        kept = malicious_kept_by_round(folders[0], rows)
        print(f"  {label}: {kept_text(kept)}")
        for name, value in EFFECT_MEASURES.items():
            print(f"    {name}: " + ", ".join(f"{value(row):.3f}" for row in rows))
    print_effect_shares(runs, (0,))
    print()


# The late-burst LeadFL row first ran (to round 66) on an AMD EPYC model 1 at commit 10a293d; its
# checkpoint stayed with that machine, so the study was run again whole on a model 17.
EARLIER_LATE_BURST = "earlier-partial"


def check_late_burst() -> None:
    """The authors' setting with its bursts at rounds 0, 10 and 12, one more isolated burst at round
    60 and no attacker otherwise: each row's backdoor accuracy after every burst (rounds b to b + 9
    where run), the malicious uploads kept, and whether the run has finished."""
    folder = RESULTS / "late-burst"
    print("## late-burst: docs/results/late-burst/, backdoor accuracy (%) after each burst")
    if not folder.is_dir():
        print("  no such folder: not run\n")
        return
    # the two rows, then the earlier partial LeadFL row made on another CPU model
    for label in ("LeadFL", "None", f"{EARLIER_LATE_BURST}/LeadFL"):
        run = folder / label
        if not (run / "metrics.csv").is_file():
            print(f"  {label}: not started")
            continue
        rows = rows_of(run)
        state = "finished" if (run / "summary.json").is_file() else f"unfinished: {len(rows)} rounds so far"
        backdoor = {round_: value for round_, (value, _) in backdoor_by_round(run).items()}
        print(f"  {label} ({state}): {kept_text(malicious_kept_by_round(run, rows))}")
        for burst in (0, 12, 60):
            shown = [r for r in range(burst, burst + 12) if r in backdoor]
            if shown:
                print(f"    from round {burst}: " + ", ".join(f"{r}: {backdoor[r]:.1f}" for r in shown))
    print()


def check_table1_detection() -> None:
    folder = RESULTS / "table1-detection"
    print("## table1-detection: docs/results/table1-detection/, rounds with malicious clients")
    if not folder.is_dir():
        print("  no such folder: not run\n")
        return
    for run in sorted(path for path in folder.iterdir() if (path / "metrics.csv").is_file()):
        rows = rows_of(run)
        kept = malicious_kept_by_round(run, rows)
        state = "" if (run / "summary.json").is_file() else f" (unfinished: {len(rows)} rounds so far)"
        print(f"  {run.name}{state}: {kept_text(kept)}; last backdoor {float(rows[-1]['backdoor_accuracy']):.1f}%, "
              f"main {float(rows[-1]['main_accuracy']):.1f}%")
        ratios = []
        for row in rows:
            if not row["upload_distance_malicious"]:
                continue
            cells = {column: float(row[column]) for column in UPLOAD_STAT_COLUMNS}
            ratio = cells["upload_distance_malicious"] / cells["upload_distance_benign"]
            ratios.append(ratio)
            count, held = kept[int(row["round"])]
            print(f"    round {row['round']}: kept {held} of {count}; norm benign {cells['upload_norm_benign']:.3f} "
                  f"malicious {cells['upload_norm_malicious']:.3f}; distance to the benign centre benign "
                  f"{cells['upload_distance_benign']:.3f} malicious {cells['upload_distance_malicious']:.3f} "
                  f"(x{ratio:.2f}); cosine benign {cells['upload_cosine_benign']:.3f} malicious "
                  f"{cells['upload_cosine_malicious']:.3f}")
        if ratios:
            print(f"    distance ratio malicious / benign: {min(ratios):.2f}-{max(ratios):.2f}")
    print()


CHECKS = {"lr-x2": check_lr_x2, "drift-alpha": check_drift_alpha,
          "table1-original": check_table1_original, "r-share": check_r_share,
          "original-demo": check_original_demo, "curvature-alpha": check_curvature_alpha,
          "frontier-tables": check_frontier_tables, "table1-kept": check_table1_kept,
          "table1-hessian": check_table1_hessian, "switches-kept": check_switches_kept,
          "authors-bursts": check_authors_bursts, "demo-kept": check_demo_kept,
          "detection-followed": check_detection_followed, "switch-replication": check_switch_replication,
          "crossover": check_crossover, "effect-measures": check_effect_measures,
          "authors-measures": check_authors_measures, "late-burst": check_late_burst,
          "table1-detection": check_table1_detection}


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
