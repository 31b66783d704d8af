"""Sweeps: every combination of a grid's axes as a normal run folder, executed by `sim.jobs`.

A grid file (YAML):

    description: one line
    preset: table1-fmnist          # optional base preset (configs/<name>.yaml)
    config: base.yaml              # optional base config file, relative to the grid file
    settings: {rounds: 5}          # optional settings on top, dotted or nested
    axes:
      server.aggregator: [median, multikrum]       # a setting and its values
      attack:                                      # named levels, each a group of settings
        backdoor: {attack.type: backdoor}
        poisonedfl: {attack.type: none, model_poisoning.type: poisonedfl}
      seed: [0, 1, 2]
    exclude:                                       # combinations not to run
      - {attack: poisonedfl, server.aggregator: median}
    report: {metrics: [mean_backdoor_accuracy], axis: server.aggregator}   # optional: rows, panels

Every trial is base <- each axis's level, validated before anything runs; a trial's folder name
says its levels (`server.aggregator-median__attack-backdoor__seed-0`). The axis named `seed` is
the replicate axis: the report averages over it, with Student-t 95% intervals (sim.stats), and
trials run seed by seed, so a stopped sweep has whole seeds done.

Sweep folder:
* `grid.yaml`          the grid file as given
* `sweep.json`         the axes, the replicate axis and each trial's levels and folder
* `trials/<name>/`     each trial's run folder (sim.runner), plus `config-input.yaml`, `log.txt`
                       and `trial.json` (exit status and elapsed seconds of its process)
* `results.csv`        a row per finished trial: its levels and summary figures
* `table.md`           means and 95% intervals over seeds per combination of the other axes
* `<metric>-vs-<axis>.png`   the report's metrics against its axis
* `heatmap_<metric>.png`     (grids of two or more axes besides `seed`) the metric's mean and
                             95% half-width over seeds per cell: rows the levels of the `rows`
                             axis (default: the first axis besides `seed` and `axis`), columns
                             those of `axis`, a panel per combination of the other axes (`panels`
                             first); `excluded` marks combinations the grid does not run, `n/a`
                             those without a finished value
* `heatmap_<metric>.csv`     the heatmap's cells: row, column, panel, n, mean, half_width, status

A report metric `<figure>_drop` needs a `reference: {axis: level}`: per trial, the figure of the
trial at that level with every other level (the seed included) equal, minus the trial's own.
"""

from __future__ import annotations

import csv
import difflib
import io
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


from sim import yaml_input
from sim.attacks.data.registry import training_cost as attack_training_cost
from sim.defenses.client import client_defense_class
from sim.config import MOVED_SETTINGS, CONFIGS_DIR, Config, apply_overrides, load_config, setting_paths, to_dict
from sim.errors import ConfigError
from sim.io import CHECKPOINT_FILE, FolderLock, check_names, check_within, inside, lock_folder, read_json_file, write_atomic
from sim.reporting import read_finished
from sim.jobs import TRIAL_CONFIG_FILE, Trial, TrialResult, run_trials
from sim.stats import mean_interval
from sim.tables import estimate_text, percent, table_head, table_row

GRIDS_DIR = CONFIGS_DIR / "grids"
GRID_KEYS = ("description", "preset", "config", "settings", "axes", "exclude", "report")
REPLICATE_AXIS = "seed"
DEFAULT_MAX_TRIALS = 10_000  # trials one grid may hold unless --max-trials raises it
TRIALS_DIR = "trials"
GRID_FILE = "grid.yaml"
SWEEP_FILE = "sweep.json"
TRIAL_FILE = "trial.json"
RESULTS_FILE = "results.csv"
TABLE_FILE = "table.md"
# summary.json figures carried into results.csv, and those the table averages.
SUMMARY_COLUMNS = ("rounds", "final_main_accuracy", "best_main_accuracy", "final_backdoor_accuracy",
                   "mean_backdoor_accuracy", "final_test_loss", "wall_time_s")
TABLE_METRICS = ("final_main_accuracy", "mean_backdoor_accuracy", "final_backdoor_accuracy")
METRIC_TITLES = {
    "rounds": "rounds",
    "final_main_accuracy": "main accuracy, final (%)",
    "best_main_accuracy": "main accuracy, best (%)",
    "final_backdoor_accuracy": "backdoor accuracy, final (%)",
    "mean_backdoor_accuracy": "backdoor accuracy, average (%)",
    "final_test_loss": "test loss, final",
    "wall_time_s": "wall time (s)",
}
DEFAULT_REPORT = {"metrics": ["mean_backdoor_accuracy", "final_main_accuracy"], "axis": None, "rows": None,
                  "panels": None, "reference": None}
# A report metric `<figure>_drop`: the figure of the trial at the report's reference level minus the
# trial's own, paired on every other axis (the seed included), e.g. the accuracy an attack costs.
DROP_SUFFIX = "_drop"
# Training images per dataset, for the cost estimate (synthetic: its configured size).
DATASET_SIZES = {"fashion_mnist": 60000, "mnist": 60000, "cifar10": 50000}


@dataclass
class Axis:
    name: str
    labels: list[str]  # level labels, as in folder names and tables
    settings: list[list[tuple[str, Any]]]  # each level's (setting path, value) pairs


@dataclass
class Grid:
    source: str
    text: str
    base: Config  # the preset and config file
    settings: list[tuple[str, Any]]  # the grid's settings on top, for every trial
    axes: list[Axis]
    excluded: list[dict[str, list[str]]]
    report: dict[str, Any]


@dataclass
class PlannedTrial:
    name: str
    levels: dict[str, str]  # axis name -> level label
    config: Config


# ----------------------------------------------------------------------------------------------
# grid files


def grid_path(name_or_path: str) -> Path:
    """A grid file's path: the file itself, or a preset grid's name (configs/grids/<name>.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = GRIDS_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    names = sorted(p.stem for p in GRIDS_DIR.glob("*.yaml"))
    raise ConfigError(
        f"--grid {name_or_path}: no such file, nor a preset grid in {GRIDS_DIR} (available: "
        f"{', '.join(names) or 'none'}); fix: --grid path/to/grid.yaml or --grid {names[0] if names else 'NAME'}"
    )


def _label(value: Any) -> str:
    text = "null" if value is None else (str(value).lower() if isinstance(value, bool) else str(value))
    return text


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text)


def _setting_pairs(settings: Any, where: str) -> list[tuple[str, Any]]:
    if settings is None:
        return []
    if not isinstance(settings, dict):
        raise ConfigError(f"{where} must map settings to values, got {settings!r}; fix: e.g. {{attack.type: backdoor}}")
    return [(str(key), value) for key, value in settings.items()]


def _axis(name: Any, spec: Any, source: str) -> Axis:
    name = str(name)
    where = f"axes.{name} in {source}"
    if isinstance(spec, dict):
        if not spec:
            raise ConfigError(f"{where} has no levels; fix: give it at least one, e.g. {{label: {{setting: value}}}}")
        labels = [str(label) for label in spec]
        return Axis(name, labels, [_setting_pairs(spec[label], f"{where}.{label}") for label in spec])
    if name not in setting_paths():
        close = difflib.get_close_matches(name, setting_paths(), n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(
            f"{where}: '{name}' is not a setting, so a list of values cannot be applied to it; {hint}"
            f"fix: name a setting (e.g. server.aggregator: [median, multikrum]) or give named levels "
            f"({name}: {{label: {{setting: value}}}})"
        )
    if not isinstance(spec, list) or not spec:
        raise ConfigError(
            f"{where} must be a non-empty list of values, got {spec!r}; fix: e.g. {name}: [a, b], or named levels"
        )
    return Axis(name, [_label(value) for value in spec], [[(name, value)] for value in spec])


def _check_paths(pairs: list[tuple[str, Any]], where: str) -> None:
    """Every key a setting path, or a section given as a mapping, before any trial is built."""
    paths = setting_paths()
    sections = {path.rsplit(".", 1)[0] for path in paths if "." in path}
    for key, value in pairs:
        if key in paths or (key in sections and isinstance(value, dict)):
            continue
        if key in MOVED_SETTINGS:
            raise ConfigError(f"{where}: '{key}' has moved to '{MOVED_SETTINGS[key][0]}'; "
                              f"fix: rename it to '{MOVED_SETTINGS[key][0]}'")
        close = difflib.get_close_matches(key, paths, n=1, cutoff=0.6)
        raise ConfigError(
            f"{where}: '{key}' is not a setting; {'did you mean ' + repr(close[0]) + '? ' if close else ''}"
            f"fix: {'rename it to ' + repr(close[0]) if close else 'use a dotted setting path, e.g. attack.type'}"
        )


def _exclusions(raw: Any, axes: list[Axis], source: str) -> list[dict[str, list[str]]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"exclude in {source} must be a list of combinations, got {raw!r}; "
                          "fix: exclude: [{axis: level, other_axis: level}]")
    by_name = {axis.name: axis for axis in axes}
    entries = []
    for index, entry in enumerate(raw):
        where = f"exclude[{index}] in {source}"
        if not isinstance(entry, dict) or not entry:
            raise ConfigError(f"{where} must map axes to levels, got {entry!r}; fix: e.g. {{{axes[0].name}: "
                              f"{axes[0].labels[0]}}}")
        combination = {}
        for key, values in entry.items():
            key = str(key)
            if key not in by_name:
                close = difflib.get_close_matches(key, list(by_name), n=1, cutoff=0.5)
                raise ConfigError(
                    f"{where} names '{key}', which is not an axis (axes: {', '.join(by_name)}); "
                    f"fix: {'rename it to ' + repr(close[0]) if close else 'use one of the axes'}"
                )
            labels = [_label(v) for v in (values if isinstance(values, list) else [values])]
            for label in labels:
                if label not in by_name[key].labels:
                    raise ConfigError(
                        f"{where}: {key}={label} is not a level of axis {key} (levels: "
                        f"{', '.join(by_name[key].labels)}); fix: use one of those levels"
                    )
            combination[key] = labels
        entries.append(combination)
    return entries


def _report_options(raw: Any, axes: list[Axis], source: str) -> dict[str, Any]:
    report = dict(DEFAULT_REPORT)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict) or set(raw) - set(DEFAULT_REPORT):
        raise ConfigError(f"report in {source} takes {', '.join(DEFAULT_REPORT)}, got {raw!r}; "
                          "fix: report: {metrics: [mean_backdoor_accuracy], axis: server.aggregator}")
    report.update(raw)
    if isinstance(report["metrics"], str):
        report["metrics"] = [report["metrics"]]
    return check_report(report, [axis.name for axis in axes], f"report in {source}",
                        {axis.name: axis.labels for axis in axes})


def check_report(report: dict[str, Any], axis_names: list[str], where: str,
                 levels: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Metrics known and the plot axis one of the grid's (default: the first one not `seed`); a
    `reference` ({axis: level}, for the `_drop` metrics) names an axis besides the seeds and, when
    `levels` are given, one of its levels."""
    reference = report.get("reference")
    if reference is not None:
        example = "fix: report: {reference: {attack: none}, metrics: [final_main_accuracy_drop]}"
        if not isinstance(reference, dict) or len(reference) != 1:
            raise ConfigError(f"{where}: reference must be one axis and its level, got {reference!r}; {example}")
        (axis, level), = reference.items()
        allowed = [name for name in axis_names if name != REPLICATE_AXIS]
        if axis not in allowed:
            raise ConfigError(f"{where}: reference axis '{axis}' is not an axis of the grid besides "
                              f"{REPLICATE_AXIS} (allowed: {', '.join(allowed)}); {example}")
        level = str(level)
        if levels is not None and level not in levels[axis]:
            raise ConfigError(f"{where}: reference level '{level}' is not a level of axis '{axis}' (levels: "
                              f"{', '.join(levels[axis])}); {example}")
        report["reference"] = {axis: level}
    known = [*SUMMARY_COLUMNS, *(f"{c}{DROP_SUFFIX}" for c in SUMMARY_COLUMNS)]
    for metric in report["metrics"]:
        if metric not in known:
            raise ConfigError(f"{where}: metric '{metric}' is not one of {', '.join(SUMMARY_COLUMNS)} (or one of "
                              f"them with {DROP_SUFFIX}, given a reference); fix: --metric mean_backdoor_accuracy")
        if metric.endswith(DROP_SUFFIX) and reference is None:
            raise ConfigError(f"{where}: metric '{metric}' is a difference from a reference level, and the report "
                              "names none; fix: report: {reference: {attack: none}} in the grid file")
    candidates = [name for name in axis_names if name != REPLICATE_AXIS] or axis_names
    if report["axis"] is None:
        report["axis"] = candidates[0] if candidates else None
    elif report["axis"] not in axis_names:
        raise ConfigError(f"{where}: axis '{report['axis']}' is not an axis of the grid (axes: "
                          f"{', '.join(axis_names)}); fix: --axis {candidates[0] if candidates else 'NAME'}")
    heatmap_layout(report, axis_names, where)  # refuses bad rows/panels options
    return report


def heatmap_layout(report: dict[str, Any], axis_names: list[str], where: str = "the report options"
                   ) -> tuple[str, str, list[str]] | None:
    """The heatmaps' (row axis, column axis, panel axes) for a grid of two or more axes besides the
    replicate axis, else None. Columns: the report's `axis` (or, when that is the replicate axis,
    the first other one); rows: `rows` (default: the first axis left); panels: every other axis,
    `panels` first. A `rows` or `panels` naming no such axis is refused."""
    factors = [name for name in axis_names if name != REPLICATE_AXIS]
    rows, panel = report.get("rows"), report.get("panels")
    if len(factors) < 2:
        for key, value in (("rows", rows), ("panels", panel)):
            if value is not None:
                raise ConfigError(f"{where}: {key} '{value}' needs a grid of two or more axes besides "
                                  f"{REPLICATE_AXIS} for its heatmaps (axes: {', '.join(axis_names)}); "
                                  f"fix: remove {key} from the report: section")
        return None
    columns = report.get("axis") if report.get("axis") in factors else None
    if rows is not None:
        allowed = [name for name in factors if name != columns]
        if rows not in allowed:
            raise ConfigError(f"{where}: rows '{rows}' is not an axis the heatmap rows can take (allowed: "
                              f"{', '.join(allowed)}; the columns are axis '{columns}'); fix: rows: {allowed[0]}")
    if columns is None:
        columns = next(name for name in factors if name != rows)
    if rows is None:
        rows = next(name for name in factors if name != columns)
    others = [name for name in factors if name not in (rows, columns)]
    if panel is not None:
        if panel not in others:
            allowed = ", ".join(others) or f"none: every axis besides {REPLICATE_AXIS} is a row or a column"
            raise ConfigError(f"{where}: panels '{panel}' is not an axis the heatmap panels can take (allowed: "
                              f"{allowed}; "
                              f"rows are '{rows}', columns '{columns}'); fix: "
                              + (f"panels: {others[0]}" if others else "remove panels from the report: section"))
        others.remove(panel)
        others.insert(0, panel)
    return rows, columns, others


def load_grid(name_or_path: str) -> Grid:
    """Read and check a grid file: the base config, its axes, exclusions and report options."""
    path = grid_path(name_or_path)
    source = f"grid '{path}'"
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {source}: {error.strerror}; fix: check the path") from None
    raw = yaml_input.load(data, source)
    text = data.decode()
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a mapping with an axes: section; fix: see `leadfl-sim sweep --help`")
    for key in raw:
        if key not in GRID_KEYS:
            close = difflib.get_close_matches(str(key), GRID_KEYS, n=1, cutoff=0.5)
            raise ConfigError(f"unknown key '{key}' in {source}; allowed: {', '.join(GRID_KEYS)}; "
                              f"fix: {'rename it to ' + repr(close[0]) if close else 'remove it'}")
    config_path = raw.get("config")
    if config_path is not None:
        config_path = Path(config_path)
        if not config_path.is_absolute():
            config_path = path.parent / config_path
    base = load_config(raw.get("preset"), config_path)
    settings = _setting_pairs(raw.get("settings"), f"settings in {source}")
    _check_paths(settings, f"settings in {source}")
    axes_raw = raw.get("axes")
    if not isinstance(axes_raw, dict) or not axes_raw:
        raise ConfigError(f"{source} has no axes: section (got {axes_raw!r}); fix: e.g. axes: {{seed: [0, 1, 2]}}")
    axes = [_axis(name, spec, source) for name, spec in axes_raw.items()]
    for axis in axes:
        duplicates = sorted({label for label in axis.labels if axis.labels.count(label) > 1})
        if duplicates:
            raise ConfigError(f"axes.{axis.name} in {source} lists {duplicates[0]} twice; fix: list each level once")
        for label, pairs in zip(axis.labels, axis.settings):
            _check_paths(pairs, f"axes.{axis.name}.{label} in {source}")
    excluded = _exclusions(raw.get("exclude"), axes, source)
    report = _report_options(raw.get("report"), axes, source)
    return Grid(str(path), text, base, settings, axes, excluded, report)


def count_trials(grid: Grid) -> int:
    """The trials of `grid` (combinations not excluded), counted without building any: exactly up
    to a million combinations, else the number of combinations (exclusions are few in practice)."""
    sizes = [len(axis.labels) for axis in grid.axes]
    total = math.prod(sizes)
    if total > 1_000_000 or not grid.excluded:
        return total
    return sum(
        1 for combination in itertools.product(*(axis.labels for axis in grid.axes))
        if not any(all(dict(zip((a.name for a in grid.axes), combination))[key] in labels
                       for key, labels in entry.items()) for entry in grid.excluded)
    )


def expand(grid: Grid, max_trials: int = DEFAULT_MAX_TRIALS) -> list[PlannedTrial]:
    """Every combination of the axes not excluded, each validated; the seed axis varies slowest.
    A grid of more than `max_trials` trials is refused before any is built."""
    count = count_trials(grid)
    if count > max_trials:
        raise ConfigError(f"{grid.source} has {count} trials, more than --max-trials {max_trials}; fix: fewer levels "
                          f"or more exclude: entries, or raise the limit with --max-trials {count}")
    axes = sorted(grid.axes, key=lambda axis: axis.name != REPLICATE_AXIS)
    trials = []
    for combination in itertools.product(*(range(len(axis.labels)) for axis in axes)):
        levels = {axis.name: axis.labels[i] for axis, i in zip(axes, combination)}
        if any(all(levels[key] in labels for key, labels in entry.items()) for entry in grid.excluded):
            continue
        ordered = {axis.name: levels[axis.name] for axis in grid.axes}
        name = "__".join(f"{_safe(axis)}-{_safe(label)}" for axis, label in ordered.items())
        pairs = grid.settings + [pair for axis, i in zip(axes, combination) for pair in axis.settings[i]]
        described = ", ".join(f"{axis}={label}" for axis, label in ordered.items())
        try:
            config = apply_overrides(grid.base, pairs, f"trial {described}")
        except ConfigError as error:
            exclusion = "{" + ", ".join(f"{axis}: {label}" for axis, label in ordered.items()
                                        if axis != REPLICATE_AXIS) + "}"
            raise ConfigError(
                f"{grid.source}: trial {described}: {error} (if that combination cannot work, exclude it: "
                f"add - {exclusion} to exclude:)"
            ) from None
        trials.append(PlannedTrial(name, ordered, config))
    seen: set[str] = set()
    clash = next((trial.name for trial in trials if trial.name in seen or seen.add(trial.name)), None)
    if clash:
        raise ConfigError(f"{grid.source}: two trials would share the folder name {clash} (levels that differ only "
                          "in characters other than letters, digits, '.', '+', '-'); fix: rename one level")
    if not trials:
        raise ConfigError(f"{grid.source}: exclude: removes every combination; fix: exclude fewer")
    return trials


# ----------------------------------------------------------------------------------------------
# the state of a sweep folder


def trial_state(folder: Path, config: Config) -> tuple[str, str | None]:
    """('done' (a finished run whose files agree, sim.reporting.read_finished), 'stopped' (a
    checkpoint to resume) or 'new'; a note where a finished-looking trial is damaged and runs again)."""
    try:
        if read_finished(folder, config) is not None:
            return "done", None
    except ConfigError as error:
        return "new", f"{folder.name}: {error}; it runs again from the start"
    return ("stopped" if (folder / CHECKPOINT_FILE).is_file() else "new"), None


def _check_same_settings(folder: Path, config: Config) -> None:
    path = folder / TRIAL_CONFIG_FILE
    if path.is_file() and yaml_input.read(path, "a trial's settings") != to_dict(config):
        raise ConfigError(
            f"{folder} was started with other settings than the grid now gives it ({path}); fix: resume with "
            "the grid it was started with, or choose another --out"
        )


def trial_cost(config: Config) -> float:
    """Images through the model per trial: 3 per trained sample (forward, backward), twice that where a
    step evaluates two gradients (LeadFL's hessian variant, the MGDA attacker), 2 per scored image
    (clean and triggered)."""
    train_size = DATASET_SIZES.get(config.data.dataset, config.data.synthetic_train_size)
    if config.training.local_steps is not None:
        steps = config.training.local_steps
    else:
        per_client = math.ceil(train_size / config.clients.num_clients)
        steps = config.training.local_epochs * math.ceil(per_client / config.training.batch_size)
    per_round_clients = config.clients.clients_per_round
    if config.selection.schedule == "fixed":
        malicious = min(config.selection.fixed_malicious, per_round_clients)
    else:
        malicious = per_round_clients * config.clients.num_malicious / config.clients.num_clients
    # A rule that differentiates at the lookahead point runs a second forward and backward pass.
    benign_passes = 6 if client_defense_class(config.client_defense).needs_lookahead else 3
    malicious_passes = attack_training_cost(config.attack)
    samples = steps * config.training.batch_size
    test_size = config.eval.test_size or (10000 if config.data.dataset != "synthetic" else
                                          config.data.synthetic_test_size)
    per_round = samples * (benign_passes * (per_round_clients - malicious) + malicious_passes * malicious)
    return float(config.rounds * (per_round + 2 * test_size))


# ----------------------------------------------------------------------------------------------
# running


def _sweep_record(grid: Grid, trials: list[PlannedTrial]) -> dict[str, Any]:
    return {
        "grid": grid.source,
        "axes": {axis.name: axis.labels for axis in grid.axes},
        "replicate_axis": REPLICATE_AXIS if any(axis.name == REPLICATE_AXIS for axis in grid.axes) else None,
        "report": grid.report,
        "trials": [{"name": t.name, "levels": t.levels, "folder": f"{TRIALS_DIR}/{t.name}"} for t in trials],
    }


def _seconds_per_cost(out_dir: Path, trials: list[PlannedTrial]) -> float | None:
    """Seconds per cost unit measured on the folder's finished trials, or None."""
    seconds = cost = 0.0
    for trial in trials:
        record = out_dir / TRIALS_DIR / trial.name / TRIAL_FILE
        if record.is_file():
            try:
                data = json.loads(record.read_text())
            except (OSError, UnicodeDecodeError, ValueError):
                continue  # a damaged record only leaves that trial out of the estimate
            if not isinstance(data, dict):
                continue
            if data.get("returncode") == 0 and data.get("elapsed_s") and not data.get("resumed"):
                seconds += data["elapsed_s"]
                cost += trial_cost(trial.config)
    return seconds / cost if cost else None


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def dry_run(grid: Grid, trials: list[PlannedTrial], out_dir: Path | None, parallel: int,
            echo: Callable[[str], None] = print) -> None:
    """List the trials, their state in `out_dir` and the cost; a time estimate where trials of this
    grid already finished in `out_dir` (their measured seconds per image)."""
    states = {t.name: trial_state(out_dir / TRIALS_DIR / t.name, t.config)[0] if out_dir else "new" for t in trials}
    width = max(len(t.name) for t in trials)
    echo(f"{'trial'.ljust(width)}  state    cost (images through the model)")
    for trial in trials:
        echo(f"{trial.name.ljust(width)}  {states[trial.name].ljust(7)}  {trial_cost(trial.config):.3g}")
    todo = [t for t in trials if states[t.name] != "done"]
    total = sum(trial_cost(t.config) for t in todo)
    counts = {state: sum(1 for s in states.values() if s == state) for state in ("done", "stopped", "new")}
    echo(f"{len(trials)} trials ({counts['done']} done, {counts['stopped']} stopped, {counts['new']} new); "
         f"to run: {len(todo)} trials, {total:.3g} images through the model")
    rate = _seconds_per_cost(out_dir, trials) if out_dir else None
    if rate is None:
        echo("estimated time: unknown until trials of this grid have finished in --out (run some, e.g. with "
             "one seed, then --dry-run --out DIR estimates the rest from them)")
    else:
        echo(f"estimated time: {_duration(total * rate)} of one core, about {_duration(total * rate / parallel)} "
             f"with {parallel} at once (from the finished trials' {rate * 1e6:.3g} s per million images)")


def sweep(grid: Grid, out_dir: str | Path, backend, resume: bool = False,
          echo: Callable[[str], None] = print, trials: list[PlannedTrial] | None = None) -> dict[str, int]:
    """Run every trial of `grid` not yet finished in `out_dir`; then write the report.

    Returns counts: done (before), ran, failed."""
    out_dir = Path(out_dir).resolve()
    trials = expand(grid) if trials is None else trials
    for trial in trials:
        check_names(out_dir / TRIALS_DIR / trial.name, longest_file=TRIAL_CONFIG_FILE)
    lock = lock_folder(out_dir, "sweep")  # one writer per sweep folder, for the whole sweep
    try:
        return _sweep_locked(grid, trials, out_dir, backend, resume, echo)
    finally:
        lock.release()


def _same_trials(saved_grid: Path, trials: list[PlannedTrial]) -> bool:
    """Whether the grid a sweep started with plans the same trials (names and settings) as
    `trials`: a grid edited only in what it reports may continue the sweep."""
    try:
        saved = expand(load_grid(str(saved_grid)))
    except ConfigError:
        return False
    return [(t.name, to_dict(t.config)) for t in saved] == [(t.name, to_dict(t.config)) for t in trials]


def _sweep_locked(grid: Grid, trials: list[PlannedTrial], out_dir: Path, backend, resume: bool,
                  echo: Callable[[str], None]) -> dict[str, int]:
    if (out_dir / SWEEP_FILE).exists() and not resume:
        raise ConfigError(f"{out_dir} already holds a sweep ({SWEEP_FILE} exists); "
                          "fix: pass --resume to continue it, or choose another --out")
    saved_grid = out_dir / GRID_FILE
    if resume and saved_grid.is_file() and saved_grid.read_bytes() != grid.text.encode() \
            and not _same_trials(saved_grid, trials):
        raise ConfigError(
            f"{out_dir} was started with another grid (its {GRID_FILE} differs from {grid.source}); resuming with "
            "this one would replace its record and drop finished trials; nothing was changed; fix: --grid "
            f"{saved_grid} to continue it, or choose another --out for the new grid"
        )
    check_within(out_dir, [f"{TRIALS_DIR}/{t.name}" for t in trials])
    states, notes = {}, []
    for trial in trials:
        folder = out_dir / TRIALS_DIR / trial.name
        _check_same_settings(folder, trial.config)
        states[trial.name], note = trial_state(folder, trial.config)
        if note:
            notes.append(note)
        if states[trial.name] == "stopped" and not resume:
            raise ConfigError(f"{folder} holds a stopped run; fix: pass --resume")
    for note in notes:
        echo(note)
    write_atomic(out_dir / GRID_FILE, grid.text)
    write_atomic(out_dir / SWEEP_FILE, json.dumps(_sweep_record(grid, trials), indent=2) + "\n")

    todo = [
        Trial(t.name, to_dict(t.config), out_dir / TRIALS_DIR / t.name, resume=states[t.name] == "stopped")
        for t in trials if states[t.name] != "done"
    ]
    done_before = len(trials) - len(todo)
    echo(f"sweep: {len(trials)} trials, {done_before} already done, {len(todo)} to run on {backend.describe()}")
    counter = {"ran": 0, "failed": 0}

    def on_done(trial: Trial, result: TrialResult) -> None:
        elapsed = result.elapsed_s
        record = {"returncode": result.returncode, "elapsed_s": round(elapsed, 2), "resumed": trial.resume}
        write_atomic(trial.out_dir / TRIAL_FILE, json.dumps(record) + "\n")
        counter["ran"] += 1
        position = f"[{done_before + counter['ran']}/{len(trials)}]"
        if result.ok:
            summary = json.loads((trial.out_dir / "summary.json").read_text())
            echo(f"{position} {trial.name}: main {summary['final_main_accuracy']:.1f}%, backdoor (avg) "
                 f"{percent(summary['mean_backdoor_accuracy'], '%')}, {elapsed:.0f} s")
        else:
            counter["failed"] += 1
            echo(f"{position} {trial.name} FAILED (exit {result.returncode}): {result.log_tail} "
                 f"(see {trial.out_dir / 'log.txt'})")

    if todo:
        run_trials(todo, backend, on_done)
    write_report(out_dir, echo=echo)
    return {"done": done_before, "ran": counter["ran"], "failed": counter["failed"]}


# ----------------------------------------------------------------------------------------------
# report


def _read_sweep(out_dir: Path) -> dict[str, Any]:
    path = out_dir / SWEEP_FILE
    if not path.is_file():
        raise ConfigError(f"{out_dir} is not a sweep folder (no {SWEEP_FILE}); fix: --report the --out of a sweep")
    record = read_json_file(path, "a sweep record", "restore it from a copy, or run the sweep again in another --out")
    trials = record.get("trials") if isinstance(record, dict) else None
    if not isinstance(trials, list) or not isinstance(record.get("axes"), dict) or not all(
            isinstance(trial, dict) and isinstance(trial.get("levels"), dict) and isinstance(trial.get("name"), str)
            for trial in trials):
        raise ConfigError(f"{path} is not a sweep record (no axes or trials list); fix: restore it from a copy, or run "
                          "the sweep again in another --out")
    for trial in trials:
        inside(out_dir, trial.get("folder"), str(path))
    return record


def finished_rows(out_dir: Path, record: dict[str, Any], echo: Callable[[str], None] | None = None
                  ) -> list[dict[str, Any]]:
    """A row per finished trial whose files agree (sim.reporting.read_finished): its name, levels
    and summary figures; a damaged trial is left out, with a line to `echo`."""
    rows = []
    for trial in record["trials"]:
        try:
            summary = read_finished(inside(out_dir, trial["folder"], SWEEP_FILE))
        except ConfigError as error:
            if echo is not None:
                echo(f"{trial['name']}: left out of the report: {error}")
            continue
        if summary is None:
            continue
        rows.append({"trial": trial["name"], **trial["levels"], **{c: summary.get(c) for c in SUMMARY_COLUMNS}})
    return rows


def metric_title(metric: str, reference: dict[str, str] | None = None) -> str:
    if metric.endswith(DROP_SUFFIX):
        base = METRIC_TITLES[metric[: -len(DROP_SUFFIX)]].replace(" (%)", "")
        (axis, level), = reference.items()
        return f"{base}: drop from {axis}={level}" + (" (points)" if "accuracy" in base else "")
    return METRIC_TITLES[metric]


def add_drops(rows: list[dict[str, Any]], axes: list[str], reference: dict[str, str] | None,
              metrics: list[str]) -> list[dict[str, Any]]:
    """The rows with each `<figure>_drop` of `metrics`: the figure of the row whose reference axis is
    at the reference level and every other level (the seed included) equal, minus the row's own;
    None where that row did not finish."""
    drops = [m for m in metrics if m.endswith(DROP_SUFFIX)]
    if not drops:
        return rows
    (axis, level), = reference.items()
    others = [name for name in axes if name != axis]
    at_reference = {tuple(row[name] for name in others): row for row in rows if row[axis] == level}
    out = []
    for row in rows:
        match = at_reference.get(tuple(row[name] for name in others))
        extra = {}
        for metric in drops:
            figure = metric[: -len(DROP_SUFFIX)]
            known = match is not None and match.get(figure) is not None and row.get(figure) is not None
            extra[metric] = match[figure] - row[figure] if known else None
        out.append({**row, **extra})
    return out


def _cell(value: Any) -> str:
    return "" if value is None else (repr(value) if isinstance(value, float) else str(value))


def results_csv(rows: list[dict[str, Any]], axes: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = ["trial", *axes, *SUMMARY_COLUMNS]
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])
    return out.getvalue()


def group_estimates(rows: list[dict[str, Any]], axes: list[str], replicate: str | None, metric: str):
    """{combination of the non-replicate axes: Estimate of `metric` over the replicates}, in row order."""
    groups: dict[tuple, list[float]] = {}
    keys = [axis for axis in axes if axis != replicate]
    for row in rows:
        key = tuple(row[axis] for axis in keys)
        groups.setdefault(key, [])
        if row.get(metric) is not None:
            groups[key].append(row[metric])
    return {key: (mean_interval(values) if values else None) for key, values in groups.items()}


def table_markdown(rows: list[dict[str, Any]], axes: list[str], replicate: str | None) -> str:
    keys = [axis for axis in axes if axis != replicate]
    estimates = {metric: group_estimates(rows, axes, replicate, metric) for metric in TABLE_METRICS}
    counts: dict[tuple, int] = {}
    for row in rows:
        key = tuple(row[axis] for axis in keys)
        counts[key] = counts.get(key, 0) + 1
    lines = [
        f"Mean ± half-width of the Student-t 95% interval over {replicate or 'replicates'} (n per row); "
        "accuracies in percent; a single run shows its value alone.",
        "",
        *table_head([*keys, "n", *(METRIC_TITLES[m] for m in TABLE_METRICS)], text_columns=len(keys)),
    ]
    for key, n in counts.items():
        lines.append(table_row([*key, str(n), *(estimate_text(estimates[m][key]) for m in TABLE_METRICS)]))
    return "\n".join(lines) + "\n"


def plot_metric(rows: list[dict[str, Any]], axes: dict[str, list[str]], replicate: str | None, metric: str,
                x_axis: str, path: Path, reference: dict[str, str] | None = None) -> Path:
    """`metric` (mean and 95% interval over the replicates) against the levels of `x_axis`: one panel per
    level of the first other axis, one line per combination of the rest (`sim.plots.plot_levels`)."""
    from sim.plots import plot_levels  # matplotlib only when a report draws

    others = [axis for axis in axes if axis not in (x_axis, replicate)]
    panel_axis, line_axes = (others[0], others[1:]) if others else (None, [])
    # Panels for the levels with finished trials (an excluded or unfinished level draws nothing).
    panels = [level for level in axes[panel_axis] if any(row[panel_axis] == level for row in rows)] \
        if panel_axis else [None]
    estimates = group_estimates(rows, list(axes), replicate, metric)
    keys = [axis for axis in axes if axis != replicate]
    return plot_levels(
        {tuple(zip(keys, key)): estimate for key, estimate in estimates.items()}, axes, x_axis, panel_axis, line_axes,
        panels, ylabel=metric_title(metric, reference),
        title=f"{metric_title(metric, reference)} against {x_axis}: mean and 95% interval over {replicate or 'runs'}",
        path=path)


HEATMAP_COLUMNS = ("row", "column", "panel", "n", "mean", "half_width", "status")


def heatmap_cells(rows: list[dict[str, Any]], record: dict[str, Any], layout: tuple[str, str, list[str]],
                  metric: str) -> list[dict[str, Any]]:
    """A cell per (panel, row level, column level) of `layout`, in the axes' level order: `n`
    finished values of `metric` over the replicates, their mean and Student-t 95% half-width
    (sim.stats.mean_interval; None for one value), and `status`: `value`, `excluded` (no trial
    of the grid has these levels) or `n/a` (no finished value)."""
    axes = record["axes"]
    row_axis, column_axis, panel_axes = layout
    replicate = record.get("replicate_axis")
    keys = [axis for axis in axes if axis != replicate]
    planned = {tuple(trial["levels"].get(axis) for axis in keys) for trial in record["trials"]}
    values: dict[tuple, list[float]] = {}
    for row in rows:
        if row.get(metric) is not None:
            values.setdefault(tuple(row[axis] for axis in keys), []).append(row[metric])
    cells = []
    for panel in itertools.product(*(axes[axis] for axis in panel_axes)):
        for row_level in axes[row_axis]:
            for column_level in axes[column_axis]:
                levels = {row_axis: row_level, column_axis: column_level, **dict(zip(panel_axes, panel))}
                key = tuple(levels[axis] for axis in keys)
                found = values.get(key, [])
                estimate = mean_interval(found) if found else None
                status = "value" if found else ("excluded" if key not in planned else "n/a")
                cells.append({"row": row_level, "column": column_level,
                              "panel": ", ".join(f"{a}={v}" for a, v in zip(panel_axes, panel)),
                              "n": len(found), "mean": estimate.mean if estimate else None,
                              "half_width": estimate.half_width if estimate else None, "status": status})
    return cells


def heatmap_csv(cells: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEATMAP_COLUMNS)
    for cell in cells:
        writer.writerow([_cell(cell[column]) for column in HEATMAP_COLUMNS])
    return out.getvalue()


def plot_heatmap(cells: list[dict[str, Any]], record: dict[str, Any], layout: tuple[str, str, list[str]],
                 metric: str, path: Path, reference: dict[str, str] | None = None) -> Path:
    """The cells of `heatmap_cells` drawn by `sim.plots.plot_heatmap`, accuracies on a 0-100 scale."""
    from sim.plots import plot_heatmap as draw  # matplotlib only when a report draws

    row_axis, column_axis, _ = layout
    replicate = record.get("replicate_axis")
    scale = (0.0, 100.0) if metric.endswith("_accuracy") else None
    if metric.endswith(DROP_SUFFIX):  # a panel without the reference level has no difference to show
        shown = {cell["panel"] for cell in cells if cell["mean"] is not None}
        cells = [cell for cell in cells if cell["panel"] in shown] or cells
    title = metric_title(metric, reference)
    paired = f", paired by {replicate}" if metric.endswith(DROP_SUFFIX) and replicate else ""
    return draw(cells, record["axes"][row_axis], record["axes"][column_axis], row_axis, column_axis,
                label=title, scale=scale,
                title=f"{title}: mean ± 95% half-width over {replicate or 'runs'}{paired}", path=path)


def write_report(out_dir: str | Path, metrics: list[str] | None = None, axis: str | None = None,
                 echo: Callable[[str], None] = print, rows: str | None = None, panels: str | None = None,
                 reference: dict[str, str] | None = None) -> list[Path]:
    """results.csv, table.md and the plots (the heatmaps among them), rebuilt from the finished trials
    in `out_dir`; `metrics`, `axis`, `rows`, `panels` and `reference` replace the grid's report options."""
    out_dir = Path(out_dir)
    if not (out_dir / SWEEP_FILE).is_file():
        _read_sweep(out_dir)  # refuses with the reason
    with FolderLock(out_dir, "sweep"):
        return _write_report(out_dir, metrics, {"axis": axis, "rows": rows, "panels": panels,
                                                "reference": reference}, echo)


def _write_report(out_dir: Path, metrics: list[str] | None, options: dict[str, str | None],
                  echo: Callable[[str], None]) -> list[Path]:
    record = _read_sweep(out_dir)
    axes = record["axes"]
    report = {**DEFAULT_REPORT, **(record.get("report") or {})}
    if metrics:
        report["metrics"] = list(metrics)
    for key in ("rows", "panels"):
        if options.get("axis") and not options.get(key) and report.get(key) == options["axis"]:
            report[key] = None  # the grid's choice becomes the columns: this one takes its default
    report.update({key: value for key, value in options.items() if value})
    report = check_report(report, list(axes), "the report options", axes)
    rows = add_drops(finished_rows(out_dir, record, echo), list(axes), report.get("reference"), report["metrics"])
    replicate = record.get("replicate_axis")
    written = [out_dir / RESULTS_FILE, out_dir / TABLE_FILE]
    write_atomic(written[0], results_csv(rows, list(axes)))
    write_atomic(written[1], table_markdown(rows, list(axes), replicate))
    if rows and report["axis"]:
        for metric in report["metrics"]:
            written.append(plot_metric(rows, axes, replicate, metric, report["axis"],
                                       out_dir / f"{metric}-vs-{_safe(report['axis'])}.png", report.get("reference")))
    layout = heatmap_layout(report, list(axes))
    if rows and layout:
        for metric in report["metrics"]:
            cells = heatmap_cells(rows, record, layout, metric)
            csv_path = out_dir / f"heatmap_{metric}.csv"
            write_atomic(csv_path, heatmap_csv(cells))
            written += [csv_path, plot_heatmap(cells, record, layout, metric, out_dir / f"heatmap_{metric}.png",
                                               report.get("reference"))]
    echo(f"report: {len(rows)} of {len(record['trials'])} trials finished; " + ", ".join(str(p) for p in written))
    return written
