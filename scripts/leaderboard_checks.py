"""The figures of docs/findings/leaderboard.md, recomputed from the leaderboard sweep folder (no run).

    python scripts/leaderboard_checks.py [FOLDER]            # print (default: docs/results/leaderboard)
    python scripts/leaderboard_checks.py [FOLDER] --write    # also write FOLDER/analysis.md

From the folder's `results.csv` (a row per finished trial) and each trial's `metrics.csv` it prints:
  ranking    per attack, with no client defense: every server rule's figure (mean ± Student-t 95%
             half-width over the seeds), the best rule by mean, and the paired difference (seed by
             seed: one seed gives every rule the same initial model, data and selections) between
             the best and each other rule; the rules whose paired interval includes 0 are tied with
             the best. The figure is the average backdoor accuracy for the backdoor attacks (lower
             is better) and the final main accuracy for the others (higher is better; beside it the
             drop from the same rule and seed without an attack, at the end and after the last round
             with malicious clients, i.e. before the benign rounds that follow the last burst).
  leadfl     per backdoor attack and server rule: LeadFL (`original`) minus no client defense, and
             LeadFL with the attacker following it minus no client defense, paired by seed, for the
             average backdoor accuracy and the final main accuracy; the share of LeadFL's backdoor
             reduction that survives the following attacker where LeadFL's own interval lies below 0.
  kept       per backdoor attack and client setting: the malicious uploads the server rule kept, over
             all rounds and seeds (`malicious_ids`, `kept` of metrics.csv).
A combination without all seeds finished is shown with the seeds it has (n) and left out of the
verdicts.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sim.stats import mean_interval  # noqa: E402

DEFAULT = ROOT / "docs" / "results" / "leaderboard"
BACKDOOR_ATTACKS = ["backdoor", "dba", "neurotoxin", "model_replacement"]
UNTARGETED_ATTACKS = ["label_flip", "lie", "fang", "min_max", "ipm", "poisonedfl"]
SEEDS = 3


def read_rows(folder: Path) -> list[dict]:
    """results.csv's rows, plus `burst_main_accuracy`: the main accuracy after the last round in
    which malicious clients were selected (the end of the last burst), from the trial's metrics.csv
    (the attack-free trials have the same selections, seed by seed)."""
    with open(folder / "results.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    for row in rows:
        for key in ("final_main_accuracy", "mean_backdoor_accuracy", "final_backdoor_accuracy"):
            row[key] = float(row[key]) if row[key] != "" else None
        with open(folder / "trials" / row["trial"] / "metrics.csv", newline="") as stream:
            rounds = list(csv.DictReader(stream))
        bursts = [r for r in rounds if int(r["malicious_selected"]) > 0 and r["main_accuracy"] != ""]
        row["burst_main_accuracy"] = float(bursts[-1]["main_accuracy"]) if bursts else None
        malicious = [set(r["malicious_ids"].split()) for r in rounds]
        row["malicious_sent"] = sum(len(ids) for ids in malicious)
        row["malicious_kept"] = sum(len(ids & set(r["kept"].split())) for ids, r in zip(malicious, rounds))
    return rows


def figure(rows: list[dict], attack: str, rule: str, client: str, metric: str) -> dict[str, float]:
    """{seed: value} of one combination."""
    return {row["seed"]: row[metric] for row in rows
            if (row["attack"], row["server.aggregator"], row["client"]) == (attack, rule, client)
            and row[metric] is not None}


def text(values) -> str:
    values = list(values)
    if not values:
        return "n/a"
    estimate = mean_interval(values)
    if estimate.half_width is None:
        return f"{estimate.mean:.1f} (n=1)"
    return f"{estimate.mean:.1f} ± {estimate.half_width:.1f}" + ("" if len(values) == SEEDS else f" (n={len(values)})")


def paired(a: dict[str, float], b: dict[str, float]) -> list[float]:
    return [a[seed] - b[seed] for seed in sorted(set(a) & set(b))]


def separated(differences: list[float]) -> bool | None:
    """Whether the paired 95% interval excludes 0 (None: fewer than all seeds)."""
    if len(differences) < SEEDS:
        return None
    estimate = mean_interval(differences)
    if estimate.half_width is None:
        return None
    return estimate.low > 0 or estimate.high < 0


def rules_of(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(row["server.aggregator"] for row in rows))


def ranking(rows: list[dict]) -> list[str]:
    rules = rules_of(rows)
    lines = ["## Ranking of the server rules per attack (no client defense)", ""]
    for attack in ["none", *BACKDOOR_ATTACKS, *UNTARGETED_ATTACKS]:
        targeted = attack in BACKDOOR_ATTACKS
        metric = "mean_backdoor_accuracy" if targeted else "final_main_accuracy"
        values = {rule: figure(rows, attack, rule, "none", metric) for rule in rules}
        complete = {rule: v for rule, v in values.items() if len(v) == SEEDS}
        if not complete:
            lines += [f"### {attack}: no rule has all {SEEDS} seeds yet", ""]
            continue
        sign = 1.0 if targeted else -1.0  # lower backdoor is better; higher accuracy is better
        order = sorted(complete, key=lambda rule: sign * sum(complete[rule].values()) / SEEDS)
        best = order[0]
        if targeted:
            title, columns = "average backdoor accuracy (%), lower is better", ["backdoor avg", "main final"]
        elif attack == "none":
            title, columns = "final main accuracy (%) without an attack", ["main final"]
        else:
            title, columns = "final main accuracy (%), higher is better", [
                "main final", "drop from no attack", "drop at the last burst's end"]
        columns = ["rule", *columns, "paired vs best", "tied with best"]
        lines += [f"### {attack}: {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        tied, undecided = [], []
        for rule in order + [r for r in rules if r not in complete]:
            mine = values[rule]
            cells = [rule, text(mine.values())]
            if targeted:
                cells.append(text(figure(rows, attack, rule, "none", "final_main_accuracy").values()))
            elif attack != "none":
                cells.append(text(paired(figure(rows, "none", rule, "none", "final_main_accuracy"), mine)))
                cells.append(text(paired(figure(rows, "none", rule, "none", "burst_main_accuracy"),
                                         figure(rows, attack, rule, "none", "burst_main_accuracy"))))
            if rule == best:
                cells += ["(best)", ""]
            else:
                differences = paired(mine, values[best])
                verdict = separated(differences)
                cells += [text(differences), "n/a" if verdict is None else ("no" if verdict else "yes")]
                if verdict is False:
                    tied.append(rule)
                elif verdict is None:
                    undecided.append(rule)
            lines.append("| " + " | ".join(cells) + " |")
        verdict = f"best by mean: {best}" + (
            f", tied (paired 95% interval includes 0) with {', '.join(tied)}" if tied
            else "" if undecided else ", separated from every other rule")
        missing = [rule for rule in rules if rule not in complete]
        if missing:
            verdict += f"; not all seeds yet: {', '.join(missing)}"
        lines += ["", verdict + ".", ""]
    return lines


def leadfl(rows: list[dict]) -> list[str]:
    rules = rules_of(rows)
    lines = ["## What LeadFL adds, and what survives the following attacker (paired by seed)", "",
             "Differences in points: LeadFL (`original`, alpha 0.4, q 0.2) minus no client defense (`LeadFL`), "
             "and LeadFL with the attacker following it minus no client defense (`followed`). "
             "`surviving` = followed / LeadFL of the backdoor difference, where LeadFL lowers the backdoor (its interval below 0).", ""]
    for attack in BACKDOOR_ATTACKS:
        lines += [f"### {attack}", "",
                  "| rule | backdoor avg, none | LeadFL - none | followed - none | surviving | "
                  "main final, none | LeadFL - none (main) | followed - none (main) |",
                  "|---|---|---|---|---|---|---|---|"]
        verdicts = {"LeadFL": ([], []), "followed": ([], [])}
        for rule in rules:
            base = figure(rows, attack, rule, "none", "mean_backdoor_accuracy")
            lead = paired(figure(rows, attack, rule, "leadfl", "mean_backdoor_accuracy"), base)
            follow = paired(figure(rows, attack, rule, "leadfl_followed", "mean_backdoor_accuracy"), base)
            for name, differences in (("LeadFL", lead), ("followed", follow)):
                if separated(differences):
                    verdicts[name][0 if sum(differences) < 0 else 1].append(rule)
            share = ""
            if separated(lead) and sum(lead) < 0 and len(follow) == SEEDS:
                share = f"{100 * (sum(follow) / len(follow)) / (sum(lead) / len(lead)):.0f}%"
            main = figure(rows, attack, rule, "none", "final_main_accuracy")
            lines.append("| " + " | ".join([
                rule, text(base.values()), text(lead), text(follow), share, text(main.values()),
                text(paired(figure(rows, attack, rule, "leadfl", "final_main_accuracy"), main)),
                text(paired(figure(rows, attack, rule, "leadfl_followed", "final_main_accuracy"), main)),
            ]) + " |")
        lines.append("")
        for name, (lower, higher) in verdicts.items():
            lines.append(f"- {name}: average backdoor lower than with no client defense (paired interval below 0) "
                         f"under {', '.join(lower) or 'no rule'}; higher (above 0) under {', '.join(higher) or 'no rule'}.")
        lines.append("")
    return lines


def kept_counts(rows: list[dict]) -> list[str]:
    rules = rules_of(rows)
    clients = ["none", "leadfl", "leadfl_followed"]
    lines = ["## Malicious uploads kept by the server rule (all rounds, finished seeds)", "",
             "| attack | rule | " + " | ".join(clients) + " |", "|---|---|" + "---|" * len(clients)]
    for attack in BACKDOOR_ATTACKS:
        for rule in rules:
            cells = []
            for client in clients:
                chosen = [row for row in rows if (row["attack"], row["server.aggregator"], row["client"]) ==
                          (attack, rule, client)]
                sent = sum(row["malicious_sent"] for row in chosen)
                cells.append(f"{sum(row['malicious_kept'] for row in chosen)} of {sent}" if sent else "n/a")
            lines.append(f"| {attack} | {rule} | " + " | ".join(cells) + " |")
    return lines + [""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default=str(DEFAULT))
    parser.add_argument("--write", action="store_true", help="also write FOLDER/analysis.md")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    rows = read_rows(folder)
    body = "\n".join([
        f"# Leaderboard analysis ({len(rows)} finished trials)", "",
        "Made by `python scripts/leaderboard_checks.py --write` from `results.csv` and the trials' `metrics.csv`.",
        "", *ranking(rows), *leadfl(rows), *kept_counts(rows)])
    print(body)
    if args.write:
        (folder / "analysis.md").write_text(body + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
