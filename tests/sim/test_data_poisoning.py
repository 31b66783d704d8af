"""The data-poisoning attacks as objects (sim.attacks.data): the registry is the one list of names,
each attack owns its settings section, moved settings are read under their new names, and what
depends on the attack (metric name, caption, cost, forward passes) comes from its class."""

from __future__ import annotations

import pytest

import sim.config as config_module
from sim.attacks.data import registry
from sim.attacks.data.backdoor import Backdoor, BackdoorSettings
from sim.attacks.data.label_flip import LabelFlip
from sim.config import load_config
from sim.errors import ConfigError
from sim.metrics import attack_metric_name
from sim.sweep import trial_cost


def test_the_choice_list_is_the_registry_and_the_backdoor_owns_its_section():
    assert config_module.ATTACKS == tuple(registry.DATA_POISONING)
    cfg = load_config(overrides=["attack.backdoor.blend=fixed", "attack.backdoor.blend_weight=0.25"])
    assert isinstance(cfg.attack.backdoor, BackdoorSettings)
    assert (cfg.attack.backdoor.blend, cfg.attack.backdoor.blend_weight) == ("fixed", 0.25)


def test_the_old_flat_names_are_refused_on_the_command_line_with_the_new_one():
    with pytest.raises(ConfigError, match=r"'attack\.blend' in --set has moved to 'attack\.backdoor\.blend'"):
        load_config(overrides=["attack.blend=fixed"])


def test_the_old_flat_names_in_a_file_are_read_under_the_new_ones_with_a_note(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text("attack:\n  type: backdoor\n  blend: fixed\n  blend_weight: 0.3\n")
    cfg = load_config(path=path)
    assert (cfg.attack.backdoor.blend, cfg.attack.backdoor.blend_weight) == ("fixed", 0.3)
    assert "'attack.blend' is now 'attack.backdoor.blend'" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("attack.type=backdor", r"attack\.type='backdor' is not one of none, backdoor, label_flip, dba.*fix: --set attack\.type=backdoor"),
    ("attack.backdoor.blend=mgdaa", r"attack\.backdoor\.blend='mgdaa' is not one of mgda, fixed; fix: --set attack\.backdoor\.blend=mgda"),
    ("attack.backdoor.blend_weight=1.5", r"attack\.backdoor\.blend_weight=1\.5 is out of range: it must be in \[0, 1\]"),
    ("attack.target_label=10", r"attack\.target_label = 10 is not a class of the dataset \(0\.\.9\)"),
])
def test_bad_attack_settings_are_refused_before_any_work(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_what_depends_on_the_attack_comes_from_its_class():
    assert attack_metric_name("backdoor") == "backdoor accuracy"
    assert attack_metric_name("label_flip") == attack_metric_name("none") == "trigger-to-target rate (no backdoor trained)"
    assert attack_metric_name("some_attack_of_a_later_version") == "trigger-to-target rate (no backdoor trained)"
    assert [registry.description(kind) for kind in ("none", "backdoor", "label_flip")] == [
        "no attack", "9-pixel backdoor", "label flipping"]
    assert (Backdoor.passes_per_step, LabelFlip.passes_per_step) == (2, 1)
    assert LabelFlip.joins_task_group and not Backdoor.joins_task_group
    # The sweep's cost: a malicious MGDA step differentiates two losses (6), a fixed blend one (3).
    base = ["rounds=1", "clients.num_clients=10", "clients.num_malicious=10", "clients.clients_per_round=10",
            "selection.schedule=fixed", "selection.fixed_malicious=10", "server.aggregator=fedavg"]
    mgda, fixed, flip = (trial_cost(load_config(overrides=[*base, *extra])) for extra in (
        ["attack.backdoor.blend=mgda"], ["attack.backdoor.blend=fixed"], ["attack.type=label_flip"]))
    assert fixed == flip and mgda > fixed
