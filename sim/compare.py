"""Several variants of one experiment side by side, in the shape of the LeadFL report's Table I.

Every variant is a full run in its own folder under the comparison folder. Selection depends only
on the seed and the round, so variants that differ in a defense or an aggregator face the same
clients, the same malicious rounds, and the same initial model.

With several seeds (`seeds=[0, 1, 2]`, `compare --seeds 0-2`, or `seeds:` in a preset) every
variant runs for every seed; the variants of one seed share their selections, so the difference
between two variants is taken seed by seed (a paired difference).

The runs execute in this process one after another (`jobs=1`), or as `jobs` concurrent
one-thread processes of `sim run` through `sim.jobs`; a run gives the same metrics either way.

Files written:
* `<variant>/...`       each run's own files (see `sim.runner`); with seeds, `seed<k>/<variant>/...`
* `table.md`            variants as rows; final main accuracy, average and final backdoor accuracy,
                        and, where the comparison holds a matching clean run, the main-accuracy loss;
                        with seeds, each cell is the mean and the half-width of its Student-t 95%
                        interval over the seeds, and the Δ columns the paired difference to the
                        first variant (mean and interval of the per-seed differences)
* `comparison.png`      backdoor and main accuracy per round, one curve per variant (with seeds: the
                        mean over the seeds and a band from their minimum to their maximum)
* `comparison.json`     the base settings, each variant's overrides, folder and summary (with seeds:
                        every seed's folder and summary, the estimates and the paired differences)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Union

import yaml

from sim.config import Config, apply_overrides, to_dict
from sim.data import check_data_files
from sim.engines.distributed import broadcast_object, init_from_env, is_main_process, launched_with_several_ranks
from sim import yaml_input
from sim.errors import ConfigError
from sim.io import CHECKPOINT_FILE, COMPARE_INPUT_FILE, METRICS_FILE, SUMMARY_FILE, check_names, check_within, inside, lock_folder, read_json_file, write_atomic
from sim.attacks.data.registry import description as attack_description
from sim.metrics import attack_metric_name
from sim.jobs import LocalBackend, Trial, TrialResult, run_trials
from sim.plots import plot_comparison, plot_comparison_bands
from sim.reporting import read_finished, read_metrics
from sim.resume import load_checkpoint, refuse_overwrite
from sim.runner import run
from sim.stats import count_of_seeds, mean_interval
from sim.tables import estimate_text, percent, table_head, table_row

TABLE_FILE = "table.md"
INPUT_FILE = COMPARE_INPUT_FILE  # the settings, variants and seeds, as a --config file
PLOT_FILE = "comparison.png"
JSON_FILE = "comparison.json"

# A variant setting: "a.b=value" as on the command line, or a (path, value) pair.
Override = Union[str, tuple[str, Any]]
# The summary figures a many-seed table averages, in its column order.
SEED_METRICS = (
    ("final_main_accuracy", "main accuracy, final (%)"),
    ("mean_backdoor_accuracy", "backdoor accuracy, average (%)"),
    ("final_backdoor_accuracy", "backdoor accuracy, final (%)"),
)
# With metrics.attack_effect, the figures of each run's summary "attack_effect" block that the
# many-seed table estimates too: (key, column title, decimals).
ATTACK_EFFECT_METRICS = (
    ("mean_decay_ratio", "‖δ_t‖ / ‖δ_t-1‖, mean over benign rounds", 3),
    ("mean_uniform_share", "uniform share of ‖δ‖², mean", 3),
    ("final_norm", "‖δ‖ final", 2),
)


class TrialsFailed(RuntimeError):
    """Some runs of a comparison ended with an error; the message names each and its log."""


def seed_folder(seed: int) -> str:
    return f"seed{seed}"


def folder_name(label: str) -> str:
    """A file-system friendly folder name for a variant label."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.")
    return name or "variant"


def _override_text(item: str | tuple[str, Any]) -> str:
    if isinstance(item, str):
        return item
    path, value = item
    return f"{path}={json.dumps(value) if not isinstance(value, str) else value}"


def table_markdown(
    summaries: dict[str, dict[str, Any]], caption: str = "", baselines: dict[str, str | None] | None = None,
    metric: str = "backdoor accuracy",
) -> str:
    """Markdown table: one row per variant, accuracies in percent.

    `baselines` maps a variant to its clean run (see `clean_baselines`); when any variant has one,
    a column gives the main-accuracy loss against it in percentage points."""
    baselines = {label: clean for label, clean in (baselines or {}).items() if clean in summaries}
    lines = []
    if caption:
        lines += [caption, ""]
    header = ["variant", "main accuracy, final (%)", f"{metric}, average (%)", f"{metric}, final (%)"]
    if baselines:
        header.append("main accuracy loss vs clean run (points)")
    lines += table_head(header)
    for label, summary in summaries.items():
        cells = [label, percent(summary["final_main_accuracy"]), percent(summary["mean_backdoor_accuracy"]),
                 percent(summary["final_backdoor_accuracy"])]
        if baselines:
            clean = baselines.get(label)
            loss = main_accuracy_loss(summary, summaries[clean]) if clean else None
            cells.append(f"{percent(loss)}{f' (vs {clean})' if clean else ''}")
        lines.append(table_row(cells))
    return "\n".join(lines) + "\n"


def is_clean(cfg: Config) -> bool:
    """No malicious behaviour at all: the malicious clients train and upload honestly."""
    return cfg.attack.type == "none" and cfg.model_poisoning.type == "none"


def _without_attacks(cfg: Config) -> dict[str, Any]:
    settings = to_dict(cfg)
    settings.pop("attack")
    settings.pop("model_poisoning")
    return settings


def clean_baselines(configs: dict[str, Config]) -> dict[str, str | None]:
    """For every attacked variant, the first clean variant whose settings equal its own apart from
    the `attack` and `model_poisoning` sections (the same selections, defenses and DP), or None."""
    clean = [(label, _without_attacks(cfg)) for label, cfg in configs.items() if is_clean(cfg)]
    baselines: dict[str, str | None] = {}
    for label, cfg in configs.items():
        if is_clean(cfg):
            continue
        settings = _without_attacks(cfg)
        baselines[label] = next((name for name, other in clean if other == settings), None)
    return baselines


def main_accuracy_loss(summary: dict[str, Any], clean_summary: dict[str, Any]) -> float | None:
    """Final main accuracy of the clean run minus that of the attacked run, in points."""
    attacked, clean = summary.get("final_main_accuracy"), clean_summary.get("final_main_accuracy")
    if attacked is None or clean is None:
        return None
    return clean - attacked


def seeds_text(seeds: list[int]) -> str:
    """`0-4` for consecutive seeds, else `0, 2, 5`."""
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(str(seed) for seed in seeds)


def caption_for(cfg: Config, seeds: list[int] | None = None) -> str:
    """What every variant shares, in one sentence above the table."""
    attack = attack_description(cfg.attack.type)
    if cfg.model_poisoning.type != "none":
        attack = f"model poisoning {cfg.model_poisoning.type}" + (f" with {attack}" if cfg.attack.type != "none" else "")
    if cfg.privacy.type != "none":
        attack += f", client-level DP (epsilon {cfg.privacy.epsilon:g}, clip {cfg.privacy.clip:g})"
    return (
        f"{attack} on {cfg.data.dataset} ({cfg.data.partition}), model {cfg.model}, server aggregator "
        f"{cfg.server.aggregator}, {cfg.selection.schedule} selection of {cfg.clients.clients_per_round} "
        f"of {cfg.clients.num_clients} clients ({cfg.clients.num_malicious} malicious), {cfg.rounds} rounds, "
        + (f"seed {cfg.seed}." if seeds is None else f"{count_of_seeds(len(seeds))} ({seeds_text(seeds)}).")
    )


def variant_configs(cfg: Config, variants: dict[str, Iterable[Override]]) -> dict[str, Config]:
    """Each variant's validated config; all are checked before any run starts."""
    if not variants:
        raise ConfigError(
            "no variants to compare; fix: use a preset with a compare: section "
            "(e.g. --preset table1-fmnist) or add one to your --config file"
        )
    configs = {}
    folders: dict[str, str] = {}
    for label, overrides in variants.items():
        folder = folder_name(label)
        if folder in folders:
            raise ConfigError(
                f"compare variants '{folders[folder]}' and '{label}' would share the folder '{folder}'; "
                "fix: rename one of them"
            )
        folders[folder] = label
        configs[label] = apply_overrides(cfg, list(overrides), source=f"compare variant '{label}'")
    return configs


def _resume_plan(run_dir: Path, cfg: Config) -> tuple[bool, dict | None]:
    """(continue from the checkpoint?, the summary of a finished run to read back) for `--resume`.
    A finished run is read back (its files checked, never rewritten); a stopped one is checked
    against its checkpoint's settings and metrics here, before any run starts (the machine facts
    are checked when it continues)."""
    if (run_dir / CHECKPOINT_FILE).is_file():
        checkpoint = load_checkpoint(run_dir, cfg)
        if checkpoint["next_round"] == cfg.rounds:
            finished = read_finished(run_dir, cfg)
            if finished is not None:
                return False, finished
        return True, None
    finished = read_finished(run_dir, cfg)
    if finished is None and (run_dir / METRICS_FILE).exists():
        raise ConfigError(
            f"cannot resume {run_dir}: it holds a run but no {CHECKPOINT_FILE} to continue it from "
            "(a finished run is read back only at its own number of rounds); "
            "fix: restore its checkpoint, or remove that folder to train the variant again"
        )
    return False, finished


@dataclass
class _Run:
    """One run of the comparison: a variant at a seed (seed None: the base config's own seed)."""

    label: str
    seed: int | None
    cfg: Config
    folder: str  # relative to the comparison folder


def override_pair(item: Override) -> tuple[str, Any]:
    """(path, value) of one override: a `path=value` string (value parsed as YAML) or a pair."""
    if isinstance(item, str):
        path, _, text = item.partition("=")
        return path.strip(), yaml_input.load(text, f"the override {item!r}")
    return item


def input_yaml(cfg: Config, variants: dict[str, list[Override]], seeds: list[int] | None) -> str:
    """A `--config` file that reproduces this comparison: the base settings, the `compare:`
    section and, for several seeds, `seeds:`."""
    document: dict[str, Any] = to_dict(cfg)
    document["compare"] = {label: dict(override_pair(item) for item in overrides) for label, overrides in variants.items()}
    if seeds is not None:
        document["seeds"] = list(seeds)
    return yaml.safe_dump(document, sort_keys=False)


def _plan(configs: dict[str, Config], seeds: list[int] | None) -> list[_Run]:
    """Every run, seed by seed (a stopped comparison has whole seeds done)."""
    if seeds is None:
        return [_Run(label, None, cfg, folder_name(label)) for label, cfg in configs.items()]
    return [
        _Run(label, seed, apply_overrides(cfg, [("seed", seed)], source=f"compare variant '{label}', seed {seed}"),
             f"{seed_folder(seed)}/{folder_name(label)}")
        for seed in seeds
        for label, cfg in configs.items()
    ]


def _labelled(summary: dict[str, Any], label: str) -> dict[str, Any]:
    return {"label": label, **{key: value for key, value in summary.items() if key != "label"}}


def compare(
    cfg: Config,
    variants: dict[str, Iterable[Override]],
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    echo=print,
    allow_machine_change: bool = False,
    *,
    seeds: list[int] | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run every variant (for every seed in `seeds`) under `out_dir`, then write and print the
    table; returns comparison.json's content.

    `jobs` > 1 runs up to that many runs at once as one-thread processes (`sim.jobs`). With
    `resume`, finished runs are read back, a stopped one continues from its checkpoint, and the
    rest start fresh.
    """
    variants = {label: list(overrides) for label, overrides in variants.items()}
    configs = variant_configs(cfg, variants)
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs} must be at least 1; fix: --jobs 1")
    if jobs > 1 and launched_with_several_ranks():
        raise ConfigError(
            f"--jobs {jobs} starts runs as separate processes, but this comparison runs under torchrun, where "
            "every rank trains its share of one run at a time; fix: drop --jobs (or --jobs 1) under torchrun"
        )
    runs = _plan(configs, seeds)
    out_dir = Path(out_dir)
    for item in runs:
        check_names(out_dir / item.folder)
    init_from_env(cfg.device)  # under torchrun: join the process group before the ranks decide anything
    writer = is_main_process()  # only rank 0 writes (sim.engines.distributed)
    for variant_cfg in configs.values():  # before the comparison folder is made
        check_data_files(variant_cfg.data.dataset, variant_cfg.data.data_dir)
    lock = lock_folder(out_dir, "comparison") if writer else None  # one writer per comparison folder
    try:
        return _compare_locked(cfg, variants, configs, runs, out_dir, resume, progress, echo, allow_machine_change,
                               seeds, jobs, writer)
    finally:
        if lock is not None:
            lock.release()


def _compare_locked(cfg, variants, configs, runs, out_dir, resume, progress, echo, allow_machine_change, seeds, jobs,
                    writer) -> dict[str, Any]:
    summaries: dict[tuple[str, int | None], dict] = {}
    todo: list[tuple[_Run, bool]] = []  # (run, continue from its checkpoint?)
    if writer:
        check_within(out_dir, [item.folder for item in runs])
    for item in runs:
        run_dir = out_dir / item.folder
        # Decided on rank 0 alone (the folder may exist only there) and shared with every rank.
        plan = (False, None)
        if writer:
            if resume:
                plan = _resume_plan(run_dir, item.cfg)
            else:
                refuse_overwrite(run_dir)  # before any run starts, not after the first ones
        continue_run, finished = broadcast_object(plan)
        if finished is not None:
            summaries[item.label, item.seed] = _labelled(finished, item.label)
        else:
            todo.append((item, continue_run))
    if writer:
        # What this comparison is, so `compare --out DIR --resume` can continue it from DIR alone;
        # written once every check has passed, so a refused call leaves the folder as it was.
        write_atomic(out_dir / INPUT_FILE, input_yaml(cfg, variants, seeds))

    if min(jobs, len(todo)) > 1:
        summaries.update(_run_processes(out_dir, todo, jobs, echo))
    else:
        for item, continue_run in todo:
            label = item.label if item.seed is None else f"{item.label} (seed {item.seed})"
            summary = run(item.cfg, out_dir / item.folder, resume=continue_run, progress=progress, label=label,
                          allow_machine_change=allow_machine_change)
            summaries[item.label, item.seed] = _labelled(summary, item.label)

    comparison = (_single_seed_record if seeds is None else _many_seed_record)(cfg, configs, variants, summaries, seeds)
    if writer:
        write_outputs(out_dir, comparison)
    echo(comparison_table(comparison))
    return comparison


def _run_processes(out_dir: Path, todo: list[tuple[_Run, bool]], jobs: int, echo) -> dict:
    """The runs as `sim.jobs` trials on `jobs` local one-thread processes; their summaries."""
    trials = [Trial(item.folder, to_dict(item.cfg), out_dir / item.folder, resume=continue_run)
              for item, continue_run in todo]
    by_name = {item.folder: item for item, _ in todo}
    backend = LocalBackend(jobs)
    echo(f"compare: {len(trials)} runs on {backend.describe()}")
    summaries, failed = {}, []

    def on_done(trial: Trial, result: TrialResult) -> None:
        item = by_name[trial.name]
        done = len(summaries) + len(failed) + 1
        if result.ok:
            summary = json.loads((trial.out_dir / SUMMARY_FILE).read_text())
            summaries[item.label, item.seed] = _labelled(summary, item.label)
            echo(f"[{done}/{len(trials)}] {trial.name}: main {percent(summary['final_main_accuracy'], '%')}, "
                 f"backdoor (avg) {percent(summary['mean_backdoor_accuracy'], '%')}, {result.elapsed_s:.0f} s")
        else:
            failed.append(f"{trial.name} (exit {result.returncode}: {result.log_tail}; see {trial.out_dir / 'log.txt'})")
            echo(f"[{done}/{len(trials)}] {trial.name} FAILED: {failed[-1]}")

    run_trials(trials, backend, on_done)
    if failed:
        raise TrialsFailed(
            f"{len(failed)} of {len(trials)} runs failed: " + "; ".join(failed)
            + "; fix: see the logs, then run the same command with --resume to finish the rest"
        )
    return summaries


def _baseline_fields(label: str, baselines: dict[str, str | None], loss: Any) -> dict[str, Any]:
    if label not in baselines:
        return {}
    return {"clean_baseline": baselines[label], "main_accuracy_loss": loss if baselines[label] else None}


def _single_seed_record(cfg, configs, variants, summaries, seeds) -> dict[str, Any]:
    baselines = clean_baselines(configs)
    by_label = {label: summaries[label, None] for label in configs}
    return {
        "caption": caption_for(cfg),
        "base_config": to_dict(cfg),
        "variants": {
            label: {
                "overrides": [_override_text(item) for item in variants[label]],
                "folder": folder_name(label),
                "summary": by_label[label],
                **_baseline_fields(
                    label, baselines,
                    baselines.get(label) and main_accuracy_loss(by_label[label], by_label[baselines[label]]),
                ),
            }
            for label in configs
        },
    }


def _estimate_record(values: dict[int, float | None]) -> dict[str, Any] | None:
    """Mean and Student-t 95% interval of the seeds' values (None values left out), with the values."""
    present = [value for value in values.values() if value is not None]
    if not present:
        return None
    estimate = mean_interval(present)
    return {"mean": estimate.mean, "half_width": estimate.half_width, "low": estimate.low, "high": estimate.high,
            "n": estimate.n, "values": {str(seed): value for seed, value in values.items()}}


def _paired(values: dict[int, float | None], reference: dict[int, float | None]) -> dict[int, float | None]:
    return {seed: None if value is None or reference.get(seed) is None else value - reference[seed]
            for seed, value in values.items()}


def _many_seed_record(cfg, configs, variants, summaries, seeds) -> dict[str, Any]:
    baselines = clean_baselines(configs)
    labels = list(configs)
    first = labels[0]

    def values(label: str, metric: str, block: str | None = None) -> dict[int, float | None]:
        """Each seed's `metric` of the label's summary, or of its `block` sub-dict (None: absent)."""
        return {seed: ((summaries[label, seed].get(block) or {}) if block else summaries[label, seed]).get(metric)
                for seed in seeds}

    def estimates(label: str, metrics, block: str | None = None) -> tuple[dict, dict | None]:
        """Per metric, the label's estimate over seeds and (after the first label) its paired
        difference to the first label's."""
        own = {metric: _estimate_record(values(label, metric, block)) for metric in metrics}
        if label == first:
            return own, None
        return own, {metric: _estimate_record(_paired(values(label, metric, block), values(first, metric, block)))
                     for metric in metrics}

    with_effect = any(summary.get("attack_effect") for summary in summaries.values())

    entries = {}
    for label in labels:
        entry: dict[str, Any] = {
            "overrides": [_override_text(item) for item in variants[label]],
            "folder": folder_name(label),
            "runs": {str(seed): {"folder": f"{seed_folder(seed)}/{folder_name(label)}",
                                 "summary": summaries[label, seed]} for seed in seeds},
        }
        entry["estimates"], differences = estimates(label, [metric for metric, _ in SEED_METRICS])
        if differences is not None:
            entry["difference_to"] = first
            entry["differences"] = differences
        if with_effect:
            entry["attack_effect"], differences = estimates(
                label, [metric for metric, _, _ in ATTACK_EFFECT_METRICS], "attack_effect")
            if differences is not None:
                entry["attack_effect_differences"] = differences
        clean = baselines.get(label)
        losses = None
        if clean:
            losses = _estimate_record({seed: main_accuracy_loss(summaries[label, seed], summaries[clean, seed])
                                       for seed in seeds})
        entry.update(_baseline_fields(label, baselines, losses))
        entries[label] = entry
    return {"caption": caption_for(cfg, seeds), "base_config": to_dict(cfg), "seeds": list(seeds), "variants": entries}


def _attack_effect_table(entries: dict[str, Any], seeds: int) -> list[str]:
    """The attack effect's figures over the `seeds` seeds (runs with metrics.attack_effect), as
    table rows; a figure that fewer seeds have (a run without benign rounds has no decay ratio)
    names its n."""

    def text(record, signed=False, digits=1):
        out = estimate_text(record, signed, digits)
        return out if record is None or record["n"] == seeds else f"{out} (n {record['n']})"

    labels = list(entries)
    header = ["variant"]
    for _, title, _ in ATTACK_EFFECT_METRICS:
        header += [title, "Δ"]
    lines = ["", f"Attack effect (`metrics.attack_effect`, docs/algorithms.md §6), over the same seeds; Δ: the "
             f"difference to {labels[0]}, seed by seed.", "", *table_head(header)]
    for label, entry in entries.items():
        cells = [label]
        for metric, _, digits in ATTACK_EFFECT_METRICS:
            difference = entry.get("attack_effect_differences", {}).get(metric)
            cells += [text(entry["attack_effect"][metric], digits=digits),
                      "" if label == labels[0] else text(difference, True, digits)]
        lines.append(table_row(cells))
    return lines


def seeds_table_markdown(comparison: dict[str, Any]) -> str:
    """The many-seed table: per variant, each figure's mean ± 95% half-width over the seeds and,
    after the first variant, the paired difference to it."""
    entries = comparison["variants"]
    labels = list(entries)
    seeds = comparison["seeds"]
    with_loss = any(entry.get("clean_baseline") for entry in entries.values())
    lines = [
        comparison.get("caption", ""),
        "",
        f"Mean ± half-width of the Student-t 95% interval over the {count_of_seeds(len(seeds))} (n: seeds with a value); "
        f"Δ: the difference to {labels[0]}, seed by seed (same selections), its mean ± 95% half-width.",
        "",
    ]
    header = ["variant", "n"]
    for _, title in SEED_METRICS:
        header += [title.replace("backdoor accuracy", _metric(comparison)), "Δ"]
    if with_loss:
        header.append("main accuracy loss vs clean run (points)")
    lines += table_head(header)
    for label, entry in entries.items():
        estimates = entry["estimates"]
        n = max((record["n"] for record in estimates.values() if record), default=0)
        cells = [label, str(n)]
        for metric, _ in SEED_METRICS:
            difference = entry.get("differences", {}).get(metric)
            cells += [estimate_text(estimates[metric]), "" if label == labels[0] else estimate_text(difference, True)]
        if with_loss:
            clean = entry.get("clean_baseline")
            cells.append(f"{estimate_text(entry.get('main_accuracy_loss'))} (vs {clean})" if clean else "n/a")
        lines.append(table_row(cells))
    if any("attack_effect" in entry for entry in entries.values()):
        lines += _attack_effect_table(entries, len(seeds))
    return "\n".join(lines) + "\n"


def comparison_table(comparison: dict[str, Any]) -> str:
    """table.md's text for a comparison record, of one seed or several."""
    if "seeds" in comparison:
        return seeds_table_markdown(comparison)
    summaries = {label: entry["summary"] for label, entry in comparison["variants"].items()}
    baselines = {label: entry.get("clean_baseline") for label, entry in comparison["variants"].items()}
    return table_markdown(summaries, comparison["caption"], baselines, _metric(comparison))


def write_outputs(out_dir: Path, comparison: dict[str, Any]) -> None:
    """table.md, comparison.png and comparison.json from the variants' summaries and metrics."""
    write_atomic(out_dir / TABLE_FILE, comparison_table(comparison))
    write_atomic(out_dir / JSON_FILE, json.dumps(comparison, indent=2) + "\n")
    replot(out_dir, comparison)


def replot(out_dir: str | Path, comparison: dict[str, Any] | None = None) -> Path:
    """Draw comparison.png again from the runs' metrics.csv files."""
    out_dir = Path(out_dir)
    if comparison is None:
        comparison = read_comparison(out_dir)
    title = comparison.get("caption", "")
    if "seeds" in comparison:
        runs = {
            label: {int(seed): read_metrics(out_dir / run["folder"]) for seed, run in entry["runs"].items()}
            for label, entry in comparison["variants"].items()
        }
        return plot_comparison_bands(runs, out_dir / PLOT_FILE, title=title, metric=_metric(comparison))
    runs = {label: read_metrics(out_dir / entry["folder"]) for label, entry in comparison["variants"].items()}
    return plot_comparison(runs, out_dir / PLOT_FILE, title=title, metric=_metric(comparison))


def _metric(comparison: dict[str, Any]) -> str:
    """The name of the backdoor_accuracy score under the comparison's attack (sim.metrics)."""
    return attack_metric_name(comparison.get("base_config", {}).get("attack", {}).get("type", "backdoor"))


def read_comparison(out_dir: str | Path) -> dict[str, Any]:
    """comparison.json of `out_dir`, checked: every run folder it names lies inside `out_dir`."""
    path = Path(out_dir) / JSON_FILE
    if not path.is_file():
        raise ConfigError(f"no {JSON_FILE} in {out_dir}; fix: point at the folder of a comparison")
    comparison = read_json_file(path, "a comparison record", "restore it from a copy, or run compare --resume again")
    variants = comparison.get("variants") if isinstance(comparison, dict) else None
    if not isinstance(variants, dict) or not all(isinstance(entry, dict) for entry in variants.values()):
        raise ConfigError(f"{path} holds no variants; fix: restore it from a copy, or run compare --resume again")
    for entry in variants.values():
        runs = entry.get("runs")
        for run_entry in (runs.values() if isinstance(runs, dict) else [entry]):
            inside(out_dir, run_entry.get("folder") if isinstance(run_entry, dict) else None, str(path))
    return comparison
