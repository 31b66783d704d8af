"""Model-poisoning attacks: cases worked by hand, PoisonedFL's state, and short end-to-end runs."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from sim import config as config_module
from sim.attacks import model_poisoning
from sim.config import load_config
from sim.errors import ConfigError
from sim.attacks.model_poisoning import (
    AttackContext,
    Fang,
    LittleIsEnough,
    MinMax,
    PoisonedFL,
    alignment_threshold,
    fang_lambda_bound,
    lie_z_max,
)
from sim.reporting import read_metrics
from sim.runner import run
from sim.state import read_checkpoint
from simtest import tiny_synthetic

pytestmark = pytest.mark.usefixtures("one_thread")


def context(round=3, global_params=None, last_global_update=None, seed=0, clients=(), privacy=None):
    d = 4 if global_params is None else global_params.shape[0]
    return AttackContext(
        round=round,
        global_params=torch.zeros(d) if global_params is None else global_params,
        last_global_update=last_global_update,
        generator=torch.Generator().manual_seed(123),
        clients=list(clients),
        seed=seed,
        privacy=privacy,
    )


def mask(*flags):
    return torch.tensor(flags, dtype=torch.bool)


def test_name_lists_match_the_registry_and_each_attack_owns_its_settings_section():
    assert set(config_module.MODEL_POISONING_TYPES) == set(model_poisoning.MODEL_POISONING)
    cfg = load_config(overrides=["model_poisoning.type=poisonedfl", "model_poisoning.poisonedfl.coordinates=partitioned"])
    assert cfg.model_poisoning.poisonedfl.coordinates == "partitioned"
    assert isinstance(cfg.model_poisoning.lie, model_poisoning.LieSettings)
    with pytest.raises(ConfigError, match=r"'model_poisoning\.poisonedfl_scale' .* has moved to 'model_poisoning\.poisonedfl\.scale'"):
        load_config(overrides=["model_poisoning.poisonedfl_scale=2"])


def test_rows_of_benign_clients_are_never_touched():
    updates = torch.tensor([[0.0, 3.0], [2.0, 5.0], [4.0, 7.0]])
    for attack in (LittleIsEnough(1.0), MinMax(), Fang(f=0)):
        result = attack(updates, mask(False, False, True), context(global_params=torch.zeros(2)))
        assert torch.equal(result[:2], updates[:2])
    # No malicious row selected: the input comes back as it is.
    assert LittleIsEnough(1.0)(updates, mask(False, False, False), context()) is updates


# ---------------------------------------------------------------------------------------------
# a little is enough


def test_lie_is_mean_plus_z_times_the_unbiased_std():
    # Column 0: 0, 2, 4 -> mean 2, unbiased variance (4 + 0 + 4) / 2 = 4, std 2
    # Column 1: 3, 5, 7 -> mean 5, std 2.   z = 1.5: (2 + 3, 5 + 3) = (5, 8)
    updates = torch.tensor([[0.0, 3.0], [2.0, 5.0], [4.0, 7.0]])
    result = LittleIsEnough(1.5)(updates, mask(False, True, True), context())
    assert torch.allclose(result[1:], torch.tensor([[5.0, 8.0], [5.0, 8.0]]))
    # The mean is the plain mean: nothing like the (n+1)/n inflation of the LeadFL authors' code.
    assert torch.allclose(LittleIsEnough(0.0)(updates, mask(False, False, True), context())[2], torch.tensor([2.0, 5.0]))


def test_lie_z_max_follows_baruch_et_al():
    # n = 3, m = 1: s = floor(3/2 + 1) - 1 = 1, z = Phi^-1(2/3)
    assert lie_z_max(3, 1) == pytest.approx(0.430727, abs=1e-6)
    # n = 10, m = 2: s = 6 - 2 = 4, z = Phi^-1(0.6)
    assert lie_z_max(10, 2) == pytest.approx(0.253347, abs=1e-6)
    # n = 50, m = 12: s = 26 - 12 = 14, z = Phi^-1(36/50)
    assert lie_z_max(50, 12) == pytest.approx(0.582842, abs=1e-6)
    # A malicious majority would need s <= 0; s is held at 1: Phi^-1(9/10)
    assert lie_z_max(10, 7) == pytest.approx(1.281552, abs=1e-6)
    updates = torch.tensor([[0.0, 3.0], [2.0, 5.0], [4.0, 7.0]])
    row = LittleIsEnough(None)(updates, mask(False, False, True), context())[2]
    assert torch.allclose(row, torch.tensor([2.0, 5.0]) + 0.430727 * 2, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# fang (Krum)


def test_fang_lambda_bound_worked_by_hand():
    # d = 4 (sqrt(d) = 2), benign rows a = 0, b = (2,0,0,0), c = (0,0,0,6); n = 7, c = 2 malicious.
    # Nearest count n - c - 2 = 3, held at the 2 other benign rows: sums a: 2 + 6 = 8,
    # b: 2 + sqrt(40), c: 6 + sqrt(40) -> min 8; 8 / ((n - 2c - 1) * sqrt(d)) = 8 / (2 * 2) = 2.
    # Farthest benign row from the global model (the origin for updates): 6 / sqrt(d) = 3.
    benign = torch.tensor([[0.0, 0, 0, 0], [2.0, 0, 0, 0], [0.0, 0, 0, 6]])
    assert fang_lambda_bound(benign, n=7, c=2) == pytest.approx(5.0)


def test_fang_halves_lambda_until_krum_picks_the_crafted_update():
    # d = 1, benign 1, 2, 3; the malicious clients' honest updates 2, 2: mean 2, so s = +1 and
    # the crafted update is -lambda. Bound: nearest n - c - 2 = 1 -> distances 1, 1, 1 -> 1 / 1,
    # plus the farthest benign row 3 -> lambda = 4.
    # Krum (f = 1, n - f - 2 = 2 nearest squared distances):
    #   lambda 4:   crafted -4 scores 0 + 25 = 25, benign 2 scores 1 + 1 = 2   -> benign
    #   lambda 2:   0 + 9 = 9;  lambda 1: 0 + 4 = 4;  lambda 0.5: 0 + 2.25      -> benign
    #   lambda 0.25: 0 + 1.5625 < 2 (benign 2), < 1 + 1.5625 (benign 1)        -> crafted
    updates = torch.tensor([[1.0], [2.0], [3.0], [2.0], [2.0]])
    attack = Fang(f=1)
    result = attack(updates, mask(False, False, False, True, True), context(global_params=torch.zeros(1)))
    assert attack.last_lambda == pytest.approx(0.25)
    assert torch.allclose(result, torch.tensor([[1.0], [2.0], [3.0], [-0.25], [-0.25]]))


# ---------------------------------------------------------------------------------------------
# min-max


def test_min_max_finds_the_largest_lambda_within_the_largest_distance():
    # Rows (0,0), (2,2), (1,1): mean (1,1), unbiased std (1,1); largest squared distance 8.
    # mal = (1 - lambda)(1,1): squared distance to (2,2) is 2(1 + lambda)^2 <= 8 -> lambda <= 1.
    updates = torch.tensor([[0.0, 0.0], [2.0, 2.0], [1.0, 1.0]])
    attack = MinMax()
    result = attack(updates, mask(False, False, True), context(global_params=torch.zeros(2)))
    assert attack.last_lambda == pytest.approx(1.0, abs=2e-5)
    assert attack.last_lambda <= 1.0
    assert torch.allclose(result[2], torch.zeros(2), atol=2e-5)


# ---------------------------------------------------------------------------------------------
# PoisonedFL


def poisonedfl(d=4, **kwargs):
    attack = PoisonedFL(d, seed=0, **kwargs)
    attack.direction = torch.tensor([1.0, -1.0, 1.0, -1.0])[:d]
    return attack


def test_poisonedfl_update_is_scaled_template_times_the_fixed_signs():
    # g = (3, 4, 0, 0), ||g|| = 5; the attackers' last mean k = (0, 0, 0, 2), unit (0, 0, 0, 1).
    # h = g - 5 * (0, 0, 0, 1) = (3, 4, 0, -5), ||h|| = sqrt(50); v = (3, 4, 0, 5) / sqrt(50).
    # c = 2: lambda = 2 * 5 = 10; row = 10 / sqrt(50) * (3, 4, 0, 5) * s = sqrt(2) * (3, -4, 0, -5).
    attack = poisonedfl(scale=2.0)
    attack.last_malicious = torch.tensor([0.0, 0.0, 0.0, 2.0])
    updates = torch.zeros(3, 4)
    g = torch.tensor([3.0, 4.0, 0.0, 0.0])
    result = attack(updates, mask(False, True, True), context(round=3, last_global_update=g))
    expected = math.sqrt(2) * torch.tensor([3.0, -4.0, 0.0, -5.0])
    assert torch.allclose(result[1], expected, atol=1e-5) and torch.allclose(result[2], expected, atol=1e-5)
    assert torch.equal(result[0], torch.zeros(4))
    # The rows just sent are what the next round removes from the global update.
    assert torch.allclose(attack.last_malicious, expected, atol=1e-5)


def test_poisonedfl_without_history_sends_zeros_and_removes_nothing_next():
    attack = poisonedfl(scale=1.0)
    result = attack(torch.ones(2, 4), mask(False, True), context(round=0, last_global_update=None))
    assert torch.equal(result[1], torch.zeros(4)) and attack.last_malicious is None
    # Round 1, nothing of its own to remove: v = |g| / ||g||, row = 1 * ||g|| * v * s = |g| * s.
    g = torch.tensor([1.0, 2.0, -2.0, 0.0])
    result = attack(torch.ones(2, 4), mask(False, True), context(round=1, last_global_update=g))
    assert torch.allclose(result[1], torch.tensor([1.0, -2.0, 2.0, 0.0]))


def test_alignment_threshold_is_the_binomial_quantile_of_the_poisonedfl_code():
    # The PoisonedFL code hard-codes k_99 = 70415 for d = 139,960 and 603,618 for d = 1,204,682.
    assert alignment_threshold(139960, 0.99) == pytest.approx(70415, abs=1)
    assert alignment_threshold(1204682, 0.99) == pytest.approx(603618, abs=1)
    assert alignment_threshold(4, 0.5) == 2.0


def test_poisonedfl_shrinks_its_scale_when_the_model_did_not_move_along_s():
    # s = (+, -, +, -); between the checks the model moved (1, -1, -1, 0): coordinates 0 and 1
    # agree with s, coordinate 2 disagrees, coordinate 3 did not move -> 2 aligned of 4.
    moved = torch.tensor([1.0, -1.0, -1.0, 0.0])
    # At the 99% quantile (2 + 2.326 * 2 / 2 = 4.33) that is too few: c = 8 -> 0.7 * 8.
    attack = poisonedfl(scale=8.0, beta=0.7, check_period=5, confidence=0.99)
    attack(torch.zeros(1, 4), mask(False), context(round=0, global_params=torch.zeros(4)))
    attack(torch.zeros(1, 4), mask(False), context(round=3, global_params=moved))  # not a check round
    assert attack.scale == 8.0
    attack(torch.zeros(1, 4), mask(False), context(round=5, global_params=moved))
    assert attack.scale == pytest.approx(5.6)
    # "More than half aligned" (confidence 0.5, threshold 2): 2 aligned is not below -> kept.
    half = poisonedfl(scale=8.0, check_period=5, confidence=0.5)
    half(torch.zeros(1, 4), mask(False), context(round=0, global_params=torch.zeros(4)))
    half(torch.zeros(1, 4), mask(False), context(round=5, global_params=moved))
    assert half.scale == 8.0
    # It never shrinks below min_scale: 0.6 * 0.7 = 0.42 < 0.5 -> stays 0.6.
    low = poisonedfl(scale=0.6, check_period=5, min_scale=0.5)
    low(torch.zeros(1, 4), mask(False), context(round=0, global_params=torch.zeros(4)))
    low(torch.zeros(1, 4), mask(False), context(round=5, global_params=moved))
    assert low.scale == 0.6


def _variant_rows(d=2000, m=3, **kwargs):
    attack = PoisonedFL(d, seed=1, scale=1.0, **kwargs)
    g = torch.rand(d, generator=torch.Generator().manual_seed(5)) + 0.5
    rows = attack(torch.zeros(m, d), torch.ones(m, dtype=torch.bool), context(round=1, global_params=torch.zeros(d), last_global_update=g))
    base = g.abs() * attack.direction  # c = 1 and nothing to remove: |g| * s
    return rows, base


def test_poisonedfl_sign_flipping_flips_each_coordinate_with_the_given_probability():
    rows, base = _variant_rows(flip_prob=0.1)
    assert torch.allclose(rows.abs(), base.abs().expand_as(rows), atol=1e-5)  # magnitudes kept
    flipped = (torch.sign(rows) != torch.sign(base)).double().mean(dim=1)
    assert ((flipped > 0.07) & (flipped < 0.13)).all()
    assert not torch.equal(rows[0], rows[1])  # each attacker flips its own coordinates


def test_poisonedfl_noise_adaptation_adds_noise_of_the_given_relative_size():
    rows, base = _variant_rows(noise=0.5)
    relative = (rows - base).norm(dim=1) / base.norm()
    assert torch.allclose(relative, torch.full((3,), 0.5), atol=0.05)
    assert not torch.equal(rows[0], rows[1])


def test_poisonedfl_partitioned_attackers_split_the_coordinates():
    rows, base = _variant_rows(coordinates="partitioned")
    nonzero = rows != 0
    assert torch.equal(nonzero.sum(dim=0), torch.ones(rows.shape[1], dtype=torch.long))  # disjoint, covering
    assert torch.allclose(rows.norm(dim=1), base.norm().expand(3), rtol=1e-4)  # each as long as the full row
    for row in rows:  # on its own share, the full row's direction
        share = row != 0
        assert torch.allclose(torch.sign(row[share]), torch.sign(base[share]))


def test_poisonedfl_state_survives_a_checkpoint():
    d = 50
    g = torch.linspace(-1, 1, d)
    first = PoisonedFL(d, seed=3, scale=4.0, check_period=2)
    for round_index in range(3):
        first(torch.zeros(2, d), mask(False, True), context(round=round_index, global_params=g * round_index, last_global_update=g))
    second = PoisonedFL(d, seed=99, scale=4.0, check_period=2)  # settings come from the config, state from the checkpoint
    second.load_state_dict(first.state_dict())
    ctx = dict(round=4, global_params=-g, last_global_update=g)
    assert torch.equal(
        first(torch.zeros(2, d), mask(False, True), context(**ctx)),
        second(torch.zeros(2, d), mask(False, True), context(**ctx)),
    )
    assert first.scale == second.scale and first.scale_history == second.scale_history


def test_poisonedfl_direction_is_a_fixed_function_of_the_seed():
    assert torch.equal(PoisonedFL(100, seed=4).direction, PoisonedFL(100, seed=4).direction)
    assert not torch.equal(PoisonedFL(100, seed=4).direction, PoisonedFL(100, seed=5).direction)
    assert set(PoisonedFL(100, seed=4).direction.tolist()) == {-1.0, 1.0}


# ---------------------------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["model_poisoning.type=lei"], "model_poisoning.type='lei' is not one of none, lie, fang"),
        (["model_poisoning.poisonedfl.beta=1.0"], "model_poisoning.poisonedfl.beta=1.0 is out of range"),
        (["model_poisoning.poisonedfl.coordinates=split"], "is not one of shared, partitioned"),
        (["model_poisoning.type=attack_dpfl"], "privacy.type=none; fix: --set privacy.type=gaussian"),
        (
            ["model_poisoning.type=attack_dpfl", "privacy.type=gaussian", "attack.type=none"],
            "attack.type=none trains them honestly; fix: --set attack.type=backdoor",
        ),
    ],
)
def test_bad_model_poisoning_settings_name_the_field_and_the_fix(overrides, expected):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=overrides)
    assert expected in str(caught.value) and "fix:" in str(caught.value)


# ---------------------------------------------------------------------------------------------
# end to end on synthetic data

TINY = [*tiny_synthetic(), "attack.type=none", "server.f=1", "eval.test_size=50"]




def tiny(*extra):
    return load_config(overrides=[*TINY, *extra])


def metrics_rows(out_dir):
    with open(out_dir / "metrics.csv", newline="") as stream:
        return [{k: v for k, v in row.items() if k != "wall_time_s"} for row in csv.DictReader(stream)]


def test_fang_end_to_end_gets_its_update_picked_by_krum(tmp_path):
    run(tiny("rounds=2", "server.aggregator=krum", "model_poisoning.type=fang"), tmp_path / "fang", progress=False)
    rows = read_metrics(tmp_path / "fang")
    assert all(set(row["kept"].split()) <= set(row["malicious_ids"].split()) for row in rows)


@pytest.mark.parametrize("attack,aggregator", [("lie", "median"), ("min_max", "trimmed_mean")])
def test_classic_attacks_end_to_end_change_the_model(tmp_path, attack, aggregator):
    clean = run(tiny("rounds=2", f"server.aggregator={aggregator}"), tmp_path / "clean", progress=False)
    attacked = run(
        tiny("rounds=2", f"server.aggregator={aggregator}", f"model_poisoning.type={attack}"),
        tmp_path / attack,
        progress=False,
    )
    assert attacked["settings"]["model_poisoning.type"] == attack
    assert [r["selected"] for r in read_metrics(tmp_path / "clean")] == [r["selected"] for r in read_metrics(tmp_path / attack)]
    assert attacked["final_test_loss"] != clean["final_test_loss"]


def test_poisonedfl_end_to_end_resumes_exactly(tmp_path):
    settings = [
        "server.aggregator=fedavg",
        "model_poisoning.type=poisonedfl",
        "model_poisoning.poisonedfl.check_period=1",
        "model_poisoning.poisonedfl.flip_prob=0.05",
    ]
    run(tiny("rounds=3", *settings), tmp_path / "straight", progress=False)
    run(tiny("rounds=2", *settings), tmp_path / "stopped", progress=False)
    run(tiny("rounds=3", *settings), tmp_path / "stopped", resume=True, progress=False)
    assert metrics_rows(tmp_path / "stopped") == metrics_rows(tmp_path / "straight")
    state = read_checkpoint(tmp_path / "straight" / "checkpoint.pt")["upload_state"]
    assert [round_index for round_index, _ in state["attack"]["scale_history"]] == [0, 1, 2]
