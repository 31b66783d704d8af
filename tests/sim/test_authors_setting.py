"""The LeadFL authors' setting, one option at a time: their selection stream and bursts, their
trigger values, the BatchNorm counters in the `fltk_*` distances, and the preset that combines them.

Expected values come from the authors' code as read in the reference notes (the malicious set,
the malicious count of every round of the template run, the normalised trigger values, the
forward passes per step), not from this implementation.
"""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import pytest
import torch

from sim.attacks.data_poisoning import TRIGGER_PIXELS, stamp_trigger, trigger_values
from sim.config import compare_variants, load_config
from sim.data import make_synthetic_dataset, partition
from sim.engines.batched import BatchedEngine
from sim.engines.sequential import SequentialEngine
from sim.errors import ConfigError
from sim.models import batchnorm_layers, build_model
from sim import reporting, runner
from sim.runner import run
from sim.selection import Selector, malicious_set
from sim.server.base import AggregationContext
from sim.server.fltk import FltkBulyan, FltkMultiKrum
from sim.server.krum import MultiKrum

from simtest import attack_section as attack_section_of, tiny_synthetic

pytestmark = pytest.mark.usefixtures("one_thread")

# The authors' malicious clients (ids 1..100) for num_clients=100, num_mal_clients=25.
AUTHORS_MALICIOUS = {3, 4, 8, 9, 14, 17, 23, 25, 27, 31, 34, 44, 46, 54, 55, 56, 63, 72, 74, 76, 79, 87, 93, 94, 96}
# Malicious clients per round, rounds 0..79, of their template run (`random`, bursts 0, 10, 12).
AUTHORS_MALICIOUS_PER_ROUND = [
    5, 2, 2, 1, 3, 3, 0, 0, 3, 1, 5, 3, 5, 3, 4, 4, 3, 0, 4, 4,
    2, 1, 2, 1, 1, 5, 2, 3, 3, 0, 5, 2, 5, 1, 2, 3, 4, 4, 3, 2,
    1, 1, 3, 0, 0, 4, 1, 2, 3, 3, 1, 1, 1, 1, 5, 4, 1, 4, 2, 5,
    3, 5, 1, 4, 4, 4, 5, 4, 3, 2, 2, 2, 3, 2, 2, 1, 4, 2, 1, 1,
]
AUTHORS_BURSTS = [0, 10, 12]


def authors_selector(**overrides):
    settings = dict(num_clients=100, num_malicious=25, clients_per_round=10, rng="authors",
                    override_rounds=AUTHORS_BURSTS, override_malicious=5)
    settings.update(overrides)
    return Selector(**settings)


# ---------------------------------------------------------------------------------------------
# selection


def test_authors_malicious_set_is_theirs_shifted_to_zero_based_ids():
    assert malicious_set(0, 100, 25, "authors") == sorted(c - 1 for c in AUTHORS_MALICIOUS)
    assert malicious_set(5, 100, 25, "authors") == malicious_set(0, 100, 25, "authors")  # seed unused
    assert malicious_set(0, 100, 25) != malicious_set(0, 100, 25, "authors")


def test_authors_selection_has_their_malicious_count_in_every_round():
    selector = authors_selector()
    assert [selector.malicious_count(r) for r in range(80)] == AUTHORS_MALICIOUS_PER_ROUND
    for r in range(80):
        chosen = selector.select(r)
        assert len(set(chosen)) == 10 and all(0 <= c < 100 for c in chosen)
    # The same draws whatever the seed, as in their code.
    assert authors_selector(seed=3).select(7) == selector.select(7)


def test_bursts_replace_the_selection_only_in_their_rounds():
    plain = authors_selector(override_rounds=[])
    bursts = authors_selector()
    assert [plain.malicious_count(r) for r in AUTHORS_BURSTS] != [5, 5, 5]
    for r in range(20):
        if r in AUTHORS_BURSTS:
            assert bursts.malicious_count(r) == 5
        else:
            assert bursts.select(r) == plain.select(r)


def test_bursts_work_with_the_simulator_streams_and_any_schedule():
    for schedule in ("random", "fixed", "periodic"):
        plain = Selector(100, 25, 10, schedule=schedule, seed=4, fixed_malicious=1)
        bursts = Selector(100, 25, 10, schedule=schedule, seed=4, fixed_malicious=1,
                          override_rounds=[2, 9], override_malicious=7)
        for r in range(12):
            if r in (2, 9):
                assert bursts.malicious_count(r) == 7
            else:
                assert bursts.select(r) == plain.select(r)


def test_bad_selection_options_are_config_errors():
    with pytest.raises(ConfigError, match=r"selection\.override_malicious=11"):
        authors_selector(override_malicious=11)
    with pytest.raises(ConfigError, match=r"selection\.rng='numpy'"):
        authors_selector(rng="numpy")
    with pytest.raises(ConfigError, match=r"selection\.override_rounds"):
        load_config(overrides=["selection.override_rounds=[0,-1]"])
    with pytest.raises(ConfigError, match=r"selection\.rng"):
        load_config(overrides=["selection.rng=legacy"])


# ---------------------------------------------------------------------------------------------
# trigger values


def test_authors_trigger_values_are_the_mnist_normalised_pattern_on_raw_images():
    dataset = make_synthetic_dataset(50, 10, "cpu", seed=0)  # 1x28x28 in [0, 1], like FashionMNIST
    hi, lo = trigger_values(dataset, "authors")
    assert float(hi) == pytest.approx(2.821487, abs=1e-6)
    assert float(lo) == pytest.approx(-0.424213, abs=1e-6)
    assert trigger_values(dataset, "data_range") == (dataset.trigger_hi, dataset.trigger_lo)
    stamped = stamp_trigger(torch.full((2, 1, 28, 28), 0.5), hi, lo)
    # Their pattern: ones at (3,23) (3,25) (4,24) (6,24) (7,23) (7,25), zeros at (3,24) (5,25) (7,24).
    ones = {(3, 23), (3, 25), (4, 24), (6, 24), (7, 23), (7, 25)}
    zeros = {(3, 24), (5, 25), (7, 24)}
    assert {(r, c) for r, c, high in TRIGGER_PIXELS if high} == ones
    assert {(r, c) for r, c, high in TRIGGER_PIXELS if not high} == zeros
    for r, c in ones:
        assert float(stamped[1, 0, r, c]) == pytest.approx(2.821487, abs=1e-6)
    for r, c in zeros:
        assert float(stamped[0, 0, r, c]) == pytest.approx(-0.424213, abs=1e-6)
    assert int((stamped != 0.5).sum()) == 2 * 9


def test_clients_and_evaluation_stamp_the_configured_trigger():
    dataset = make_synthetic_dataset(120, 20, "cpu", seed=0)
    training, attack, defense = sections(attack={"trigger_values": "authors"})
    engine = SequentialEngine("mlp", dataset, partition(dataset.train_y, 4, "iid", seed=0), [1], training, attack,
                              defense, 0, "cpu")
    assert float(engine.training.poisoning.trigger_hi) == pytest.approx(2.821487, abs=1e-6)
    assert float(engine.training.poisoning.trigger_lo) == pytest.approx(-0.424213, abs=1e-6)
    for choice, (hi, lo) in {"authors": (2.821487, -0.424213), "data_range": (1.0, 0.0)}.items():
        parts = runner._Parts(load_config(overrides=[*tiny_synthetic(), "server.aggregator=median",
                                                     f"attack.trigger_values={choice}"]),
                              torch.device("cpu"))
        stamped = parts.stamp(torch.full((1, 1, 28, 28), 0.5))
        assert float(stamped[0, 0, 3, 23]) == pytest.approx(hi, abs=1e-6)
        assert float(stamped[0, 0, 3, 24]) == pytest.approx(lo, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# BatchNorm counters in the fltk_* distances

BENIGN_PASSES, MALICIOUS_PASSES = 381, 761  # 380 steps (+1 local test); MGDA: two forwards per step
LAYERS = 2  # the FashionMNIST CNN's BatchNorm layers


def hand_worked_round(k: int):
    """10 rows, the last k malicious. The malicious rows are identical and sit at the benign
    rows' centre, so by the weights alone they are the most central rows; every weight distance
    is below 10, far under the counter term 2 * 380^2."""
    generator = torch.Generator().manual_seed(k)
    benign = torch.randn(10 - k, 50, generator=generator, dtype=torch.float64) * 0.1
    centre = benign.mean(dim=0) if k < 10 else torch.zeros(50, dtype=torch.float64)
    updates = torch.cat([benign, centre.repeat(k, 1)])
    counters = torch.tensor([BENIGN_PASSES] * (10 - k) + [MALICIOUS_PASSES] * k, dtype=torch.float64)
    return updates, counters[:, None].repeat(1, LAYERS), set(range(10 - k, 10))


@pytest.mark.parametrize("rule", [FltkMultiKrum, FltkBulyan])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_counters_filter_every_malicious_row_when_at_most_four_are_selected(rule, k):
    updates, counters, malicious = hand_worked_round(k)
    if rule is FltkMultiKrum or k > 1:  # fltk_bulyan skips the best row, the one malicious row at k = 1
        assert malicious & set(rule()(updates).kept)  # by the weights alone a malicious row is kept
    kept = rule(counters=True)(updates, AggregationContext(counters=counters)).kept
    assert kept and not malicious & set(kept)


def test_counters_at_five_malicious_leave_the_weights_to_decide_and_beyond_favour_them():
    # k = 5: every score holds the counter term 3 times, so the ranking is the weights' ranking.
    updates, counters, malicious = hand_worked_round(5)
    assert FltkMultiKrum(counters=True)(updates, AggregationContext(counters=counters)).kept == FltkMultiKrum()(updates).kept
    # k = 6: a benign score holds it 4 times, a malicious one twice; the 5 lowest are malicious.
    updates, counters, malicious = hand_worked_round(6)
    assert set(FltkMultiKrum(counters=True)(updates, AggregationContext(counters=counters)).kept) <= malicious


def test_counters_enter_as_differences_and_only_where_the_rule_takes_them():
    updates, counters, malicious = hand_worked_round(3)
    rule = FltkMultiKrum(counters=True)
    # The global model's counter is common to all rows: adding it changes nothing.
    assert rule(updates, AggregationContext(counters=counters + 12345)).kept == rule(updates, AggregationContext(counters=counters)).kept
    # Scores: distances plus sum over layers of (count_i - count_j)^2, by hand for one pair.
    from sim.server.aggregate import distances_with_counters, pairwise_squared_distances
    with_counters = distances_with_counters(updates, counters)
    plain = pairwise_squared_distances(updates)
    assert float(with_counters[0, 9] - plain[0, 9]) == LAYERS * (MALICIOUS_PASSES - BENIGN_PASSES) ** 2
    assert float(with_counters[0, 1] - plain[0, 1]) == 0.0
    with pytest.raises(ValueError, match="takes no BatchNorm counters"):
        MultiKrum(1)(updates, AggregationContext(counters=counters))
    with pytest.raises(ValueError, match="takes no BatchNorm counters"):
        FltkMultiKrum()(updates, AggregationContext(counters=counters))  # counters: false
    with pytest.raises(ValueError, match="one row per update"):
        rule(updates, AggregationContext(counters=counters[:5]))


def test_fltk_counters_are_each_fltk_rules_own_boolean_and_the_old_name_points_to_them():
    with pytest.raises(ConfigError, match=r"server\.fltk_multikrum\.counters=1 must be true or false"):
        load_config(overrides=["server.aggregator=fltk_multikrum", "server.fltk_multikrum.counters=1"])
    cfg = load_config(overrides=["server.aggregator=fltk_bulyan", "server.fltk_bulyan.counters=true"])
    assert cfg.server.fltk_bulyan.counters and not cfg.server.fltk_multikrum.counters
    with pytest.raises(ConfigError, match=r"'server\.fltk_counters' .* has moved to 'server\.fltk_multikrum\.counters' "
                                          r"and 'server\.fltk_bulyan\.counters'; fix: rename it"):
        load_config(overrides=["server.fltk_counters=true"])


def test_a_file_with_the_old_counters_name_is_read_under_the_new_names_with_a_note(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text("server:\n  aggregator: fltk_multikrum\n  fltk_counters: true\n")
    cfg = load_config(path=path)
    assert cfg.server.fltk_multikrum.counters and cfg.server.fltk_bulyan.counters
    assert "'server.fltk_counters' is now 'server.fltk_multikrum.counters' and 'server.fltk_bulyan.counters'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# forward passes reported by the engines


def sections(attack=None, defense=None, **training):
    training_section = dict(lr=0.1, momentum=0.1, batch_size=16, local_epochs=2, local_steps=None)
    training_section.update(training)
    attack_section = dict(type="backdoor", target_label=8, blend="mgda", blend_weight=0.5, boost=1.0,
                          trigger_values="data_range")
    attack_section.update(attack or {})
    defense_section = dict(type="none", noise_scale=0.2, variant="hessian", alpha=0.4, q=0.2)
    defense_section.update(defense or {})
    return SimpleNamespace(**training_section), attack_section_of(**attack_section), SimpleNamespace(**defense_section)


@pytest.mark.parametrize("engine_class", [SequentialEngine, BatchedEngine])
@pytest.mark.parametrize(
    "attack, defense, benign_per_step, malicious_per_step",
    [
        ({"type": "backdoor", "blend": "mgda"}, {"type": "none"}, 1, 2),
        ({"type": "backdoor", "blend": "fixed"}, {"type": "leadfl", "variant": "original"}, 1, 2),
        ({"type": "label_flip"}, {"type": "ldp"}, 1, 1),
        ({"type": "backdoor"}, {"type": "leadfl", "variant": "hessian"}, 2, 2),  # the lookahead forward
        ({"type": "none"}, {"type": "leadfl", "variant": "paper"}, 1, 1),  # malicious clients train honestly
    ],
)
def test_engines_report_forward_passes_per_batchnorm_layer(engine_class, attack, defense, benign_per_step,
                                                            malicious_per_step):
    dataset = make_synthetic_dataset(200, 20, "cpu", seed=0)
    clients = partition(dataset.train_y, 4, "iid", seed=0)  # 50 samples each: 4 batches of 16 per epoch
    training, attack_section, defense_section = sections(attack, defense, local_epochs=3)
    engine = engine_class("fmnist_cnn", dataset, clients, [1], training, attack_section, defense_section, 0, "cpu")
    steps = 3 * math.ceil(50 / 16)
    counters = engine.batchnorm_counters([2, 1, 0])
    assert counters.dtype == torch.float64 and counters.shape == (3, 2)
    expected = [benign_per_step * steps + 1, malicious_per_step * steps + 1, benign_per_step * steps + 1]
    assert counters.tolist() == [[count, count] for count in expected]
    # Roles override as in train_clients.
    assert engine.batchnorm_counters([1], roles=["benign"]).tolist() == [[benign_per_step * steps + 1] * 2]


def test_batchnorm_layers_of_the_models():
    assert batchnorm_layers(build_model("fmnist_cnn", (1, 28, 28), 10)) == 2
    assert batchnorm_layers(build_model("cifar_cnn", (3, 32, 32), 10)) == 6
    assert batchnorm_layers(build_model("mlp", (1, 28, 28), 10)) == 1


def test_a_run_with_counters_keeps_no_malicious_client_when_few_are_selected(tmp_path):
    cfg = load_config(overrides=[
        *tiny_synthetic(clients=20, malicious=6, per_round=10, fixed_malicious=3, train_size=400),
        "rounds=2",
        "server.aggregator=fltk_multikrum",
        "server.fltk_multikrum.counters=true",
        "attack.trigger_values=authors",
        "eval.test_size=60",
    ])
    run(cfg, tmp_path / "run", progress=False)
    with open(tmp_path / "run" / "metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 2
    settings = reporting.key_settings(cfg)
    assert settings["server.fltk_multikrum.counters"] is True and settings["attack.trigger_values"] == "authors"
    assert "selection.rng" not in settings  # left at its default
    for row in rows:
        malicious = set(row["malicious_ids"].split())
        kept = set(row["kept"].split())
        assert len(malicious) == 3 and len(kept) == 5 and not malicious & kept


# ---------------------------------------------------------------------------------------------
# the preset


def test_the_authors_preset_combines_every_option_and_compares_none_with_their_leadfl():
    cfg = load_config(preset="table1-fmnist-authors")
    assert cfg.server.aggregator == "fltk_multikrum" and cfg.server.fltk_multikrum.counters
    assert cfg.selection.rng == "authors" and cfg.selection.schedule == "random"
    assert cfg.selection.override_rounds == AUTHORS_BURSTS and cfg.selection.override_malicious == 5
    assert cfg.attack.trigger_values == "authors"
    assert (cfg.training.batch_size, cfg.training.local_epochs, cfg.training.lr, cfg.training.momentum) == (16, 10, 0.01, 0.1)
    variants = compare_variants(preset="table1-fmnist-authors")
    assert list(variants) == ["None", "LeadFL"]
    leadfl = dict(variants["LeadFL"])
    assert leadfl["client_defense.type"] == "leadfl" and leadfl["client_defense.variant"] == "original"
    assert (leadfl["client_defense.alpha"], leadfl["client_defense.q"]) == (0.4, 0.2)
    selector = Selector.from_config(cfg)
    assert [selector.malicious_count(r) for r in range(80)] == AUTHORS_MALICIOUS_PER_ROUND


def test_a_comparisons_own_record_with_old_names_is_read_silently(tmp_path, capsys):
    folder = tmp_path / "cmp"
    folder.mkdir()
    path = folder / "compare-input.yaml"  # what compare --resume reads back
    path.write_text("server:\n  aggregator: fltk_multikrum\n  fltk_counters: true\n"
                    "compare:\n  a: {server.fltk_counters: false}\n")
    cfg = load_config(path=path)
    variants = compare_variants(path=path)
    assert cfg.server.fltk_multikrum.counters and cfg.server.fltk_bulyan.counters
    assert variants["a"] == [("server.fltk_multikrum.counters", False), ("server.fltk_bulyan.counters", False)]
    assert capsys.readouterr().err == ""
