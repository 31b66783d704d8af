from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from sim.attacks.data_poisoning import stamp_trigger
from sim.data import load_dataset, make_synthetic_dataset, partition
from sim.engines.sequential import SequentialEngine
from sim.errors import ConfigError
from sim.models import build_model, flatten_parameters, load_flat_parameters_
from simtest import attack_section as attack_section_of, requires_fashion_mnist

NUM_CLIENTS = 8
MALICIOUS = [1, 5]
BENIGN_CLIENT, MALICIOUS_CLIENT = 0, 1
TARGET = 8


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic_dataset(400, 200, "cpu", seed=0)


@pytest.fixture(scope="module")
def client_indices(dataset):
    return partition(dataset.train_y, NUM_CLIENTS, "iid", seed=0)  # 50 samples each


def sections(training=None, attack=None, defense=None):
    training_section = dict(lr=0.1, momentum=0.1, batch_size=16, local_epochs=2, local_steps=None)
    attack_section = dict(type="backdoor", target_label=TARGET, blend="mgda", blend_weight=0.5, boost=1.0)
    defense_section = dict(type="none", noise_scale=0.2, variant="hessian", alpha=0.4, q=0.2)
    training_section.update(training or {})
    attack_section.update(attack or {})
    defense_section.update(defense or {})
    return (
        SimpleNamespace(**training_section),
        attack_section_of(**attack_section),
        SimpleNamespace(**defense_section),
    )


def make_engine(dataset, client_indices, model="mlp", malicious=MALICIOUS, seed=0, **overrides):
    training, attack, defense = sections(**overrides)
    return SequentialEngine(model, dataset, client_indices, malicious, training, attack, defense, seed, "cpu")


def initial_parameters(dataset, model="mlp"):
    return flatten_parameters(build_model(model, dataset.image_shape, dataset.num_classes, seed=0))


def loss_at(dataset, params, x, y, model="mlp"):
    network = build_model(model, dataset.image_shape, dataset.num_classes)
    load_flat_parameters_(network, params)
    with torch.no_grad():
        return F.cross_entropy(network(x), y).item()


def train_one(engine, global_params, client, round=0):
    return engine.train_clients(global_params, [client], round)[0]


# ---------------------------------------------------------------------------------------------


def test_benign_client_lowers_the_loss_on_its_own_data(dataset, client_indices):
    engine = make_engine(dataset, client_indices, training={"local_epochs": 3})
    start = initial_parameters(dataset)
    update = train_one(engine, start, BENIGN_CLIENT)
    x, y = dataset.train_x[client_indices[BENIGN_CLIENT]], dataset.train_y[client_indices[BENIGN_CLIENT]]
    assert loss_at(dataset, start + update, x, y) < 0.7 * loss_at(dataset, start, x, y)


def test_updates_are_bitwise_reproducible_and_vary_with_the_round(dataset, client_indices):
    settings = dict(model="fmnist_cnn", training={"local_steps": 3}, defense={"type": "flwbc"})
    start = initial_parameters(dataset, "fmnist_cnn")
    first = make_engine(dataset, client_indices, **settings).train_clients(start, [0, 1], 4)
    again = make_engine(dataset, client_indices, **settings)
    assert first.shape == (2, start.numel())
    # Reversed order on a reused engine: an update depends on nothing but its own client.
    assert torch.equal(again.train_clients(start, [1, 0], 4), first[[1, 0]])
    assert not torch.equal(again.train_clients(start, [0], 5)[0], first[0])


@pytest.mark.parametrize("blend", ["mgda", "fixed"])
def test_backdoor_client_teaches_the_trigger(dataset, client_indices, blend):
    engine = make_engine(dataset, client_indices, training={"local_epochs": 5}, attack={"blend": blend})
    start = initial_parameters(dataset)
    not_target = dataset.test_y != TARGET
    triggered = stamp_trigger(dataset.test_x[not_target], dataset.trigger_hi, dataset.trigger_lo)
    to_target = torch.full((triggered.shape[0],), TARGET)

    malicious_update = train_one(engine, start, MALICIOUS_CLIENT)
    benign_update = train_one(engine, start, BENIGN_CLIENT)
    backdoor_loss_malicious = loss_at(dataset, start + malicious_update, triggered, to_target)
    backdoor_loss_benign = loss_at(dataset, start + benign_update, triggered, to_target)
    assert backdoor_loss_malicious < 0.5 * backdoor_loss_benign
    assert backdoor_loss_malicious < loss_at(dataset, start, triggered, to_target)


def test_boost_scales_only_the_malicious_update(dataset, client_indices):
    start = initial_parameters(dataset)
    plain = make_engine(dataset, client_indices, training={"local_steps": 4}).train_clients(start, [0, 1], 0)
    boosted = make_engine(dataset, client_indices, training={"local_steps": 4}, attack={"boost": 3.0})
    boosted_updates = boosted.train_clients(start, [0, 1], 0)
    assert torch.equal(boosted_updates[0], plain[0])
    assert torch.equal(boosted_updates[1], plain[1] * 3.0)


def test_label_flip_client_unlearns_the_true_labels(dataset, client_indices):
    engine = make_engine(dataset, client_indices, training={"local_epochs": 3}, attack={"type": "label_flip"})
    start = initial_parameters(dataset)
    x, y = dataset.train_x[client_indices[MALICIOUS_CLIENT]], dataset.train_y[client_indices[MALICIOUS_CLIENT]]
    flipped_update = train_one(engine, start, MALICIOUS_CLIENT)
    assert loss_at(dataset, start + flipped_update, x, y) > loss_at(dataset, start, x, y)


@pytest.mark.parametrize("defense", ["ldp", "flwbc"])
def test_noise_defense_changes_only_weight_tensors(dataset, client_indices, defense):
    start = initial_parameters(dataset)
    names_and_sizes = [(n, p.numel()) for n, p in build_model("mlp", (1, 28, 28), 10).named_parameters()]
    is_weight = torch.cat([torch.full((size,), "weight" in name) for name, size in names_and_sizes])
    # Two steps in one epoch: the noise comes only after the second, the last one.
    clean = train_one(make_engine(dataset, client_indices, training={"local_steps": 2}), start, BENIGN_CLIENT)
    noised_engine = make_engine(dataset, client_indices, training={"local_steps": 2}, defense={"type": defense})
    noised = train_one(noised_engine, start, BENIGN_CLIENT)
    assert torch.equal(noised[~is_weight], clean[~is_weight])
    assert (noised[is_weight] != clean[is_weight]).float().mean() > 0.5


@pytest.mark.parametrize("defense", ["ldp", "flwbc"])
def test_noise_defense_skips_the_first_step_of_every_epoch(dataset, client_indices, defense):
    start = initial_parameters(dataset)
    # One step per epoch (the batch holds the client's 50 samples): no step ever gets noise.
    one_step_epochs = {"batch_size": 64, "local_epochs": 3}
    clean = train_one(make_engine(dataset, client_indices, training=one_step_epochs), start, BENIGN_CLIENT)
    noised_engine = make_engine(dataset, client_indices, training=one_step_epochs, defense={"type": defense})
    assert torch.equal(train_one(noised_engine, start, BENIGN_CLIENT), clean)


@pytest.mark.parametrize("attack", ["backdoor", "label_flip"])
@pytest.mark.parametrize("defense", ["ldp", "flwbc", "leadfl"])
def test_malicious_clients_ignore_the_client_defense(dataset, client_indices, attack, defense):
    if defense == "leadfl":
        pytest.importorskip("leadfl_ext")
    start = initial_parameters(dataset)
    settings = dict(training={"local_steps": 6}, attack={"type": attack})
    undefended = train_one(make_engine(dataset, client_indices, **settings), start, MALICIOUS_CLIENT)
    defended_engine = make_engine(dataset, client_indices, defense={"type": defense}, **settings)
    assert torch.equal(train_one(defended_engine, start, MALICIOUS_CLIENT), undefended)


def test_without_an_attack_the_malicious_set_trains_as_benign(dataset, client_indices):
    start = initial_parameters(dataset)
    settings = dict(training={"local_steps": 6}, attack={"type": "none"}, defense={"type": "ldp"})
    as_malicious = make_engine(dataset, client_indices, malicious=[MALICIOUS_CLIENT], **settings)
    as_benign = make_engine(dataset, client_indices, malicious=[], **settings)
    assert torch.equal(train_one(as_malicious, start, MALICIOUS_CLIENT), train_one(as_benign, start, MALICIOUS_CLIENT))


def test_local_steps_replace_local_epochs(dataset, client_indices):
    start = initial_parameters(dataset)
    by_epochs = make_engine(dataset, client_indices, training={"local_epochs": 2})  # 4 steps per epoch
    by_steps = make_engine(dataset, client_indices, training={"local_epochs": 99, "local_steps": 8})
    assert torch.equal(train_one(by_epochs, start, 3), train_one(by_steps, start, 3))


def test_client_without_samples_returns_a_zero_update(dataset, client_indices):
    indices = list(client_indices[:-1]) + [torch.empty(0, dtype=torch.int64)]
    engine = make_engine(dataset, indices)
    update = train_one(engine, initial_parameters(dataset), NUM_CLIENTS - 1)
    assert update.abs().sum().item() == 0.0


def test_bad_training_settings_are_config_errors(dataset, client_indices):
    with pytest.raises(ConfigError, match="training.lr"):
        make_engine(dataset, client_indices, training={"lr": 0.0})
    with pytest.raises(ConfigError, match="none, backdoor, label_flip"):
        make_engine(dataset, client_indices, attack={"type": "sybil"})
    with pytest.raises(ConfigError, match="target_label"):
        make_engine(dataset, client_indices, attack={"target_label": 10})
    with pytest.raises(ConfigError, match="hessian, paper, original"):
        make_engine(dataset, client_indices, defense={"type": "leadfl", "variant": "exact"})


# ---------------------------------------------------------------------------------------------
# LeadFL


@pytest.mark.parametrize("variant", ["hessian", "paper", "original"])
def test_each_leadfl_variant_trains_and_differs_from_plain_sgd(dataset, client_indices, variant):
    pytest.importorskip("leadfl_ext")
    start = initial_parameters(dataset)
    settings = dict(training={"local_steps": 6})
    plain = train_one(make_engine(dataset, client_indices, **settings), start, BENIGN_CLIENT)
    leadfl_engine = make_engine(dataset, client_indices, defense={"type": "leadfl", "variant": variant}, **settings)
    leadfl = train_one(leadfl_engine, start, BENIGN_CLIENT)
    assert torch.isfinite(leadfl).all()
    assert not torch.allclose(leadfl, plain, atol=1e-4)
    assert torch.equal(train_one(leadfl_engine, start, BENIGN_CLIENT), leadfl)


@pytest.mark.parametrize("variant", ["hessian", "paper"])
def test_leadfl_without_regularisation_is_momentum_sgd(dataset, client_indices, variant):
    pytest.importorskip("leadfl_ext")
    start = initial_parameters(dataset)
    settings = dict(training={"local_steps": 8, "momentum": 0.5})
    plain = train_one(make_engine(dataset, client_indices, **settings), start, BENIGN_CLIENT)
    unregularised = {"type": "leadfl", "variant": variant, "alpha": 0.0}
    leadfl_engine = make_engine(dataset, client_indices, defense=unregularised, **settings)
    assert torch.allclose(train_one(leadfl_engine, start, BENIGN_CLIENT), plain, atol=1e-6)


@pytest.mark.parametrize("variant", ["hessian", "paper"])
def test_leadfl_engine_matches_the_leadfl_optimizer(float64, client_indices, variant):
    # In float64: fmnist_cnn's ReLU and max-pool make the gradient jump where an activation
    # crosses zero or a pooling window changes its maximum, and in float32 the engine's and the
    # optimizer's different summation orders (1e-7 apart) can land on either side of such a
    # point, which the following steps then carry as a 1e-4 difference.
    leadfl_ext = pytest.importorskip("leadfl_ext")
    dataset = float64
    start = initial_parameters(dataset, "fmnist_cnn").double()
    # With one batch holding the whole client every step sees the same samples, so the engine
    # and a hand-written optimizer loop train on identical minibatches.
    training = {"batch_size": 64, "local_epochs": 4, "momentum": 0.5}
    engine = make_engine(dataset, client_indices, model="fmnist_cnn", training=training,
                         defense={"type": "leadfl", "variant": variant})
    engine_update = train_one(engine, start, BENIGN_CLIENT)

    model = build_model("fmnist_cnn", dataset.image_shape, dataset.num_classes).double()
    load_flat_parameters_(model, start)
    optimizer = leadfl_ext.LeadFL(model.parameters(), lr=0.1, alpha=0.4, q=0.2, variant=variant, momentum=0.5)
    x, y = dataset.train_x[client_indices[BENIGN_CLIENT]], dataset.train_y[client_indices[BENIGN_CLIENT]]

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(4):
        optimizer.step(closure)
    assert engine_update.dtype == torch.float64
    assert torch.allclose(engine_update, flatten_parameters(model) - start, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Real data


@requires_fashion_mnist
def test_fmnist_cnn_client_learns_on_real_fashion_mnist():
    real = load_dataset("fashion_mnist", None, "cpu")
    parts = partition(real.train_y, 100, "iid", seed=0)
    engine = make_engine(real, parts, model="fmnist_cnn", malicious=[], training={"local_steps": 15, "lr": 0.1})
    start = flatten_parameters(build_model("fmnist_cnn", real.image_shape, real.num_classes, seed=0))
    update = train_one(engine, start, 0)
    x, y = real.train_x[parts[0]], real.train_y[parts[0]]
    assert loss_at(real, start + update, x, y, "fmnist_cnn") < 0.75 * loss_at(real, start, x, y, "fmnist_cnn")
