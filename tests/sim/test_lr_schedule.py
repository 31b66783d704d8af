"""The local learning-rate schedule over rounds: values worked by hand, the trainer using it, a run."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from sim.config import load_config
from sim.data import make_synthetic_dataset, partition
from sim.engines.sequential import SequentialEngine
from sim.errors import ConfigError
from sim.models import build_model, flatten_parameters
from sim.runner import run
from sim.engines.schedules import local_lr
from simtest import attack_section as attack_section_of

pytestmark = pytest.mark.usefixtures("one_thread")




def schedule(**fields):
    base = dict(lr=0.1, momentum=0.0, batch_size=16, local_epochs=1, local_steps=3,
                lr_schedule="constant", lr_step_rounds=3, lr_gamma=0.5, lr_min=0.0)
    base.update(fields)
    return SimpleNamespace(**base)


def test_constant_schedule_is_the_configured_lr():
    assert [local_lr(schedule(), r, 10) for r in (0, 5, 9)] == [0.1, 0.1, 0.1]
    # A section from before the schedule existed counts as constant.
    assert local_lr(SimpleNamespace(lr=0.02), 7) == 0.02


def test_step_schedule_multiplies_by_gamma_every_step_rounds():
    # rounds 0-2: 0.1; 3-5: 0.05; 6-8: 0.025
    values = [local_lr(schedule(lr_schedule="step"), r, 9) for r in range(9)]
    assert values == pytest.approx([0.1] * 3 + [0.05] * 3 + [0.025] * 3)


def test_cosine_schedule_falls_from_lr_towards_lr_min_over_the_run():
    # lr_min + (lr - lr_min)(1 + cos(pi r / R)) / 2 with lr 0.1, lr_min 0.01, R = 4:
    #   r = 0: 0.1;  r = 1: 0.01 + 0.09 * (1 + 0.707107) / 2 = 0.086820;  r = 2: 0.055;
    #   r = 3: 0.01 + 0.09 * (1 - 0.707107) / 2 = 0.023180
    cosine = schedule(lr_schedule="cosine", lr_min=0.01)
    assert [local_lr(cosine, r, 4) for r in range(4)] == pytest.approx([0.1, 0.086820, 0.055, 0.023180], abs=1e-6)
    with pytest.raises(ValueError, match="number of rounds"):
        local_lr(cosine, 0, None)


def test_cosine_lr_min_above_lr_is_refused():
    with pytest.raises(ConfigError, match=r"training\.lr_min=0\.5 exceeds training\.lr=0\.01.*fix: --set training\.lr_min="):
        load_config(overrides=["training.lr_schedule=cosine", "training.lr_min=0.5"])


def test_trainer_takes_each_rounds_lr_from_the_schedule():
    dataset = make_synthetic_dataset(200, 50, "cpu", seed=0)
    indices = partition(dataset.train_y, 4, "iid", seed=0)
    start = flatten_parameters(build_model("mlp", dataset.image_shape, dataset.num_classes, seed=0))
    attack = attack_section_of(type="none")
    defense = SimpleNamespace(type="ldp", noise_scale=0.2, variant="hessian", alpha=0.4, q=0.2)

    def engine(training):
        return SequentialEngine("mlp", dataset, indices, [], training, attack, defense, 0, "cpu", rounds=9)

    # Round 4 of the step schedule trains with 0.1 * 0.5 = 0.05, noise defense included.
    stepped = engine(schedule(lr_schedule="step")).train_clients(start, [0, 1], 4)
    constant = engine(schedule(lr=0.05)).train_clients(start, [0, 1], 4)
    assert torch.allclose(stepped, constant, atol=1e-7)
    assert not torch.allclose(engine(schedule()).train_clients(start, [0, 1], 4), stepped)


def test_a_scheduled_run_end_to_end_records_its_schedule(tmp_path):
    cfg = load_config(overrides=[
        "data.dataset=synthetic", "data.synthetic_train_size=200", "data.synthetic_test_size=50", "model=mlp",
        "clients.num_clients=4", "clients.num_malicious=0", "clients.clients_per_round=2", "server.aggregator=fedavg",
        "training.local_steps=2", "attack.type=none", "rounds=2", "training.lr_schedule=cosine",
    ])
    summary = run(cfg, tmp_path / "run", progress=False)
    assert summary["settings"]["training.lr_schedule"] == "cosine"
    assert math.isfinite(summary["final_test_loss"])
