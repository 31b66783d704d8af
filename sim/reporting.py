"""What a run reports: one record per round (the columns of `metrics.csv`), the summary, the
settings that tell runs apart, plot titles, and re-plotting a finished run."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.attack_effect import summarize_attack_effect
from sim.config import Config
from sim.defenses.client import client_defense_class
from sim.defenses.privacy import privacy_budget
from sim.errors import ConfigError
from sim.io import ATTACK_EFFECT_PLOT_FILE, MANIFEST_FILE, METRICS_FILE, PLOT_FILE, SUMMARY_FILE, write_atomic
from sim.manifest import check_sealed, damaged, read_json, write_manifest
from sim.metrics import attack_metric_name
from sim.records import METRIC_COLUMNS, TIMING_COLUMNS, RoundRecord, ids_text, metrics_csv_text, read_metrics  # noqa: F401
from sim.provenance import CHECKED_FACTS, common_fact
from sim.resume import check_same_run, load_run_config
from sim.server.krum import byzantine_f
from sim.server.registry import AGGREGATORS


def key_settings(cfg: Config) -> dict[str, Any]:
    """The settings a reader needs to tell runs apart, by their `--set` paths."""
    settings = {
        "seed": cfg.seed,
        "device": cfg.device,
        "engine": cfg.engine,
        "data.dataset": cfg.data.dataset,
        "data.partition": cfg.data.partition,
        "model": cfg.model,
        "clients.num_clients": cfg.clients.num_clients,
        "clients.num_malicious": cfg.clients.num_malicious,
        "clients.clients_per_round": cfg.clients.clients_per_round,
        "selection.schedule": cfg.selection.schedule,
        "training.local_epochs": cfg.training.local_epochs,
        "training.local_steps": cfg.training.local_steps,
        "training.batch_size": cfg.training.batch_size,
        "training.lr": cfg.training.lr,
        "attack.type": cfg.attack.type,
        "client_defense.type": cfg.client_defense.type,
        "server.aggregator": cfg.server.aggregator,
        "eval.test_size": cfg.eval.test_size,
    }
    if cfg.eval.every != 1:
        settings["eval.every"] = cfg.eval.every
    # The client defense's own settings: those it reports always, the others off their defaults.
    defense = client_defense_class(cfg.client_defense)
    if defense.settings is not None:
        defaults = defense.settings()
        for name in (f.name for f in dataclasses.fields(defense.settings)):
            value = getattr(cfg.client_defense, name)
            if name in defense.reported or value != getattr(defaults, name):
                settings[f"client_defense.{name}"] = value
    rule = AGGREGATORS[cfg.server.aggregator]
    if hasattr(rule, "resolve_f"):  # the rules that assume f Byzantine rows
        settings["server.f (resolved)"] = byzantine_f(
            cfg.server, cfg.clients.clients_per_round, cfg.clients.num_clients, cfg.clients.num_malicious
        )
    if cfg.training.lr_schedule != "constant":
        settings["training.lr_schedule"] = cfg.training.lr_schedule
    if cfg.model_poisoning.type != "none":
        settings["model_poisoning.type"] = cfg.model_poisoning.type
    if cfg.privacy.type != "none":
        settings["privacy.type"] = cfg.privacy.type
        settings["privacy.epsilon"] = cfg.privacy.epsilon
    # The LeadFL authors' options (docs/algorithms.md), where switched on.
    if cfg.selection.rng != "simulator":
        settings["selection.rng"] = cfg.selection.rng
    if cfg.selection.override_rounds:
        settings["selection.override_rounds"] = list(cfg.selection.override_rounds)
        settings["selection.override_malicious"] = cfg.selection.override_malicious
    if cfg.attack.follow_client_defense:
        settings["attack.follow_client_defense"] = True
    if cfg.attack.trigger_values != "data_range":
        settings["attack.trigger_values"] = cfg.attack.trigger_values
    # The chosen rule's and attack's own settings, where they are off their defaults.
    for section, chosen in ((cfg.server, cfg.server.aggregator), (cfg.attack, cfg.attack.type)):
        own = getattr(section, chosen, None)
        if dataclasses.is_dataclass(own):
            defaults = type(own)()
            prefix = "server" if section is cfg.server else "attack"
            for name, value in dataclasses.asdict(own).items():
                if value != getattr(defaults, name):
                    settings[f"{prefix}.{chosen}.{name}"] = value
    return settings


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(rows: list[dict[str, Any]], cfg: Config, engine: str | None = None,
              segments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Headline numbers of a run (accuracies in percent) and its key settings; `engine` is
    what trained the clients (`engine: auto` resolved, distributed or not); `segments` the facts
    of each process that ran its rounds (`sim.provenance`), as `provenance`, with `threads` and
    `machine` the facts they share."""
    main = [row["main_accuracy"] for row in rows if row["main_accuracy"] is not None]  # scored rounds (eval.every)
    backdoor = [row["backdoor_accuracy"] for row in rows if row["backdoor_accuracy"] is not None]
    malicious = [row["malicious_selected"] for row in rows]
    return {
        "rounds": len(rows),
        "final_main_accuracy": main[-1] if main else None,
        "best_main_accuracy": max(main) if main else None,
        "final_backdoor_accuracy": rows[-1]["backdoor_accuracy"] if rows else None,
        "mean_backdoor_accuracy": _mean(backdoor),
        "final_test_loss": rows[-1]["test_loss"] if rows else None,
        "mean_malicious_per_round": _mean(malicious),
        "rounds_with_malicious": sum(1 for count in malicious if count > 0),
        "rounds_aggregate_rejected": sum(1 for row in rows if row.get("aggregate_rejected")),
        "wall_time_s": sum(row["wall_time_s"] for row in rows),
        **_machine_summary(segments),
        "settings": {**key_settings(cfg), **({"engine (resolved)": engine} if engine else {})},
        **_privacy_summary(rows, cfg),
        **_attack_effect_summary(rows, cfg),
    }


def _machine_summary(segments: list[dict[str, Any]] | None) -> dict[str, Any]:
    if not segments:
        return {}
    machine = {key: common_fact(segments, key) for key in CHECKED_FACTS if key != "threads"}
    return {"threads": common_fact(segments, "threads"), "machine": machine, "provenance": segments}

def _attack_effect_summary(rows: list[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """{"attack_effect": sim.attack_effect.summarize_attack_effect} when it is measured, else {}."""
    if not cfg.metrics.attack_effect:
        return {}
    return {"attack_effect": summarize_attack_effect(rows)}


def _privacy_summary(rows: list[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """{"privacy": the DP budget (see sim.defenses.privacy.privacy_budget)} when DP is on, else {}."""
    if cfg.privacy.type == "none":
        return {}
    return {"privacy": privacy_budget(cfg.privacy, [row["selected"].split() for row in rows])}


def write_outputs(
    out_dir: Path, rows: list[dict[str, Any]], cfg: Config, label: str | None = None, engine: str | None = None,
    segments: list[dict[str, Any]] | None = None,
) -> dict:
    """summary.json and accuracy.png from the rows; returns the summary."""
    from sim.plots import plot_attack_effect, plot_run  # matplotlib only when a run draws

    summary = summarize(rows, cfg, engine, segments)
    if label is not None:
        summary = {"label": label, **summary}
    write_atomic(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    plot_run(rows, out_dir / PLOT_FILE, title=plot_title(cfg, label), metric=attack_metric_name(cfg.attack.type))
    if cfg.metrics.attack_effect:
        plot_attack_effect(rows, out_dir / ATTACK_EFFECT_PLOT_FILE, title=plot_title(cfg, label))
    return summary


def plot_title(cfg: Config, label: str | None) -> str:
    defense = client_defense_class(cfg.client_defense).title(cfg.client_defense)
    title = f"{cfg.data.dataset}, {cfg.server.aggregator}, client defense {defense}, {cfg.selection.schedule} selection"
    if cfg.model_poisoning.type != "none":
        title += f", model poisoning {cfg.model_poisoning.type}"
    if cfg.privacy.type != "none":
        title += f", DP epsilon {cfg.privacy.epsilon:g}"
    return f"{label}: {title}" if label else title



def replot(out_dir: str | Path, label: str | None = None) -> list[Path]:
    """Redraws `accuracy.png` (and `attack_effect.png` when the run measured it) of the run in
    `out_dir` from its `metrics.csv` and `config.yaml` (`label`: the run's variant label in a
    comparison); returns the paths drawn.

    A finished run is checked first (against its manifest, or its files against each other) and
    refused if damaged; a sealed one is sealed again with the new plots' digests.
    """
    out_dir = Path(out_dir)
    sealed = (out_dir / MANIFEST_FILE).is_file()
    if sealed:
        check_sealed(out_dir, plots=False)
    elif (out_dir / SUMMARY_FILE).is_file():
        _check_unsealed(out_dir)
    from sim.plots import plot_attack_effect, plot_run  # matplotlib only when a run draws

    rows, cfg = read_metrics(out_dir), load_run_config(out_dir)
    title = plot_title(cfg, label)
    paths = [plot_run(rows, out_dir / PLOT_FILE, title=title, metric=attack_metric_name(cfg.attack.type))]
    if cfg.metrics.attack_effect:
        paths.append(plot_attack_effect(rows, out_dir / ATTACK_EFFECT_PLOT_FILE, title=title))
    if sealed:
        write_manifest(out_dir, cfg.rounds)
    return paths


def progress_postfix(row: dict[str, Any]) -> dict[str, str]:
    postfix = {"main": "not scored" if row["main_accuracy"] is None else f"{row['main_accuracy']:.1f}%"}
    if row["backdoor_accuracy"] is not None:
        postfix["backdoor"] = f"{row['backdoor_accuracy']:.1f}%"
    postfix["malicious"] = str(row["malicious_selected"])
    return postfix


def format_summary(summary: dict[str, Any]) -> str:
    """A few aligned lines for the terminal."""

    def percent(value: float | None) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}%"

    metric = attack_metric_name(summary.get("settings", {}).get("attack.type", "backdoor"))
    pairs = [
        ("rounds", str(summary["rounds"])),
        ("main accuracy (final)", percent(summary["final_main_accuracy"])),
        ("main accuracy (best)", percent(summary["best_main_accuracy"])),
        (f"{metric} (avg)", percent(summary["mean_backdoor_accuracy"])),
        (f"{metric} (final)", percent(summary["final_backdoor_accuracy"])),
        ("wall time", f"{summary['wall_time_s']:.1f} s"),
    ]
    width = max(len(name) for name, _ in pairs)
    lines = [f"{name.ljust(width)}  {value}" for name, value in pairs]
    return "\n".join(lines)


# Summary figures that a finished run's metrics.csv must reproduce exactly (runs without a manifest).
_RECOMPUTED = ("rounds", "final_main_accuracy", "best_main_accuracy", "final_backdoor_accuracy",
               "mean_backdoor_accuracy", "final_test_loss")


def _check_unsealed(out_dir: Path) -> dict[str, Any]:
    """The summary of a finished run from before manifests, after checking that its files agree:
    the rows of metrics.csv, the rounds of config.yaml and summary.json, and the summary's figures
    recomputed from metrics.csv."""
    summary = read_json(out_dir / SUMMARY_FILE, out_dir)
    if not isinstance(summary, dict):
        raise damaged(out_dir, f"{SUMMARY_FILE} holds no summary")
    try:
        cfg = load_run_config(out_dir)
        rows = read_metrics(out_dir)
    except (ConfigError, OSError, ValueError, TypeError, KeyError, csv.Error) as error:
        raise damaged(out_dir, f"its config or metrics cannot be read ({str(error)[:200]})") from None
    if not (len(rows) == cfg.rounds == summary.get("rounds")):
        raise damaged(out_dir, f"{METRICS_FILE} holds {len(rows)} rounds, config.yaml says {cfg.rounds}, "
                               f"{SUMMARY_FILE} says {summary.get('rounds')!r}")
    recomputed = summarize(rows, cfg)
    for key in _RECOMPUTED:
        if key in summary and summary[key] != recomputed[key]:
            raise damaged(out_dir, f"{SUMMARY_FILE}'s {key} ({summary[key]!r}) is not what {METRICS_FILE} gives "
                                   f"({recomputed[key]!r})")
    return summary


def read_finished(out_dir: str | Path, cfg: Config | None = None) -> dict[str, Any] | None:
    """The verified summary of the run finished in `out_dir`, or None where it holds no finished
    run (no summary.json, or one of other than `cfg.rounds` rounds). A finished run of other
    settings than `cfg`, or whose files disagree (with its manifest, `sim.manifest`, or, from
    before manifests, with each other), is refused with a ConfigError; nothing is rewritten."""
    out_dir = Path(out_dir)
    if not (out_dir / SUMMARY_FILE).is_file():
        return None
    if cfg is not None:
        check_same_run(out_dir, cfg)
    summary = check_sealed(out_dir) if (out_dir / MANIFEST_FILE).is_file() else _check_unsealed(out_dir)
    if cfg is not None and summary.get("rounds") != cfg.rounds:
        return None
    return summary
