"""Several variants of one experiment side by side, in the shape of the LeadFL report's Table I.

Every variant is a full run in its own folder under the comparison folder. Selection depends only
on the seed and the round, so variants that differ in a defense or an aggregator face the same
clients, the same malicious rounds, and the same initial model.

Files written:
* `<variant>/...`       each run's own files (see `sim.runner`)
* `table.md`            variants as rows; final main accuracy, average and final backdoor accuracy
* `comparison.png`      backdoor and main accuracy per round, one curve per variant
* `comparison.json`     the base settings, each variant's overrides, folder and summary
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Union

from sim.config import Config, apply_overrides, to_dict
from sim.errors import ConfigError
from sim.plots import plot_comparison
from sim.runner import CHECKPOINT_FILE, read_metrics, run, write_atomic

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


def table_markdown(summaries: dict[str, dict[str, Any]], caption: str = "") -> str:
    """Markdown table: one row per variant, accuracies in percent."""
    lines = []
    if caption:
        lines += [caption, ""]
    lines += [
        "| variant | main accuracy, final (%) | backdoor accuracy, average (%) | backdoor accuracy, final (%) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, summary in summaries.items():
        lines.append(
            f"| {label} | {_percent(summary['final_main_accuracy'])} | "
            f"{_percent(summary['mean_backdoor_accuracy'])} | {_percent(summary['final_backdoor_accuracy'])} |"
        )
    return "\n".join(lines) + "\n"


def caption_for(cfg: Config) -> str:
    """What every variant shares, in one sentence above the table."""
    attack = {"backdoor": "9-pixel backdoor", "label_flip": "label flipping", "none": "no attack"}[cfg.attack.type]
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


def compare(
    cfg: Config,
    variants: dict[str, Iterable[Override]],
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    echo=print,
) -> dict[str, Any]:
    """Run every variant under `out_dir`, then write and print the table; returns comparison.json's content.

    With `resume`, finished variants are read back, a stopped one continues from its checkpoint,
    and the rest start fresh.
    """
    variants = {label: list(overrides) for label, overrides in variants.items()}
    configs = variant_configs(cfg, variants)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    summaries = {}
    for label, variant_cfg in configs.items():
        run_dir = out_dir / folder_name(label)
        continue_run = resume and (run_dir / CHECKPOINT_FILE).is_file()
        summaries[label] = run(variant_cfg, run_dir, resume=continue_run, progress=progress, label=label)

    comparison = {
        "caption": caption_for(cfg),
        "base_config": to_dict(cfg),
        "variants": {
            label: {
                "overrides": [_override_text(item) for item in variants[label]],
                "folder": folder_name(label),
                "summary": summaries[label],
            }
            for label in configs
        },
    }
    write_outputs(out_dir, comparison)
    echo(table_markdown(summaries, comparison["caption"]))
    return comparison


def write_outputs(out_dir: Path, comparison: dict[str, Any]) -> None:
    """table.md, comparison.png and comparison.json from the variants' summaries and metrics."""
    summaries = {label: entry["summary"] for label, entry in comparison["variants"].items()}
    write_atomic(out_dir / TABLE_FILE, table_markdown(summaries, comparison["caption"]))
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
    return plot_comparison(runs, out_dir / PLOT_FILE, title=comparison.get("caption", ""))


def read_comparison(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / JSON_FILE
    if not path.is_file():
        raise ConfigError(f"no {JSON_FILE} in {out_dir}; fix: point at the folder of a comparison")
    return json.loads(path.read_text())
