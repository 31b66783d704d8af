"""Several variants of one experiment side by side, in the shape of the LeadFL report's Table I.

Every variant is a full run in its own folder under the comparison folder. Selection depends only
on the seed and the round, so variants that differ in a defense or an aggregator face the same
clients, the same malicious rounds, and the same initial model.

Files written:
* `<variant>/...`       each run's own files (see `sim.runner`)
* `table.md`            variants as rows; final main accuracy, average and final backdoor accuracy,
                        and, where the comparison holds a matching clean run, the main-accuracy loss
* `comparison.png`      backdoor and main accuracy per round, one curve per variant
* `comparison.json`     the base settings, each variant's overrides, folder and summary
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Union

from sim.config import Config, apply_overrides, to_dict
from sim.data import check_data_files
from sim.engines.distributed import broadcast_object, init_from_env, is_main_process
from sim.errors import ConfigError
from sim.io import CHECKPOINT_FILE, METRICS_FILE, write_atomic
from sim.metrics import attack_metric_name
from sim.plots import plot_comparison
from sim.reporting import read_metrics
from sim.resume import finished_summary
from sim.runner import run

TABLE_FILE = "table.md"
PLOT_FILE = "comparison.png"
JSON_FILE = "comparison.json"

# A variant setting: "a.b=value" as on the command line, or a (path, value) pair.
Override = Union[str, tuple[str, Any]]


def folder_name(label: str) -> str:
    """A file-system friendly folder name for a variant label."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.")
    return name or "variant"


def _override_text(item: str | tuple[str, Any]) -> str:
    if isinstance(item, str):
        return item
    path, value = item
    return f"{path}={json.dumps(value) if not isinstance(value, str) else value}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


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
    header = f"| variant | main accuracy, final (%) | {metric}, average (%) | {metric}, final (%) |"
    rule = "| --- | ---: | ---: | ---: |"
    if baselines:
        header += " main accuracy loss vs clean run (points) |"
        rule += " ---: |"
    lines += [header, rule]
    for label, summary in summaries.items():
        line = (
            f"| {label} | {_percent(summary['final_main_accuracy'])} | "
            f"{_percent(summary['mean_backdoor_accuracy'])} | {_percent(summary['final_backdoor_accuracy'])} |"
        )
        if baselines:
            clean = baselines.get(label)
            loss = main_accuracy_loss(summary, summaries[clean]) if clean else None
            line += f" {_percent(loss)}{f' (vs {clean})' if clean else ''} |"
        lines.append(line)
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


def caption_for(cfg: Config) -> str:
    """What every variant shares, in one sentence above the table."""
    attack = {"backdoor": "9-pixel backdoor", "label_flip": "label flipping", "none": "no attack"}[cfg.attack.type]
    if cfg.model_poisoning.type != "none":
        attack = f"model poisoning {cfg.model_poisoning.type}" + (f" with {attack}" if cfg.attack.type != "none" else "")
    if cfg.privacy.type != "none":
        attack += f", client-level DP (epsilon {cfg.privacy.epsilon:g}, clip {cfg.privacy.clip:g})"
    return (
        f"{attack} on {cfg.data.dataset} ({cfg.data.partition}), model {cfg.model}, server aggregator "
        f"{cfg.server.aggregator}, {cfg.selection.schedule} selection of {cfg.clients.clients_per_round} "
        f"of {cfg.clients.num_clients} clients ({cfg.clients.num_malicious} malicious), {cfg.rounds} rounds, "
        f"seed {cfg.seed}."
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
    A finished variant whose checkpoint was deleted is read back, not trained again."""
    if (run_dir / CHECKPOINT_FILE).is_file():
        return True, None
    finished = finished_summary(run_dir, cfg)
    if finished is None and (run_dir / METRICS_FILE).exists():
        raise ConfigError(
            f"cannot resume {run_dir}: it holds a run but no {CHECKPOINT_FILE} to continue it from "
            "(a finished run is read back only at its own number of rounds); "
            "fix: restore its checkpoint, or remove that folder to train the variant again"
        )
    return False, finished


def compare(
    cfg: Config,
    variants: dict[str, Iterable[Override]],
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    echo=print,
    allow_machine_change: bool = False,
) -> dict[str, Any]:
    """Run every variant under `out_dir`, then write and print the table; returns comparison.json's content.

    With `resume`, finished variants are read back, a stopped one continues from its checkpoint,
    and the rest start fresh.
    """
    variants = {label: list(overrides) for label, overrides in variants.items()}
    configs = variant_configs(cfg, variants)
    out_dir = Path(out_dir)
    init_from_env(cfg.device)  # under torchrun: join the process group before the ranks decide anything
    writer = is_main_process()  # only rank 0 writes (sim.engines.distributed)
    for variant_cfg in configs.values():  # before the comparison folder is made
        check_data_files(variant_cfg.data.dataset, variant_cfg.data.data_dir)
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)

    summaries = {}
    for label, variant_cfg in configs.items():
        run_dir = out_dir / folder_name(label)
        # Decided on rank 0 alone (the folder may exist only there) and shared with every rank.
        plan = _resume_plan(run_dir, variant_cfg) if resume and writer else (False, None)
        continue_run, finished = broadcast_object(plan)
        if finished is not None:
            summaries[label] = finished
            continue
        summaries[label] = run(variant_cfg, run_dir, resume=continue_run, progress=progress, label=label,
                               allow_machine_change=allow_machine_change)

    baselines = clean_baselines(configs)
    comparison = {
        "caption": caption_for(cfg),
        "base_config": to_dict(cfg),
        "variants": {
            label: {
                "overrides": [_override_text(item) for item in variants[label]],
                "folder": folder_name(label),
                "summary": summaries[label],
                **(
                    {
                        "clean_baseline": baselines[label],
                        "main_accuracy_loss": main_accuracy_loss(summaries[label], summaries[baselines[label]])
                        if baselines[label]
                        else None,
                    }
                    if label in baselines
                    else {}
                ),
            }
            for label in configs
        },
    }
    if writer:
        write_outputs(out_dir, comparison)
    echo(table_markdown(summaries, comparison["caption"], baselines, _metric(comparison)))
    return comparison


def write_outputs(out_dir: Path, comparison: dict[str, Any]) -> None:
    """table.md, comparison.png and comparison.json from the variants' summaries and metrics."""
    summaries = {label: entry["summary"] for label, entry in comparison["variants"].items()}
    baselines = {label: entry.get("clean_baseline") for label, entry in comparison["variants"].items()}
    write_atomic(out_dir / TABLE_FILE, table_markdown(summaries, comparison["caption"], baselines, _metric(comparison)))
    write_atomic(out_dir / JSON_FILE, json.dumps(comparison, indent=2) + "\n")
    replot(out_dir, comparison)


def replot(out_dir: str | Path, comparison: dict[str, Any] | None = None) -> Path:
    """Draw comparison.png again from the variants' metrics.csv files."""
    out_dir = Path(out_dir)
    if comparison is None:
        comparison = read_comparison(out_dir)
    runs = {
        label: read_metrics(out_dir / entry["folder"]) for label, entry in comparison["variants"].items()
    }
    return plot_comparison(runs, out_dir / PLOT_FILE, title=comparison.get("caption", ""), metric=_metric(comparison))


def _metric(comparison: dict[str, Any]) -> str:
    """The name of the backdoor_accuracy score under the comparison's attack (sim.metrics)."""
    return attack_metric_name(comparison.get("base_config", {}).get("attack", {}).get("type", "backdoor"))


def read_comparison(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / JSON_FILE
    if not path.is_file():
        raise ConfigError(f"no {JSON_FILE} in {out_dir}; fix: point at the folder of a comparison")
    return json.loads(path.read_text())
