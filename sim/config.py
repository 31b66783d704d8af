"""Run configuration: the dataclass tree, YAML presets, `--set` overrides and validation.

A setting has one name everywhere: the YAML key, the dataclass field and the `--set` path are the
same words (`client_defense.alpha`). Settings are merged in this order, later wins:

    defaults  <-  preset (configs/<name>.yaml)  <-  --config FILE  <-  --set key=value ...

and the result is validated before any data is loaded, so a typo costs seconds, not a run.
Every problem is raised as `ConfigError` naming the setting, the bad value, the allowed values
and a fix that can be pasted onto the command line.

Preset files may hold three keys that are not settings: `description:` (one line, shown by
`list-presets`), `compare:` (the variants `sim compare` runs, see `compare_variants`) and
`seeds:` (the seeds `sim compare` runs every variant for, see `parse_seeds`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence


from sim.attack_effect import SHADOW_KEPT, SHADOW_KEPT_RULES
from sim.attacks.data.registry import DATA_POISONING
from sim.attacks.data_poisoning import TRIGGER_VALUES
from sim.attacks.model_poisoning import MODEL_POISONING
from sim.data import DATASET_NAMES, PARTITION_SCHEMES, check_synthetic_size
from sim.defenses.client import CLIENT_DEFENSES, check_client_defense, client_defense_class
from sim.defenses.privacy import PRIVACY_TYPES, check_privacy
from sim.engines.client_training import check_training_settings
from sim.engines.batched import check_memory_format
from sim.engines.registry import AUTO, ENGINES, resolve_engine
from sim.engines.schedules import LR_SCHEDULES
from sim import yaml_input
from sim.io import COMPARE_INPUT_FILE
from sim.errors import ConfigError
from sim.presets import CONFIGS_DIR, _read_yaml, list_presets, preset_path  # noqa: F401
from sim.settings import check_value, is_int, is_setting, setting, show
from sim.models import MEMORY_FORMAT_CHOICES, MODELS
from sim.selection import SCHEDULES as SELECTION_SCHEDULES
from sim.selection import SELECTION_RNGS, Selector
from sim.server.registry import AGGREGATORS, UNAVAILABLE_AGGREGATORS, check_aggregator


# Keys a preset or config file may carry besides the settings themselves.
PRESET_ONLY_KEYS = ("description", "compare", "seeds")

# Every choice list is its registry's keys: the component that owns a name is the one place it is
# spelled.
DATASETS = tuple(DATASET_NAMES)
PARTITIONS = tuple(PARTITION_SCHEMES)
MODEL_NAMES = tuple(MODELS)
ENGINE_NAMES = (*ENGINES, AUTO)
SCHEDULES = tuple(SELECTION_SCHEDULES)
ATTACKS = tuple(DATA_POISONING)
CLIENT_DEFENSE_NAMES = tuple(CLIENT_DEFENSES)
AGGREGATOR_NAMES = tuple(AGGREGATORS)
MODEL_POISONING_TYPES = tuple(MODEL_POISONING)
PRIVACY_NAMES = tuple(PRIVACY_TYPES)
DEVICE_PATTERN = re.compile(r"^(cpu|cuda|cuda:\d+)$")
# Seeds one command may run (compare --seeds, a preset's seeds:): far more than any study needs.
MAX_SEEDS = 10_000
# torch's generators take seeds up to 2**64 - 1.
SEED_MAX = 2**64 - 1

# Input shape each model is built for; `mlp` flattens whatever it gets.
MODEL_INPUT = {"fmnist_cnn": "1x28x28", "cifar_cnn": "3x32x32"}
DATASET_INPUT = {"fashion_mnist": "1x28x28", "mnist": "1x28x28", "cifar10": "3x32x32", "synthetic": "1x28x28"}
DATASET_TRAIN_SIZES = {"fashion_mnist": 60000, "mnist": 60000, "cifar10": 50000}  # synthetic: its own size
DATASET_CLASSES = {"fashion_mnist": 10, "mnist": 10, "cifar10": 10, "synthetic": 10}


def component_section(name: str, shared: list[tuple[str, Any, Any]], registry: dict[str, Any]) -> type:
    """A config section: its shared settings, then one subsection per registered component that
    declares settings, named like the component (`server.sparsefed.k`), in registry order."""
    fields = list(shared)
    for component, cls in registry.items():
        settings_class = getattr(cls, "settings", None)
        if settings_class is not None:
            fields.append((component, settings_class, field(default_factory=settings_class)))
    return dataclasses.make_dataclass(name, fields)


def _copy_field(declared: dataclasses.Field) -> Any:
    if declared.default_factory is not dataclasses.MISSING:
        return field(default_factory=declared.default_factory, metadata=declared.metadata)
    return field(default=declared.default, metadata=declared.metadata)


def flat_section(name: str, shared: list[tuple[str, Any, Any]], registry: dict[str, Any]) -> type:
    """A config section: its shared settings, then every setting the registered components declare,
    in registry order, in the section itself (`client_defense.alpha`): a family of components that
    share their settings. A name declared twice must be declared alike."""
    fields = list(shared)
    seen: dict[str, dataclasses.Field] = {}
    for component, cls in registry.items():
        for declared_field in dataclasses.fields(cls.settings) if getattr(cls, "settings", None) else ():
            earlier = seen.get(declared_field.name)
            if earlier is None:
                seen[declared_field.name] = declared_field
                fields.append((declared_field.name, declared_field.type, _copy_field(declared_field)))
            elif (earlier.default, dict(earlier.metadata)) != (declared_field.default, dict(declared_field.metadata)):
                raise TypeError(f"{name}: {component} declares {declared_field.name!r} unlike an earlier component")
    return dataclasses.make_dataclass(name, fields)


@dataclass
class DataConfig:
    dataset: str = setting("fashion_mnist", "str", choices=DATASETS)
    data_dir: str | None = setting(None, "str", nullable=True)
    partition: str = setting("iid", "str", choices=PARTITIONS)
    dirichlet_beta: float = setting(0.5, "float", low=0, low_open=True)
    shards_per_client: int = setting(2, "int", low=1)
    synthetic_train_size: int = setting(2000, "int", low=1)
    synthetic_test_size: int = setting(500, "int", low=1)


@dataclass
class ClientsConfig:
    num_clients: int = setting(100, "int", low=1)
    num_malicious: int = setting(25, "int", low=0)
    clients_per_round: int = setting(10, "int", low=1)


@dataclass
class SelectionConfig:
    schedule: str = setting("random", "str", choices=SCHEDULES)
    period: int = setting(10, "int", low=1)
    burst_rounds: int = setting(2, "int", low=0)
    burst_malicious: int = setting(6, "int", low=0)
    fixed_malicious: int = setting(2, "int", low=0)
    malicious_counts: list[int] = setting([], "int_list", low=0)
    # simulator: seeded streams; authors: the LeadFL code's legacy-numpy draws (sim.selection).
    rng: str = setting("simulator", "str", choices=SELECTION_RNGS)
    # Rounds whose selection is replaced by override_malicious malicious + benign clients
    # (the LeadFL code: rounds 0, 10, 12 with 5 + 5).
    override_rounds: list[int] = setting([], "int_list", low=0)
    override_malicious: int = setting(5, "int", low=0)


@dataclass
class TrainingConfig:
    lr: float = setting(0.01, "float", low=0, low_open=True)
    momentum: float = setting(0.1, "float", low=0, high=1, high_open=True)
    batch_size: int = setting(16, "int", low=1)
    local_epochs: int = setting(10, "int", low=1)
    local_steps: int | None = setting(None, "int", low=1, nullable=True)
    # Local learning rate over rounds (sim.engines.schedules.local_lr): constant, step (times lr_gamma every
    # lr_step_rounds rounds) or cosine (from lr down towards lr_min over the run's rounds).
    lr_schedule: str = setting("constant", "str", choices=LR_SCHEDULES)
    lr_step_rounds: int = setting(10, "int", low=1)
    lr_gamma: float = setting(0.5, "float", low=0, high=1, low_open=True)
    lr_min: float = setting(0.0, "float", low=0)
    # Memory layout of the model's conv weights and the image batches in local training
    # (sim.models.MEMORY_FORMATS): contiguous, channels_last (NHWC, faster convolutions on CPU; equal
    # results up to float rounding; sequential engine only), or auto (channels_last where the
    # sequential engine trains on a CPU, contiguous otherwise).
    memory_format: str = setting("contiguous", "str", choices=MEMORY_FORMAT_CHOICES)


# The data-poisoning attack of the malicious clients (sim.attacks.data): shared settings, then each
# attack's own under its name (`attack.backdoor.blend`).
AttackConfig = component_section("AttackConfig", [
    ("type", str, setting("backdoor", "str", choices=ATTACKS)),
    # The class the triggered test set is scored against (under every attack, sim.metrics).
    ("target_label", int, setting(8, "int", low=0)),
    # Malicious update scale factor.
    ("boost", float, setting(1.0, "float", low=0, low_open=True)),
    # data_range: the trigger takes the data's max/min; authors: the LeadFL code's normalised values.
    ("trigger_values", str, setting("data_range", "str", choices=TRIGGER_VALUES)),
    # The malicious clients run the client defense too, while they poison (sim.engines.client_training).
    ("follow_client_defense", bool, setting(False, "bool")),
], {name: cls for name, cls in DATA_POISONING.items() if cls is not None})


# The client defense of the protocol-following clients (sim.defenses.client): its type, then the
# settings each rule declares, in one flat section (`client_defense.alpha`).
ClientDefenseConfig = flat_section("ClientDefenseConfig", [
    ("type", str, setting("none", "str", choices=CLIENT_DEFENSE_NAMES)),
], CLIENT_DEFENSES)


# Replaces the selected malicious clients' uploads (sim.attacks.model_poisoning); none = off.
ModelPoisoningConfig = component_section("ModelPoisoningConfig", [
    ("type", str, setting("none", "str", choices=MODEL_POISONING_TYPES)),
], {name: cls for name, cls in MODEL_POISONING.items() if cls is not None})


@dataclass
class PrivacyConfig:
    # Client-level local DP on the protocol-following uploads (sim.defenses.privacy); none = off.
    type: str = setting("none", "str", choices=PRIVACY_NAMES)
    clip: float = setting(3.0, "float", low=0, low_open=True)
    epsilon: float = setting(5.0, "float", low=0, low_open=True)
    delta: float = setting(1e-8, "float", low=0, high=1, low_open=True, high_open=True)
    rdp_order: float | None = setting(None, "float", low=1, low_open=True, nullable=True)


ServerConfig = component_section("ServerConfig", [
    ("aggregator", str, setting("multikrum", "str", choices=AGGREGATOR_NAMES)),
    # The Byzantine count the Krum family assumes; null: from the malicious share (sim.server.krum).
    ("f", "int | None", setting(None, "int", low=0, nullable=True)),
], AGGREGATORS)


@dataclass
class EvalConfig:
    batch_size: int = setting(1000, "int", low=1)
    # Score on the first `test_size` test images only (null = the whole test set): evaluation of
    # every round dominates short CPU runs.
    test_size: int | None = setting(None, "int", low=1, nullable=True)
    # Score every `every` rounds (rounds every-1, 2*every-1, ...) and always the last one; the
    # other rounds' scores stay empty in metrics.csv (sim.metrics.is_scored_round). For sweeps
    # where only the final figures matter.
    every: int = setting(1, "int", low=1)


@dataclass
class MetricsConfig:
    # A shadow run in which the malicious clients train as benign ones, and the distance of the
    # global model from it every round (sim.attack_effect; about twice the run's cost).
    attack_effect: bool = setting(False, "bool")
    # What the shadow aggregates (docs/algorithms.md §6): `own`, its rows under its own instance of
    # the rule; `run`, the mean of its rows at the positions the run's aggregator kept (only for
    # the rules whose aggregate is the mean of the rows they keep: sim.attack_effect.SHADOW_KEPT_RULES).
    shadow_kept: str = setting("own", "str", choices=SHADOW_KEPT)
    # Each round, where the malicious uploads sit among the benign ones as the server receives
    # them: norms, distance and cosine to the benign centre (sim.upload_stats; metrics.csv columns).
    upload_stats: bool = setting(False, "bool")


@dataclass
class Config:
    seed: int = setting(0, "int", low=0, high=SEED_MAX)
    device: str = setting("cpu", "str")
    rounds: int = setting(80, "int", low=1)
    engine: str = setting("sequential", "str", choices=ENGINE_NAMES)
    # Clients stacked per batch by the batched engine (null: as many as free memory allows).
    client_chunk: int | None = setting(None, "int", low=1, nullable=True)
    data: DataConfig = field(default_factory=DataConfig)
    model: str = setting("fmnist_cnn", "str", choices=MODEL_NAMES)
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    model_poisoning: ModelPoisoningConfig = field(default_factory=ModelPoisoningConfig)
    client_defense: ClientDefenseConfig = field(default_factory=ClientDefenseConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


# ----------------------------------------------------------------------------------------------
# settings that moved

# Old dotted path -> the path(s) that hold it now: a component's settings moved under its name
# (`server.trim_beta` -> `server.trimmed_mean.beta`). A YAML file (preset, --config, a run
# folder's config.yaml, a compare section) that uses an old name is read under the new one, with
# a notice for files a user writes; `--set` with an old name is refused, naming the new one.
MOVED_SETTINGS: dict[str, tuple[str, ...]] = {
    "attack.blend": ("attack.backdoor.blend",),
    "attack.blend_weight": ("attack.backdoor.blend_weight",),
    "server.m": ("server.multikrum.m",),
    "server.trim_beta": ("server.trimmed_mean.beta",),
    "server.sparsefed_k": ("server.sparsefed.k",),
    "server.sparsefed_clip": ("server.sparsefed.clip",),
    "server.fltk_counters": ("server.fltk_multikrum.counters", "server.fltk_bulyan.counters"),
    "model_poisoning.lie_z": ("model_poisoning.lie.z",),
    **{
        f"model_poisoning.poisonedfl_{name}": (f"model_poisoning.poisonedfl.{name}",)
        for name in ("scale", "beta", "check_period", "min_scale", "confidence", "noise", "flip_prob", "coordinates")
    },
}


def _notice(source: str, old: str, new: tuple[str, ...]) -> None:
    print(f"note: {source}: '{old}' is now {' and '.join(repr(path) for path in new)}; read under the new "
          f"name{'s' if len(new) > 1 else ''} (rename it in the file to silence this note)", file=sys.stderr)


def migrate_settings(raw: Any, source: str | None = None) -> Any:
    """A copy of the nested settings `raw` with every moved setting (`MOVED_SETTINGS`) under its
    new path; a value already given under the new path wins. `source` names a file a user wrote:
    each move is then noted on stderr (None: a saved run folder, read silently)."""
    if not isinstance(raw, dict):
        return raw
    migrated = copy.deepcopy(raw)
    for old, new_paths in MOVED_SETTINGS.items():
        section, key = old.split(".")
        node = migrated.get(section)
        if not isinstance(node, dict) or key not in node:
            continue
        value = node.pop(key)
        for new in new_paths:
            target = migrated
            *parents, leaf = new.split(".")
            for part in parents:
                if not isinstance(target.get(part), dict):
                    target[part] = {}
                target = target[part]
            target.setdefault(leaf, copy.deepcopy(value))
        if source is not None:
            _notice(source, old, new_paths)
    return migrated


def migrate_pairs(pairs: list[tuple[str, Any]], source: str | None) -> list[tuple[str, Any]]:
    """`migrate_settings` for (dotted path, value) pairs, e.g. a compare variant's settings."""
    migrated = []
    for path, value in pairs:
        if path in MOVED_SETTINGS:
            if source is not None:
                _notice(source, path, MOVED_SETTINGS[path])
            migrated.extend((new, value) for new in MOVED_SETTINGS[path])
        else:
            migrated.append((path, value))
    return migrated


# ----------------------------------------------------------------------------------------------
# dict <-> dataclass


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain nested dicts and lists, in schema order (what `config.yaml` holds)."""
    return dataclasses.asdict(cfg)


def _is_section(dc_field: dataclasses.Field) -> bool:
    return not is_setting(dc_field)


def _section_class(dc_field: dataclasses.Field) -> type:
    return dc_field.default_factory  # sections are declared as field(default_factory=SectionClass)


def _fields_by_name(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def setting_paths(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted setting path, e.g. `client_defense.alpha`, in schema order."""
    paths = []
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        if _is_section(f):
            paths.extend(setting_paths(_section_class(f), path + "."))
        else:
            paths.append(path)
    return paths


def _did_you_mean(path: str) -> str | None:
    """The closest known setting path to a misspelled one, or None."""
    parts = path.split(".")
    best, best_score = None, 0.0
    for known in setting_paths():
        known_parts = known.split(".")
        if len(known_parts) != len(parts):
            continue
        # Every component must look alike: `server.zzz` is not `server.m` just because they
        # share `server.`.
        score = min(difflib.SequenceMatcher(None, a, b).ratio() for a, b in zip(parts, known_parts))
        if score > best_score:
            best, best_score = known, score
    if best_score >= 0.6:
        return best
    # `--set alpha=0.3`: the leaf name is right but the section is missing or wrong.
    leaves: dict[str, str] = {}
    for known in setting_paths():
        leaves.setdefault(known.rsplit(".", 1)[-1], known)
    close = difflib.get_close_matches(parts[-1], list(leaves), n=1, cutoff=0.75)
    return leaves[close[0]] if close else None


def _unknown_key_error(path: str, cls: type, source: str) -> ConfigError:
    if path in MOVED_SETTINGS:
        new = MOVED_SETTINGS[path]
        return ConfigError(
            f"setting '{path}' in {source} has moved to {' and '.join(repr(p) for p in new)}; "
            f"fix: rename it to '{new[0]}'"
        )
    guess = _did_you_mean(path)
    if guess is not None:
        return ConfigError(
            f"unknown setting '{path}' in {source}; did you mean '{guess}'? "
            f"fix: rename it to '{guess}'"
        )
    allowed = ", ".join(_fields_by_name(cls))
    return ConfigError(
        f"unknown setting '{path}' in {source}; allowed at this level: {allowed}; "
        "fix: remove it or use one of those names"
    )


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... (a {type(value).__name__})"


def _check_keys(raw: Any, cls: type, source: str, prefix: str = "") -> None:
    """Reject unknown keys and sections given as scalars, recursively."""
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where} in {source} must be a mapping of settings, got {_short_repr(raw)}; "
            f"fix: write it as 'key: value' lines"
        )
    fields = _fields_by_name(cls)
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str) or key not in fields:
            raise _unknown_key_error(str(path), cls, source)
        if _is_section(fields[key]):
            if not isinstance(value, dict):
                example = setting_paths(_section_class(fields[key]), path + ".")[0]
                raise ConfigError(
                    f"'{path}' in {source} is a section, not a value (got {value!r}); "
                    f"fix: set one of its keys, e.g. {example}=..."
                )
            _check_keys(value, _section_class(fields[key]), source, path + ".")


def _merge(base: dict, update: dict) -> dict:
    """Deep-merge `update` into a copy of `base`; sections merge, values replace."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _coerce(value: Any, kind: str) -> Any:
    """Lenient conversions that carry no ambiguity; everything else is left for `validate`."""
    if kind == "float":
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        # PyYAML reads `1e-3` (no dot) as a string; accept what Python reads as a float.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
    if kind == "int_list" and isinstance(value, tuple):
        return list(value)
    return value


def _build(cls: type, raw: dict) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        if _is_section(f):
            kwargs[f.name] = _build(_section_class(f), raw[f.name])
        else:
            kwargs[f.name] = _coerce(raw[f.name], f.metadata["kind"])
    return cls(**kwargs)


def config_from_dict(raw: dict, source: str = "the config") -> Config:
    """Build and validate a Config from nested dicts (missing keys take their defaults); moved
    settings are read under their new names (`migrate_settings`)."""
    raw = migrate_settings(raw)
    _check_keys(raw, Config, source)
    cfg = _build(Config, raw)
    validate(cfg)
    return cfg


# ----------------------------------------------------------------------------------------------
# presets, files and overrides


@dataclass
class ConfigSource:
    """One YAML layer: its settings, and the non-setting keys presets carry."""

    name: str
    settings: dict
    description: str = ""
    compare: dict | None = None
    seeds: Any = None
    saved: bool = False  # a comparison's own record, not a file a user wrote


def read_source(path: Path, name: str) -> ConfigSource:
    raw = _read_yaml(path, name)
    description = raw.pop("description", "")
    compare = raw.pop("compare", None)
    seeds = raw.pop("seeds", None)
    if seeds is not None:
        parse_seeds(seeds, f"'seeds' in {name}")  # a bad list is reported before anything runs
    if not isinstance(description, str):
        raise ConfigError(f"'description' in {name} must be one line of text, got {description!r}")
    if compare is not None and not isinstance(compare, dict):
        raise ConfigError(
            f"'compare' in {name} must map each variant label to its settings, got {compare!r}; "
            "fix: e.g. compare: {leadfl: {client_defense.type: leadfl}}"
        )
    # A comparison's own record (what `compare --resume` reads back) is migrated silently, as a
    # run folder's config is: its author wrote the settings under the names of their time.
    saved = path.name == COMPARE_INPUT_FILE
    raw = migrate_settings(raw, None if saved else name)
    _check_keys(raw, Config, name)
    return ConfigSource(name, raw, description, compare, seeds, saved)


def _sources(preset: str | None, path: str | Path | None) -> list[ConfigSource]:
    sources = []
    if preset is not None:
        sources.append(read_source(preset_path(preset), f"preset '{preset}'"))
    if path is not None:
        sources.append(read_source(Path(path), f"config file '{path}'"))
    return sources


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", YAML-parsed value)."""
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"--set {text!r} must look like key=value; fix: e.g. --set client_defense.type=leadfl"
        )
    value = yaml_input.load(value_text, f"--set {key}={value_text}") if value_text.strip() else None
    return key, value




def _override_layer(overrides: Iterable[str | tuple[str, Any]], source: str) -> dict:
    """Turn `a.b=value` strings (or (path, value) pairs) into one nested dict, checking paths."""
    layer: dict = {}
    for item in overrides:
        path, value = parse_override(item) if isinstance(item, str) else item
        cls = Config
        node = layer
        parts = path.split(".")
        for depth, part in enumerate(parts):
            fields = _fields_by_name(cls)
            prefix = ".".join(parts[: depth + 1])
            if part not in fields:
                raise _unknown_key_error(path, cls, source)
            last = depth == len(parts) - 1
            if _is_section(fields[part]):
                cls = _section_class(fields[part])
                if last:
                    if not isinstance(value, dict):
                        example = setting_paths(cls, prefix + ".")[0]
                        raise ConfigError(
                            f"'{prefix}' is a section, not a value (got {value!r}) in {source}; "
                            f"fix: set one of its keys, e.g. {example}=..."
                        )
                    _check_keys(value, cls, source, prefix + ".")
                    node[part] = _merge(node.get(part, {}), value)
                else:
                    node = node.setdefault(part, {})
            else:
                if not last:
                    raise ConfigError(
                        f"'{prefix}' is a value, not a section, in {source} ('{path}'); "
                        f"fix: --set {prefix}=..."
                    )
                node[part] = value
    return layer


def load_config(
    preset: str | None = None,
    path: str | Path | None = None,
    overrides: Iterable[str | tuple[str, Any]] = (),
) -> Config:
    """defaults <- preset YAML <- config file <- overrides, then `validate`."""
    merged = to_dict(Config())
    for source in _sources(preset, path):
        merged = _merge(merged, source.settings)
    merged = _merge(merged, _override_layer(overrides, "--set"))
    return config_from_dict(merged)


def apply_overrides(cfg: Config, overrides: Iterable[str | tuple[str, Any]], source: str = "--set") -> Config:
    """A new, validated Config: `cfg` with `overrides` applied on top."""
    merged = _merge(to_dict(cfg), _override_layer(overrides, source))
    return config_from_dict(merged, source)


def _flatten(settings: dict, prefix: str = "") -> list[tuple[str, Any]]:
    pairs = []
    for key, value in settings.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            pairs.extend(_flatten(value, path + "."))
        else:
            pairs.append((path, value))
    return pairs


def compare_variants(preset: str | None = None, path: str | Path | None = None) -> dict[str, list[tuple[str, Any]]]:
    """The `compare:` section (the later source wins) as {label: [(setting path, value), ...]}.

    A variant's settings may be written with dotted keys (`client_defense.type: leadfl`),
    nested (`client_defense: {type: leadfl}`), or both. An empty variant (`none: {}`) runs the
    base config as is.
    """
    section = None
    source_name = ""
    saved = False
    for source in _sources(preset, path):
        if source.compare is not None:
            section, source_name, saved = source.compare, source.name, source.saved
    if section is None:
        return {}
    variants = {}
    seen: dict[str, Any] = {}  # label as text -> the label as written
    for label, settings in section.items():
        if settings is None:
            settings = {}
        if not isinstance(settings, dict):
            raise ConfigError(
                f"compare.{label} in {source_name} must map settings to values, got {settings!r}; "
                "fix: e.g. {client_defense.type: leadfl}"
            )
        if str(label) in seen:
            raise ConfigError(
                f"compare labels {seen[str(label)]!r} and {label!r} in {source_name} are the same label once written as "
                "text, so their runs would share one folder; fix: rename one of them"
            )
        seen[str(label)] = label
        variants[str(label)] = migrate_pairs(_flatten(settings), None if saved else f"compare.{label} in {source_name}")
    return variants


_SEED_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_seeds(value: Any, source: str = "--seeds") -> list[int]:
    """Seeds from `0-4`, `0,2,5`, `0-2,7`, one int, or a YAML list of ints; in the given order,
    without repeats."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int):
        items: list[Any] = [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [part.strip() for part in str(value).split(",")]
    seeds: list[int] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            span = [item]
        else:
            match = _SEED_RANGE.match(str(item).strip())
            if not match or (match.group(2) is not None and int(match.group(2)) < int(match.group(1))):
                raise ConfigError(
                    f"{source}: {item!r} in {value!r} is not a seed or a range of seeds (whole numbers >= 0, "
                    "a range low-high with low <= high); fix: e.g. 0-4 or 0,2,5"
                )
            low = int(match.group(1))
            high = int(match.group(2) or low)
            if high - low + 1 + len(seeds) > MAX_SEEDS:
                raise ConfigError(f"{source}: {item!r} in {value!r} asks for {high - low + 1} seeds, more than the "
                                  f"{MAX_SEEDS} one command may run; fix: e.g. 0-4")
            span = list(range(low, high + 1))
        for seed in span:
            if seed in seeds:
                raise ConfigError(f"{source}: seed {seed} appears twice in {value!r}; fix: list each seed once")
            seeds.append(seed)
    if not seeds:
        raise ConfigError(f"{source}: no seeds in {value!r}; fix: e.g. 0-4")
    return seeds


def compare_seeds(preset: str | None = None, path: str | Path | None = None) -> list[int] | None:
    """The `seeds:` key of the preset or config file (the later source wins), or None."""
    seeds = None
    for source in _sources(preset, path):
        if source.seeds is not None:
            seeds = parse_seeds(source.seeds, f"'seeds' in {source.name}")
    return seeds


# ----------------------------------------------------------------------------------------------
# validation


def _suggested_defaults(obj: Any, cls: type) -> Any:
    """The defaults a fix suggests: in the clients section, ones that fit the given num_clients."""
    defaults = cls()
    if cls is ClientsConfig and is_int(obj.num_clients) and obj.num_clients >= 1:
        defaults.num_malicious = min(defaults.num_malicious, obj.num_clients // 4)
        defaults.clients_per_round = min(defaults.clients_per_round, obj.num_clients)
    return defaults


def _check_tree(obj: Any, cls: type, prefix: str = "") -> None:
    if not isinstance(obj, cls):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a {cls.__name__}, got {type(obj).__name__}")
    defaults = _suggested_defaults(obj, cls)
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        value = getattr(obj, f.name)
        if _is_section(f):
            _check_tree(value, _section_class(f), path + ".")
        else:
            check_value(path, value, f.metadata, getattr(defaults, f.name))


def validate(cfg: Config) -> Config:
    """Check every setting (type, choices, range) and the ones that constrain each other.

    Returns `cfg` unchanged so it can be chained; raises ConfigError on the first problem.
    """
    aggregator = getattr(getattr(cfg, "server", None), "aggregator", None)
    if isinstance(aggregator, str) and aggregator in UNAVAILABLE_AGGREGATORS:
        raise ConfigError(UNAVAILABLE_AGGREGATORS[aggregator])
    _check_tree(cfg, Config)
    if not DEVICE_PATTERN.match(cfg.device):
        raise ConfigError(f"device={cfg.device!r} is not one of cpu, cuda, cuda:N; fix: --set device=cpu")

    clients = cfg.clients
    if clients.num_malicious > clients.num_clients:
        raise ConfigError(
            f"clients.num_malicious={clients.num_malicious} exceeds clients.num_clients={clients.num_clients}; "
            f"fix: --set clients.num_malicious={clients.num_clients // 4}"
        )
    if clients.clients_per_round > clients.num_clients:
        raise ConfigError(
            f"clients.clients_per_round={clients.clients_per_round} exceeds clients.num_clients="
            f"{clients.num_clients}; fix: --set clients.clients_per_round={clients.num_clients}"
        )
    train_images = DATASET_TRAIN_SIZES.get(cfg.data.dataset, cfg.data.synthetic_train_size)
    if clients.num_clients > train_images:
        # Checked before anything with one entry per client is built (10**12 clients would fill memory).
        raise ConfigError(
            f"clients.num_clients={clients.num_clients} exceeds the {train_images} training images of "
            f"data.dataset={cfg.data.dataset}: every client needs at least one; fix: --set clients.num_clients=100"
        )
    # The components own the checks of their settings (the selection's in its constructor, which
    # draws nothing), run here before any data is loaded.
    Selector.from_config(cfg)

    dataset, model = cfg.data.dataset, cfg.model
    if model in MODEL_INPUT and dataset in DATASET_INPUT and MODEL_INPUT[model] != DATASET_INPUT[dataset]:
        fitting = [m for m, shape in MODEL_INPUT.items() if shape == DATASET_INPUT[dataset]] + ["mlp"]
        raise ConfigError(
            f"model={model} takes {MODEL_INPUT[model]} images, but data.dataset={dataset} has "
            f"{DATASET_INPUT[dataset]}; fix: --set model={fitting[0]}"
        )
    check_training_settings(cfg.training, cfg.attack, DATASET_CLASSES[dataset])
    if resolve_engine(cfg)[0] == "batched":
        check_memory_format(cfg.training)
    check_client_defense(cfg.client_defense, model, DATASET_INPUT.get(dataset, "1x28x28"), DATASET_CLASSES[dataset])
    check_aggregator(cfg.server, clients.clients_per_round, clients.num_clients, clients.num_malicious)
    check_privacy(cfg.privacy)
    _check_uploads(cfg)
    _check_limits(cfg)
    _check_metrics(cfg)
    return cfg


def _check_metrics(cfg: Config) -> None:
    """`metrics.shadow_kept: run` needs the shadow run and a rule whose aggregate is the mean of
    the rows it keeps."""
    if cfg.metrics.shadow_kept != "run":
        return
    if not cfg.metrics.attack_effect:
        raise ConfigError("metrics.shadow_kept=run sets what the shadow run aggregates, but metrics.attack_effect="
                          "false runs no shadow; fix: --set metrics.attack_effect=true, or metrics.shadow_kept=own")
    if cfg.server.aggregator not in SHADOW_KEPT_RULES:
        raise ConfigError(
            f"metrics.shadow_kept=run averages the shadow's rows at the run's kept positions, which is the "
            f"aggregate only for rules that average the rows they keep; server.aggregator="
            f"{cfg.server.aggregator!r} is not one; allowed: {', '.join(SHADOW_KEPT_RULES)}; "
            "fix: --set metrics.shadow_kept=own"
        )


def _check_limits(cfg: Config) -> None:
    """Settings valid one by one whose combination torch or float32 cannot hold."""
    rule = client_defense_class(cfg.client_defense)
    if hasattr(rule, "check_with"):
        rule.check_with(cfg.client_defense, cfg.training)
    if cfg.data.dataset == "synthetic":
        check_synthetic_size(cfg.data.synthetic_train_size, cfg.data.synthetic_test_size)


def _check_uploads(cfg: Config) -> None:
    """The learning-rate schedule, model poisoning and DP settings that depend on each other."""
    training = cfg.training
    if training.lr_schedule == "cosine" and training.lr_min > training.lr:
        raise ConfigError(
            f"training.lr_min={training.lr_min} exceeds training.lr={training.lr}: the cosine schedule would "
            f"raise the learning rate; fix: --set training.lr_min={training.lr / 10:g}"
        )
    kind = cfg.model_poisoning.type
    attack = MODEL_POISONING[kind]
    if attack is not None:
        if attack.requires_privacy and cfg.privacy.type == "none":
            raise ConfigError(
                f"model_poisoning.type={kind} rescales the malicious updates to the norm of a DP-noised update, "
                "but privacy.type=none; fix: --set privacy.type=gaussian"
            )
        if attack.uploads_own_update and cfg.attack.type == "none":
            raise ConfigError(
                f"model_poisoning.type={kind} uploads the malicious clients' own poisoned updates, but "
                "attack.type=none trains them honestly; fix: --set attack.type=backdoor"
            )
