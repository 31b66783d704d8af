"""DBA (Xie et al., ICLR 2020): the trigger split into pieces, one per malicious client in turn,
each client training the backdoor with its own piece; scored with the global trigger and with
each piece. Oracles: the pieces and the assignment written out by hand, and one client's local
training as a plain autograd loop with the piece stamped pixel by pixel."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from sim.attacks.data.dba import DBA
from sim.attacks.data_poisoning import TRIGGER_PIXELS, split_trigger
from sim.cli import main
from sim.config import load_config
from sim.data import make_synthetic_dataset, partition
from sim.engines.schedules import plan_batches
from sim.engines.sequential import SequentialEngine
from sim.errors import ConfigError
from sim.metrics import trigger_to_target_rate
from sim.models import build_model, flatten_parameters, load_flat_parameters_, trainable_parameters
from sim.records import read_metrics

from simtest import attack_section, tiny_synthetic

pytestmark = pytest.mark.usefixtures("one_thread")

LR, WEIGHT, TARGET, ROUND, SEED = 0.1, 0.3, 8, 1, 0


def test_three_pieces_are_the_top_row_the_middle_and_the_bottom_row():
    top, middle, bottom = split_trigger(3)
    assert [(r, c) for r, c, _ in top] == [(3, 23), (3, 24), (3, 25)]
    assert [(r, c) for r, c, _ in middle] == [(4, 24), (5, 25), (6, 24)]
    assert [(r, c) for r, c, _ in bottom] == [(7, 23), (7, 24), (7, 25)]
    four = split_trigger(4)
    assert [len(piece) for piece in four] == [3, 2, 2, 2]
    assert tuple(pixel for piece in four for pixel in piece) == TRIGGER_PIXELS


def test_malicious_clients_take_the_pieces_in_turn_by_increasing_id():
    dataset = make_synthetic_dataset(40, 20, "cpu", seed=0)
    attack = DBA(SimpleNamespace(blend="mgda", blend_weight=0.5, pieces=2), attack_section(type="dba"), dataset,
                 "cpu", malicious=[9, 2, 5])
    assert [attack.piece_of(client) for client in (2, 5, 9)] == [0, 1, 0]


def stamp_by_hand(images, pixels, hi, lo):
    out = images.clone()
    for row, col, high in pixels:
        out[:, :, row, col] = hi if high else lo
    return out


def test_a_dba_client_trains_the_fixed_blend_on_its_own_piece(tmp_path):
    dataset = make_synthetic_dataset(160, 40, "cpu", seed=0)
    clients = partition(dataset.train_y, 4, "iid", seed=0)
    training = SimpleNamespace(lr=LR, momentum=0.0, batch_size=8, local_epochs=1, local_steps=3,
                               lr_schedule="constant", lr_step_rounds=10, lr_gamma=0.5, lr_min=0.0,
                               memory_format="contiguous")
    attack = attack_section(type="dba", target_label=TARGET)
    attack.dba = SimpleNamespace(blend="fixed", blend_weight=WEIGHT, pieces=3)
    defense = SimpleNamespace(type="none", noise_scale=0.2, variant="hessian", alpha=0.4, q=0.2, scope=None,
                              momentum_reset="round")
    engine = SequentialEngine("mlp", dataset, clients, [1, 3], training, attack, defense, SEED, "cpu")
    start = flatten_parameters(build_model("mlp", dataset.image_shape, dataset.num_classes, seed=1))
    got = engine.train_clients(start, [3], ROUND)[0]  # client 3 is the second malicious id: the middle piece

    model = build_model("mlp", dataset.image_shape, dataset.num_classes)
    load_flat_parameters_(model, start)
    params = [p for _, p in trainable_parameters(model)]
    plan = plan_batches(clients[3], training, seed=SEED, client=3, round=ROUND, device="cpu")
    hi, lo = float(dataset.trigger_hi), float(dataset.trigger_lo)
    for step in range(plan.num_steps):
        batch, _ = plan.batch(step)
        x, y = dataset.train_x[batch], dataset.train_y[batch]
        poisoned = stamp_by_hand(x, split_trigger(3)[1], hi, lo)
        loss = WEIGHT * F.cross_entropy(model(poisoned), torch.full_like(y, TARGET)) + (1 - WEIGHT) * F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(LR * g)
    expected = flatten_parameters(model) - start
    assert torch.allclose(got, expected, rtol=0, atol=1e-6), (got - expected).abs().max()


def test_each_piece_is_scored_alone_and_the_global_trigger_as_the_backdoor_accuracy():
    # A model that calls an image the target exactly when pixel (3, 23), in the top piece, is high.
    class Detector(torch.nn.Module):
        def forward(self, x):
            logits = torch.zeros(x.shape[0], 10)
            logits[:, 0] = 1.0
            logits[x[:, 0, 3, 23] > 0.5, TARGET] = 2.0
            return logits

    x = torch.zeros(20, 1, 28, 28)
    y = torch.arange(20) % 10  # two images of the target class, left out
    rates = [trigger_to_target_rate(Detector(), x, y, TARGET, lambda images, p=piece: stamp_by_hand(images, p, 1.0, 0.0))
             for piece in split_trigger(3)]
    assert rates == [100.0, 0.0, 0.0]


def test_a_dba_run_records_the_global_and_the_per_piece_figures(tmp_path):
    sets = [*tiny_synthetic(), "rounds=2", "server.aggregator=fedavg", "attack.type=dba", "attack.dba.pieces=4"]
    assert main(["run", "--out", str(tmp_path / "dba"), "--no-progress", *[a for s in sets for a in ("--set", s)]]) == 0
    rows = read_metrics(tmp_path / "dba")
    assert all(len(row["backdoor_accuracy_pieces"].split()) == 4 for row in rows)
    assert all(0 <= float(v) <= 100 for row in rows for v in row["backdoor_accuracy_pieces"].split())
    sets = [*tiny_synthetic(), "rounds=1", "server.aggregator=fedavg"]
    assert main(["run", "--out", str(tmp_path / "plain"), "--no-progress", *[a for s in sets for a in ("--set", s)]]) == 0
    assert read_metrics(tmp_path / "plain")[0]["backdoor_accuracy_pieces"] == ""


@pytest.mark.parametrize("value", [1, 10])
def test_pieces_outside_two_to_nine_are_refused(value):
    with pytest.raises(ConfigError, match=rf"attack\.dba\.pieces={value} is out of range: it must be in \[2, 9\]; "
                                          r"fix: --set attack\.dba\.pieces=3"):
        load_config(overrides=["attack.type=dba", f"attack.dba.pieces={value}"])
