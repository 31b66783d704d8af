"""A frontier over one setting of a many-seed comparison: what a defense costs against what it buys.

The variants of a comparison that set `key` (for instance `client_defense.alpha`) are grouped into
families by their other overrides (`hessian`, `drift`, ...); every variant becomes one point:

    x = the main-accuracy cost: the baseline's final main accuracy minus the variant's, seed by
        seed (same selections), as a mean and a Student-t 95% interval over the paired seeds;
    y = the variant's mean backdoor accuracy over rounds, mean and 95% interval over its seeds.

The baseline is a variant that does not set `key` (default: the comparison's first variant, the
reference of its Δ columns). `frontier.md` lists the points and `frontier.png` draws one line per
family in the order of `key`'s value.

    leadfl-sim plot runs/alpha-frontier --frontier client_defense.alpha [--baseline none]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.compare import override_pair
from sim.errors import ConfigError
from sim.io import write_atomic
from sim.metrics import attack_metric_name
from sim.plots import plot_frontier
from sim.stats import Estimate, mean_interval

FRONTIER_TABLE = "frontier.md"
FRONTIER_PLOT = "frontier.png"


@dataclass(frozen=True)
class FrontierPoint:
    family: str
    value: Any  # the variant's value of the frontier's key
    label: str  # the variant's label in the comparison
    cost: Estimate  # baseline's final main accuracy minus the variant's, paired over seeds
    mean_backdoor: Estimate
    final_backdoor: Estimate


def _overrides(entry: dict[str, Any]) -> dict[str, Any]:
    return dict(override_pair(item) for item in entry.get("overrides", []))


def _per_seed(entry: dict[str, Any], name: str) -> dict[str, float]:
    return {seed: run["summary"][name] for seed, run in entry["runs"].items()
            if run["summary"].get(name) is not None}


def frontier_points(comparison: dict[str, Any], key: str, baseline: str | None = None
                    ) -> tuple[str, Estimate, list[FrontierPoint]]:
    """(the baseline's label, its mean backdoor accuracy, the points) of comparison.json's content."""
    variants = comparison.get("variants", {})
    if "seeds" not in comparison:
        raise ConfigError("a frontier needs a comparison over several seeds (compare --seeds ...); "
                          "fix: rerun the comparison with --seeds 0-4")
    settings = {label: _overrides(entry) for label, entry in variants.items()}
    members = [label for label, pairs in settings.items() if key in pairs]
    if not members:
        keys = sorted({path for pairs in settings.values() for path in pairs})
        raise ConfigError(f"no variant of this comparison sets {key!r}; the variants set: {', '.join(keys)}; "
                          "fix: pass one of those to --frontier")
    if baseline is None:
        baseline = next(iter(variants))
    if baseline not in variants:
        raise ConfigError(f"--baseline {baseline!r} is not a variant of this comparison; allowed: "
                          f"{', '.join(variants)}; fix: pass one of those labels")
    if key in settings[baseline]:
        raise ConfigError(f"the baseline {baseline!r} sets {key!r} itself, so it lies on the frontier; fix: pass "
                          "--baseline with a variant that does not set it (e.g. no defense)")
    # The other overrides that tell the families apart name them ("hessian", "drift", ...).
    others = {label: {path: value for path, value in settings[label].items() if path != key} for label in members}
    varying = sorted({path for label in members for path in others[label]
                      if len({repr(others[m].get(path)) for m in members}) > 1})
    base_main = _per_seed(variants[baseline], "final_main_accuracy")
    points = []
    for label in members:
        entry = variants[label]
        main = _per_seed(entry, "final_main_accuracy")
        paired = [base_main[seed] - main[seed] for seed in main if seed in base_main]
        if not paired:
            raise ConfigError(f"variant {label!r} and the baseline {baseline!r} share no seed; "
                              "fix: run both on the same --seeds")
        family = ", ".join(str(others[label].get(path)) for path in varying) or key
        points.append(FrontierPoint(family, settings[label][key], label, mean_interval(paired),
                                    mean_interval(_per_seed(entry, "mean_backdoor_accuracy").values()),
                                    mean_interval(_per_seed(entry, "final_backdoor_accuracy").values())))
    points.sort(key=lambda p: (p.family, p.value))
    return baseline, mean_interval(_per_seed(variants[baseline], "mean_backdoor_accuracy").values()), points


def _cell(estimate: Estimate) -> str:
    if estimate.half_width is None:
        return f"{estimate.mean:.1f}"
    return f"{estimate.mean:.1f} ± {estimate.half_width:.1f}"


def frontier_table(key: str, baseline: str, baseline_backdoor: Estimate, points: list[FrontierPoint],
                   metric: str = "backdoor accuracy") -> str:
    lines = [
        f"Frontier over `{key}`: main-accuracy cost = {baseline}'s final main accuracy minus the variant's, "
        "seed by seed; mean ± half-width of the Student-t 95% interval over the seeds (n).",
        "",
        f"| family | {key} | n | main-accuracy cost (points) | {metric}, average (%) | {metric}, final (%) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| {baseline} (baseline) | | {baseline_backdoor.n} | 0 | {_cell(baseline_backdoor)} | |",
    ]
    lines += [f"| {p.family} | {p.value} | {p.cost.n} | {_cell(p.cost)} | {_cell(p.mean_backdoor)} | "
              f"{_cell(p.final_backdoor)} |" for p in points]
    return "\n".join(lines) + "\n"


def write_frontier(out_dir: str | Path, comparison: dict[str, Any], key: str, baseline: str | None = None
                   ) -> list[Path]:
    """frontier.md and frontier.png in `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    metric = attack_metric_name(comparison.get("base_config", {}).get("attack", {}).get("type", "backdoor"))
    baseline, baseline_backdoor, points = frontier_points(comparison, key, baseline)
    table = frontier_table(key, baseline, baseline_backdoor, points, metric)
    write_atomic(out_dir / FRONTIER_TABLE, table)
    families: dict[str, list[FrontierPoint]] = {}
    for point in points:
        families.setdefault(point.family, []).append(point)
    plot = plot_frontier(
        {family: [(p.value, p.cost.mean, p.cost.half_width, p.mean_backdoor.mean, p.mean_backdoor.half_width)
                  for p in members] for family, members in families.items()},
        (baseline, baseline_backdoor.mean, baseline_backdoor.half_width),
        out_dir / FRONTIER_PLOT, key=key, metric=metric, title=comparison.get("caption", ""))
    return [out_dir / FRONTIER_TABLE, plot]
