"""Neurotoxin (Zhang et al., ICML 2022): the backdoor's gradient projected onto the coordinates the
last global update changed least. Oracles: the mask by a plain sort with the documented tie rule,
one client's steps as an autograd loop with the mask applied by hand; the mask survives a resume."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sim.attacks.data.neurotoxin import neurotoxin_mask
from sim.attacks.data_poisoning import TRIGGER_PIXELS
from sim.config import load_config
from sim.data import make_synthetic_dataset, partition
from sim.engines.batched import BatchedEngine
from sim.engines.schedules import plan_batches
from sim.engines.sequential import SequentialEngine
from sim.errors import ConfigError
from sim.models import build_model, flatten_parameters, load_flat_parameters_, trainable_parameters
from sim.runner import run

from simtest import attack_section, tiny_synthetic

pytestmark = pytest.mark.usefixtures("one_thread")

LR, WEIGHT, TARGET, ROUND, SEED, SHARE = 0.1, 0.4, 8, 1, 0, 0.3


def test_the_mask_drops_the_largest_coordinates_lower_index_first_on_ties():
    update = torch.tensor([0.1, -3.0, 2.0, 0.5, -2.0])
    assert neurotoxin_mask(update, 0.4).tolist() == [1.0, 0.0, 0.0, 1.0, 1.0]  # ceil(2) dropped: 3, then 2 (index 2)


def test_the_mask_matches_a_plain_sort_on_1000_random_cases():
    generator = np.random.default_rng(0)
    for _ in range(1000):
        d = int(generator.integers(1, 40))
        values = generator.integers(-5, 6, size=d).astype(np.float32)  # small integers: many ties
        share = float(generator.uniform(0.01, 0.99))
        order = sorted(range(d), key=lambda j: (-abs(values[j]), j))
        expected = [0.0 if j in set(order[:math.ceil(share * d)]) else 1.0 for j in range(d)]
        assert neurotoxin_mask(torch.tensor(values), share).tolist() == expected


def sections(blend="fixed"):
    training = SimpleNamespace(lr=LR, momentum=0.0, batch_size=8, local_epochs=1, local_steps=3, lr_schedule="constant",
                               lr_step_rounds=10, lr_gamma=0.5, lr_min=0.0, memory_format="contiguous")
    attack = attack_section(type="neurotoxin", target_label=TARGET)
    attack.neurotoxin = SimpleNamespace(blend=blend, blend_weight=WEIGHT, mask_share=SHARE)
    defense = SimpleNamespace(type="none", noise_scale=0.2, variant="hessian", alpha=0.4, q=0.2, scope=None,
                              momentum_reset="round")
    return training, attack, defense


def test_a_neurotoxin_client_steps_only_on_the_kept_coordinates():
    dataset = make_synthetic_dataset(160, 40, "cpu", seed=0)
    clients = partition(dataset.train_y, 4, "iid", seed=0)
    training, attack, defense = sections()
    engine = SequentialEngine("mlp", dataset, clients, [2], training, attack, defense, SEED, "cpu")
    start = flatten_parameters(build_model("mlp", dataset.image_shape, dataset.num_classes, seed=1))
    last = torch.randn(start.numel(), generator=torch.Generator().manual_seed(3))
    engine.observe_global_update(last)
    got = engine.train_clients(start, [2], ROUND)[0]

    mask = neurotoxin_mask(last, SHARE)
    assert torch.all(got[mask == 0] == 0) and (got[mask == 1] != 0).any()
    model = build_model("mlp", dataset.image_shape, dataset.num_classes)
    load_flat_parameters_(model, start)
    params = [p for _, p in trainable_parameters(model)]
    plan = plan_batches(clients[2], training, seed=SEED, client=2, round=ROUND, device="cpu")
    hi, lo = float(dataset.trigger_hi), float(dataset.trigger_lo)
    for step in range(plan.num_steps):
        batch, _ = plan.batch(step)
        x, y = dataset.train_x[batch], dataset.train_y[batch]
        poisoned = x.clone()
        for row, col, high in TRIGGER_PIXELS:
            poisoned[:, :, row, col] = hi if high else lo
        loss = WEIGHT * F.cross_entropy(model(poisoned), torch.full_like(y, TARGET)) + (1 - WEIGHT) * F.cross_entropy(model(x), y)
        flat = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]) * mask
        with torch.no_grad():
            load_flat_parameters_(model, flatten_parameters(model) - LR * flat)
    expected = flatten_parameters(model) - start
    assert torch.allclose(got, expected, rtol=0, atol=1e-6), (got - expected).abs().max()


def test_both_engines_mask_alike():
    dataset = make_synthetic_dataset(160, 40, "cpu", seed=0)
    clients = partition(dataset.train_y, 4, "iid", seed=0)
    training, attack, defense = sections("mgda")
    sequential = SequentialEngine("mlp", dataset, clients, [1, 2], training, attack, defense, SEED, "cpu")
    batched = BatchedEngine("mlp", dataset, clients, [1, 2], training, attack, defense, SEED, "cpu")
    start = flatten_parameters(build_model("mlp", dataset.image_shape, dataset.num_classes, seed=1))
    last = torch.randn(start.numel(), generator=torch.Generator().manual_seed(4))
    for engine in (sequential, batched):
        engine.observe_global_update(last)
    expected = sequential.train_clients(start, [0, 1, 2, 3], ROUND)
    assert torch.allclose(batched.train_clients(start, [0, 1, 2, 3], ROUND), expected, rtol=0, atol=2e-5)


def test_a_resumed_run_masks_as_the_uninterrupted_one(tmp_path):
    sets = [*tiny_synthetic(), "server.aggregator=fedavg", "attack.type=neurotoxin", "attack.neurotoxin.mask_share=0.5"]
    run(load_config(overrides=[*sets, "rounds=4"]), tmp_path / "straight", progress=False)
    run(load_config(overrides=[*sets, "rounds=2"]), tmp_path / "stopped", progress=False)
    run(load_config(overrides=[*sets, "rounds=4"]), tmp_path / "stopped", resume=True, progress=False)

    def rows(folder):
        lines = [line.split(",") for line in (folder / "metrics.csv").read_text().splitlines()]
        wall = lines[0].index("wall_time_s")
        return [line[:wall] + line[wall + 1:] for line in lines]

    assert rows(tmp_path / "stopped") == rows(tmp_path / "straight")
    # and the mask matters: without it the run goes elsewhere
    run(load_config(overrides=[*tiny_synthetic(), "server.aggregator=fedavg", "rounds=4"]), tmp_path / "backdoor",
        progress=False)
    assert rows(tmp_path / "backdoor") != rows(tmp_path / "straight")


@pytest.mark.parametrize("value", [0, 1])
def test_mask_share_must_lie_strictly_between_zero_and_one(value):
    with pytest.raises(ConfigError, match=rf"attack\.neurotoxin\.mask_share={float(value)} is out of range: it must be "
                                          r"in \(0, 1\); fix: --set attack\.neurotoxin\.mask_share=0\.1"):
        load_config(overrides=["attack.type=neurotoxin", f"attack.neurotoxin.mask_share={value}"])


def test_a_run_killed_mid_way_resumes_with_the_mask_it_had(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    sets = [*tiny_synthetic(), "server.aggregator=fedavg", "attack.type=neurotoxin", "attack.neurotoxin.mask_share=0.5",
            "training.local_steps=8", "rounds=12"]
    flags = [item for s in sets for item in ("--set", s)]
    environment = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "sim", "run", "--out", str(tmp_path / "killed"), "--no-progress", "--threads", "1",
               *flags]
    process = subprocess.Popen(command, cwd=repo, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.csv"
    deadline = time.time() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 4):  # header + 3 rounds
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = len(metrics.read_text().splitlines()) - 1
    assert 3 <= killed_at < 12
    resumed = subprocess.run([*command, "--resume"], cwd=repo, env=environment, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run(load_config(overrides=sets), tmp_path / "straight", progress=False)

    def rows(folder):
        lines = [line.split(",") for line in (folder / "metrics.csv").read_text().splitlines()]
        wall = lines[0].index("wall_time_s")
        return [line[:wall] + line[wall + 1:] for line in lines]

    assert rows(tmp_path / "killed") == rows(tmp_path / "straight")
