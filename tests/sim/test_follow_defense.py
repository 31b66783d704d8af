"""The attacker that follows the client defense (`attack.follow_client_defense`): malicious clients
run the same client defense as the benign ones while they poison.

The oracle is a hand loop over one malicious client's steps: its batch plan and label shifts
drawn as the simulator documents them, gradients by plain autograd on a fresh model, the LeadFL
step of `leadfl_ext.reference` (docs/algorithms.md §1.1) with the lookahead gradient taken on the
same poisoned batch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from sim.attacks.data_poisoning import draw_label_shifts, flip_labels
from sim.config import load_config
from sim.data import make_synthetic_dataset, partition
from sim.engines.schedules import plan_batches
from sim.engines.sequential import SequentialEngine
from sim.errors import ConfigError
from sim.models import build_model, flatten_parameters, load_flat_parameters_, trainable_parameters

from simtest import attack_section

pytestmark = pytest.mark.usefixtures("one_thread")
leadfl_ext = pytest.importorskip("leadfl_ext")

LR, ALPHA, Q, ROUND, SEED = 0.1, 0.4, 0.2, 2, 0


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic_dataset(160, 40, "cpu", seed=0)


def engine(dataset, clients, follow, defense="leadfl"):
    training = SimpleNamespace(lr=LR, momentum=0.0, batch_size=8, local_epochs=1, local_steps=4, lr_schedule="constant",
                               lr_step_rounds=10, lr_gamma=0.5, lr_min=0.0, memory_format="contiguous")
    attack = attack_section(type="label_flip", follow_client_defense=follow)
    defense_section = SimpleNamespace(type=defense, noise_scale=0.2, variant="hessian", alpha=ALPHA, q=Q, scope=None,
                                      momentum_reset="round")
    return SequentialEngine("mlp", dataset, clients, [0], training, attack, defense_section, SEED, "cpu")


def hand_loop(dataset, indices, start, client, training):
    """The malicious client 0 following LeadFL hessian, step by step."""
    model = build_model("mlp", dataset.image_shape, dataset.num_classes)
    load_flat_parameters_(model, start)
    params = [p for _, p in trainable_parameters(model)]
    plan = plan_batches(indices, training, seed=SEED, client=client, round=ROUND, device="cpu")
    shifts = draw_label_shifts(plan.num_steps, dataset.num_classes, plan.generator)
    for step in range(plan.num_steps):
        batch, _ = plan.batch(step)
        x, y = dataset.train_x[batch], flip_labels(dataset.train_y[batch], shifts[step], dataset.num_classes)
        g = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        with torch.no_grad():
            saved = [p.clone() for p in params]
            for p, grad in zip(params, g):
                p.sub_(LR * grad)  # the lookahead point W - lr*g, same batch
        g_look = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        with torch.no_grad():
            for p, w in zip(params, saved):
                p.copy_(w)
            leadfl_ext.reference.fused_step_([p.data for p in params], list(g), list(g_look), lr=LR, alpha=ALPHA, q=Q)
    return flatten_parameters(model) - start


def test_a_malicious_client_following_leadfl_takes_the_leadfl_step_on_its_poisoned_batches(dataset):
    clients = partition(dataset.train_y, 4, "iid", seed=0)
    start = flatten_parameters(build_model("mlp", dataset.image_shape, dataset.num_classes, seed=1))
    follower = engine(dataset, clients, follow=True)
    got = follower.train_clients(start, [0], ROUND)[0]
    expected = hand_loop(dataset, clients[0], start, 0, follower.training.training)
    assert torch.allclose(got, expected, rtol=0, atol=1e-6), (got - expected).abs().max()
    # Without following, the same client takes plain SGD steps: another update.
    plain = engine(dataset, clients, follow=False).train_clients(start, [0], ROUND)[0]
    assert (plain - got).abs().max() > 1e-4


def test_following_changes_only_the_malicious_rows_and_counts_the_lookahead_passes(dataset):
    clients = partition(dataset.train_y, 4, "iid", seed=0)
    start = flatten_parameters(build_model("mlp", dataset.image_shape, dataset.num_classes, seed=1))
    follower, plain = engine(dataset, clients, follow=True), engine(dataset, clients, follow=False)
    a, b = follower.train_clients(start, [0, 1, 2], ROUND), plain.train_clients(start, [0, 1, 2], ROUND)
    assert torch.equal(a[1:], b[1:]) and not torch.equal(a[0], b[0])
    # 4 steps: a label-flip row following `hessian` runs 2 passes a step, 1 without; plus the local test.
    indices = [clients[c] for c in (0, 1)]
    assert follower.training.forward_passes(["label_flip", "benign"], indices) == [9, 9]
    assert plain.training.forward_passes(["label_flip", "benign"], indices) == [5, 9]


def test_follow_client_defense_takes_true_or_false_only():
    assert load_config(overrides=["attack.follow_client_defense=true"]).attack.follow_client_defense is True
    with pytest.raises(ConfigError, match=r"attack\.follow_client_defense='yes please' must be true or false; "
                                          r"fix: --set attack\.follow_client_defense=false"):
        load_config(overrides=["attack.follow_client_defense=yes please"])
