"""Configuration: defaults, presets, overrides, and messages that name the setting and the fix."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from sim import config as config_module
from sim.config import (
    CONFIGS_DIR,
    Config,
    apply_overrides,
    compare_variants,
    config_from_dict,
    list_presets,
    load_config,
    parse_override,
    setting_paths,
    to_dict,
    validate,
)
from sim.errors import ConfigError


def _settings_with(predicate):
    """(path, metadata, default) for every leaf setting whose metadata satisfies `predicate`."""
    found = []

    def walk(cls, prefix):
        defaults = cls()
        for f in dataclasses.fields(cls):
            if "kind" not in f.metadata:
                walk(f.default_factory, prefix + f.name + ".")
            elif predicate(f.metadata):
                found.append((prefix + f.name, f.metadata, getattr(defaults, f.name)))

    walk(Config, "")
    return found


ENUM_SETTINGS = _settings_with(lambda meta: meta["choices"])
RANGE_SETTINGS = _settings_with(
    lambda meta: meta["kind"] in ("int", "float") and (meta["low"] is not None or meta["high"] is not None)
)


def test_defaults_are_valid_and_match_the_schema():
    cfg = validate(Config())
    assert cfg.rounds == 80 and cfg.clients.num_clients == 100 and cfg.clients.num_malicious == 25
    assert cfg.training.batch_size == 16 and cfg.training.local_epochs == 10
    assert cfg.server.aggregator == "multikrum" and cfg.client_defense.alpha == 0.4
    assert load_config() == Config()


def test_setting_paths_cover_every_section():
    paths = setting_paths()
    assert "client_defense.alpha" in paths and "server.sparsefed.clip" in paths and "eval.batch_size" in paths
    assert len(paths) == len(set(paths))


@pytest.mark.parametrize("path,meta,default", ENUM_SETTINGS, ids=[p for p, _, _ in ENUM_SETTINGS])
def test_every_enum_setting_names_the_value_the_choices_and_the_fix(path, meta, default):
    bad = default + "x"
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=[f"{path}={bad}"])
    message = str(caught.value)
    assert f"{path}={bad!r}" in message
    assert ", ".join(meta["choices"]) in message
    # The closest allowed value is offered as a ready-to-paste fix.
    assert f"fix: --set {path}={default}" in message


def test_misspelled_defense_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"client_defense\.type='leadf' is not one of none, ldp, flwbc, leadfl; "
                       r"fix: --set client_defense\.type=leadfl"):
        load_config(overrides=["client_defense.type=leadf"])


def _out_of_range(meta):
    if meta["low"] is not None:
        return meta["low"] - 1 if meta["kind"] == "int" else meta["low"] - 0.5
    return meta["high"] + 1


@pytest.mark.parametrize("path,meta,default", RANGE_SETTINGS, ids=[p for p, _, _ in RANGE_SETTINGS])
def test_every_range_setting_names_the_value_the_range_and_the_fix(path, meta, default):
    bad = _out_of_range(meta)
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=[f"{path}={bad}"])
    message = str(caught.value)
    assert f"{path}={bad!r}" in message
    assert "must be" in message and ("in [" in message or "in (" in message or ">" in message or "<" in message)
    assert f"fix: --set {path}=" in message


@pytest.mark.parametrize(
    "override,expected",
    [
        ("clients.num_clients=ten", "clients.num_clients='ten' must be a whole number"),
        ("rounds=2.5", "rounds=2.5 must be a whole number"),
        ("rounds=true", "rounds=True must be a whole number"),
        ("training.lr=fast", "training.lr='fast' must be a finite number"),
        ("training.lr=.nan", "training.lr=nan must be a finite number"),
        ("model=null", "model=null is not allowed"),
        ("selection.malicious_counts=[1,x]", "selection.malicious_counts=[1, 'x'] must be a list of whole numbers"),
        ("device=gpu", "device='gpu' is not one of cpu, cuda, cuda:N"),
    ],
)
def test_wrong_types_are_refused_with_the_field_and_value(override, expected):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=[override])
    assert expected in str(caught.value)
    assert "fix:" in str(caught.value)


def test_overrides_are_parsed_as_yaml_values():
    cfg = load_config(
        overrides=[
            "rounds=7",
            "training.lr=1e-3",  # PyYAML alone would read this as text
            "client_defense.alpha=0.25",
            "training.local_steps=20",
            "data.data_dir=/tmp/some dir",
            "selection.malicious_counts=[5, 0, 0]",
            "selection.schedule=schedule",
            "server.f=1",
            "server.f=null",
        ]
    )
    assert cfg.rounds == 7
    assert cfg.training.lr == pytest.approx(1e-3) and isinstance(cfg.training.lr, float)
    assert cfg.client_defense.alpha == 0.25
    assert cfg.training.local_steps == 20
    assert cfg.data.data_dir == "/tmp/some dir"
    assert cfg.selection.malicious_counts == [5, 0, 0]
    assert cfg.server.f is None  # the later override wins
    assert parse_override("server.f=") == ("server.f", None)
    assert parse_override("a.b=x=y") == ("a.b", "x=y")


def test_int_given_for_a_float_setting_becomes_a_float():
    assert load_config(overrides=["client_defense.alpha=1"]).client_defense.alpha == 1.0
    assert isinstance(load_config(overrides=["client_defense.alpha=1"]).client_defense.alpha, float)


def test_section_override_merges_into_the_section():
    cfg = load_config(overrides=["client_defense={type: leadfl, alpha: 0.6}"])
    assert cfg.client_defense.type == "leadfl" and cfg.client_defense.alpha == 0.6
    assert cfg.client_defense.q == 0.2


@pytest.mark.parametrize(
    "override,expected",
    [
        ("client_defence.type=leadfl", "did you mean 'client_defense.type'?"),
        ("alpha=0.3", "did you mean 'client_defense.alpha'?"),
        ("training.local_step=5", "did you mean 'training.local_steps'?"),
        ("server.agregator=krum", "did you mean 'server.aggregator'?"),
    ],
)
def test_unknown_override_key_suggests_the_closest_setting(override, expected):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=[override])
    assert expected in str(caught.value)
    assert "unknown setting" in str(caught.value)


def test_unknown_key_in_a_config_file_is_an_error_with_a_suggestion(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("client_defense:\n  tpye: leadfl\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'client_defense.tpye' in config file .*did you mean 'client_defense.type'"):
        load_config(path=path)


def test_unknown_key_without_a_close_match_lists_the_allowed_keys(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("server:\n  zzzzzz: 1\n")
    with pytest.raises(ConfigError, match=r"allowed at this level: aggregator, f, multikrum, trimmed_mean"):
        load_config(path=path)


def test_section_written_as_a_value_is_an_error():
    with pytest.raises(ConfigError, match=r"'data' is a section, not a value .*fix: set one of its keys, e.g. data.dataset="):
        load_config(overrides=["data=3"])
    with pytest.raises(ConfigError, match=r"'training.lr' is a value, not a section"):
        load_config(overrides=["training.lr.x=1"])


def test_malformed_override_is_an_error():
    with pytest.raises(ConfigError, match=r"must look like key=value"):
        load_config(overrides=["client_defense.type"])


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["clients.num_malicious=30", "clients.num_clients=20", "clients.clients_per_round=5"],
         "clients.num_malicious=30 exceeds clients.num_clients=20"),
        (["clients.clients_per_round=200"], "clients.clients_per_round=200 exceeds clients.num_clients=100"),
        (["server.aggregator=bulyan"], "fix: --set server.f=1"),
        (["server.aggregator=krum", "server.f=4"], "Krum needs n >= 2f+3 (10 < 11); set server.f to at most 3"),
        (["server.aggregator=multikrum", "server.multikrum.m=11"], "server.multikrum.m=11 is invalid for multikrum with clients_per_round=10"),
        (["server.sparsefed.k=2.5", "server.aggregator=sparsefed"], "server.sparsefed.k=2.5 is invalid for sparsefed"),
        (["selection.schedule=periodic", "selection.burst_malicious=11"], "fix: --set selection.burst_malicious=10"),
        (["selection.schedule=periodic", "selection.burst_rounds=11"], "a cycle has selection.period=10 rounds; fix: --set selection.burst_rounds=10"),
        (["selection.schedule=fixed", "selection.fixed_malicious=26", "clients.clients_per_round=30"],
         "fix: --set selection.fixed_malicious=25"),
        (["selection.schedule=fixed", "clients.num_malicious=95"], "5 benign clients, a round can hold 5 to 10 malicious clients"),
        (["selection.schedule=schedule"], "selection.malicious_counts=[] is invalid for selection.schedule='schedule'"),
        (["selection.schedule=schedule", "selection.malicious_counts=[1,12]"], "selection.malicious_counts[1]=12 is invalid: it must be an integer in [0, 10]"),
        (["model=cifar_cnn"], "fix: --set model=fmnist_cnn"),
        (["data.dataset=cifar10"], "fix: --set model=cifar_cnn"),
        (["attack.target_label=10"], "attack.target_label = 10 is not a class of the dataset (0..9)"),
    ],
)
def test_settings_that_constrain_each_other_are_checked(overrides, expected):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=overrides)
    assert expected in str(caught.value)


def test_validate_catches_values_set_in_python():
    cfg = Config()
    cfg.client_defense.q = -1.0
    with pytest.raises(ConfigError, match=r"client_defense.q=-1.0 is out of range: it must be > 0"):
        validate(cfg)


def test_to_dict_round_trips_through_yaml():
    cfg = load_config(overrides=["client_defense.type=leadfl", "selection.malicious_counts=[1,2]"])
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    assert config_from_dict(yaml.safe_load(text)) == cfg
    assert list(to_dict(cfg)) == [f.name for f in dataclasses.fields(Config)]


def test_layers_apply_in_order_defaults_preset_file_overrides(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("rounds: 12\nserver:\n  f: 1\n")
    cfg = load_config("alpha-sweep", path, ["rounds=5"])
    assert cfg.server.aggregator == "bulyan"  # from the preset
    assert cfg.server.f == 1  # preset and file agree
    assert cfg.rounds == 5  # --set beats the file, which beats the preset's 40
    assert cfg.training.momentum == 0.1  # a default nobody touched
    assert load_config("alpha-sweep", path).rounds == 12


def test_unknown_preset_suggests_the_closest_name():
    with pytest.raises(ConfigError, match=r"preset 'table1-fminst' not found .*did you mean 'table1-fmnist'"):
        load_config("table1-fminst")


def test_invalid_yaml_file_is_a_config_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("rounds: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(path=path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(path=tmp_path / "missing.yaml")


PRESETS = [name for name, _ in list_presets()]


def test_the_documented_presets_exist():
    assert {
        "table1-fmnist",
        "table2-cifar10",
        "fig1-periodic-fmnist",
        "alpha-sweep",
        "variants",
        "random-vs-periodic",
        "demo",
    } <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_and_each_of_its_variants_validates(name):
    cfg = load_config(name)
    description = dict(list_presets())[name]
    assert description, f"{name} has no description"
    text = (CONFIGS_DIR / f"{name}.yaml").read_text()
    assert text.lstrip().startswith("#"), f"{name} should open with a comment on where its settings come from"
    for label, overrides in compare_variants(name).items():
        apply_overrides(cfg, overrides, source=f"compare variant '{label}'")


def test_table_presets_follow_the_report():
    table1 = load_config("table1-fmnist")
    assert (table1.rounds, table1.server.aggregator, table1.selection.schedule) == (80, "multikrum", "random")
    variants = compare_variants("table1-fmnist")
    assert list(variants) == ["None", "LDP", "FL-WBC", "LeadFL hessian", "LeadFL original"]
    for label, variant in (("LeadFL hessian", "hessian"), ("LeadFL original", "original")):
        leadfl = apply_overrides(table1, variants[label]).client_defense
        assert (leadfl.type, leadfl.variant, leadfl.alpha, leadfl.q) == ("leadfl", variant, 0.4, 0.2)
    table2 = load_config("table2-cifar10")
    assert apply_overrides(table2, compare_variants("table2-cifar10")["LeadFL"]).client_defense.alpha == 0.25
    assert load_config("alpha-sweep").server.f == 1


def test_compare_section_accepts_dotted_and_nested_keys(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(
        "compare:\n"
        "  base: {}\n"
        "  dotted: {client_defense.type: ldp, client_defense.noise_scale: 0.1}\n"
        "  nested: {client_defense: {type: leadfl, alpha: 0.3}}\n"
    )
    variants = compare_variants(path=path)
    assert variants["base"] == []
    assert variants["dotted"] == [("client_defense.type", "ldp"), ("client_defense.noise_scale", 0.1)]
    nested = apply_overrides(Config(), variants["nested"])
    assert (nested.client_defense.type, nested.client_defense.alpha) == ("leadfl", 0.3)


def test_compare_variant_with_a_bad_setting_names_the_variant(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("compare:\n  oops: {client_defense.typ: leadfl}\n")
    with pytest.raises(ConfigError, match=r"in compare variant 'oops'; did you mean 'client_defense.type'"):
        apply_overrides(Config(), compare_variants(path=path)["oops"], source="compare variant 'oops'")
