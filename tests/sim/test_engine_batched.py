"""The batched engine computes what the sequential engine computes, for every client role."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from sim import reporting, runner
from sim.config import load_config
from sim.data import make_synthetic_dataset, partition
from sim.engines.sequential import SequentialEngine
from sim.engines.batched import BatchedEngine
from sim.engines.registry import choose_engine
from sim.errors import ConfigError
from sim.models import build_model, flatten_parameters
from simtest import attack_section as attack_section_of

pytestmark = pytest.mark.usefixtures("one_thread")

pytest.importorskip("leadfl_ext")

NUM_CLIENTS = 8
MALICIOUS = [1, 5]
ROUND = 3
# Vmapped kernels sum in another order than per-client ones. In float64 the engines agree to
# ~1e-13; in float32 a 2-sample last batch through BatchNorm amplifies rounding to ~1e-4 over
# a few epochs, so the float32 checks use short runs.
FLOAT64_TOLERANCE = 1e-10
FLOAT32_TOLERANCE = 2e-5

ATTACKS = {
    "no attack": {"type": "none"},
    "backdoor, mgda": {"type": "backdoor", "blend": "mgda"},
    "backdoor, fixed blend, boost 2": {"type": "backdoor", "blend": "fixed", "boost": 2.0},
    "label_flip": {"type": "label_flip"},
    "backdoor, mgda, following the defense": {"type": "backdoor", "blend": "mgda", "follow_client_defense": True},
    "label_flip, following the defense": {"type": "label_flip", "follow_client_defense": True},
    "dba, mgda": {"type": "dba"},
}
DEFENSES = {
    "none": {"type": "none"},
    "ldp": {"type": "ldp"},
    "flwbc": {"type": "flwbc"},
    "leadfl hessian": {"type": "leadfl", "variant": "hessian"},
    "leadfl paper": {"type": "leadfl", "variant": "paper"},
    "leadfl original": {"type": "leadfl", "variant": "original"},
    "leadfl drift": {"type": "leadfl", "variant": "drift"},
    "leadfl curvature": {"type": "leadfl", "variant": "curvature"},
    "leadfl hessian scope list": {"type": "leadfl", "variant": "hessian", "scope": ["fc1.weight", "bn1.bias"]},
    "leadfl original never": {"type": "leadfl", "variant": "original", "momentum_reset": "never"},
}




@pytest.fixture(scope="module")
def dataset():
    return make_synthetic_dataset(300, 60, "cpu", seed=0)


@pytest.fixture(scope="module")
def uneven_clients(dataset):
    # Dirichlet sizes 46, 13, 47, 29, 43, 34, 38, 50: different step counts per client and a
    # short last batch in every epoch (none of size 1, which BatchNorm cannot train on).
    parts = partition(dataset.train_y, NUM_CLIENTS, "dirichlet", seed=0, dirichlet_beta=0.5)
    sizes = [len(p) for p in parts]
    assert len(set(math.ceil(size / 16) for size in sizes)) > 2 and all(size % 16 not in (0, 1) for size in sizes)
    return parts


def sections(attack, defense, **training):
    training_section = dict(lr=0.1, momentum=0.1, batch_size=16, local_epochs=2, local_steps=None)
    training_section.update(training)
    attack_section = dict(type="backdoor", target_label=8, blend="mgda", blend_weight=0.5, boost=1.0)
    attack_section.update(attack)
    defense_section = dict(type="none", noise_scale=0.2, variant="hessian", alpha=0.4, q=0.2)
    defense_section.update(defense)
    return SimpleNamespace(**training_section), attack_section_of(**attack_section), SimpleNamespace(**defense_section)


def both_engines(dataset, clients, attack, defense, model="mlp", client_chunk=None, **training):
    training, attack, defense = sections(attack, defense, **training)
    sequential = SequentialEngine(model, dataset, clients, MALICIOUS, training, attack, defense, 0, "cpu")
    batched = BatchedEngine(model, dataset, clients, MALICIOUS, training, attack, defense, 0, "cpu", client_chunk=client_chunk)
    return sequential, batched


def start_params(dataset, model="mlp"):
    params = flatten_parameters(build_model(model, dataset.image_shape, dataset.num_classes, seed=0))
    return params.to(dataset.train_x.dtype)


# ---------------------------------------------------------------------------------------------
# Client updates


@pytest.mark.parametrize("defense", DEFENSES)
@pytest.mark.parametrize("attack", ATTACKS)
def test_batched_updates_equal_sequential_for_every_attack_and_defense(float64, uneven_clients, attack, defense):
    sequential, batched = both_engines(float64, uneven_clients, ATTACKS[attack], DEFENSES[defense], client_chunk=5)
    start = start_params(float64)
    clients = [3, 1, 0, 7, 5, 2, 6, 4]  # both malicious clients, in chunks of 5 and 3
    expected = sequential.train_clients(start, clients, ROUND)
    got = batched.train_clients(start, clients, ROUND)
    assert got.dtype == torch.float64 and got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=0, atol=FLOAT64_TOLERANCE), (got - expected).abs().max()


@pytest.mark.parametrize(
    "attack, defense", [("backdoor, mgda", "leadfl hessian"), ("label_flip", "flwbc"), ("no attack", "leadfl original"),
                        ("no attack", "leadfl drift conv")]
)
def test_batched_fmnist_cnn_updates_equal_sequential(dataset, uneven_clients, attack, defense):
    # Convolutions and 2-D BatchNorm under vmap: the FashionMNIST CNN, three steps per client.
    defenses = {**DEFENSES, "leadfl drift conv": {"type": "leadfl", "variant": "drift", "scope": "conv"}}
    sequential, batched = both_engines(
        dataset, uneven_clients, ATTACKS[attack], defenses[defense], model="fmnist_cnn", local_steps=3
    )
    start = start_params(dataset, "fmnist_cnn")
    clients = [0, 1, 2, 5]
    expected = sequential.train_clients(start, clients, ROUND)
    assert torch.allclose(batched.train_clients(start, clients, ROUND), expected, rtol=0, atol=FLOAT32_TOLERANCE)


def test_batched_fmnist_cnn_curvature_equals_sequential_in_float64(float64, uneven_clients):
    # `curvature` passes g~ - g through the clip where it is small, so float32 rounding of the
    # two engines' lookahead gradients shows in its update (up to ~6e-4 here); in float64 they agree.
    sequential, batched = both_engines(float64, uneven_clients, ATTACKS["backdoor, mgda"], DEFENSES["leadfl curvature"],
                                       model="fmnist_cnn", local_steps=3)
    start = start_params(float64, "fmnist_cnn").double()
    clients = [0, 1, 2, 5]
    expected = sequential.train_clients(start, clients, ROUND)
    assert torch.allclose(batched.train_clients(start, clients, ROUND), expected, rtol=0, atol=FLOAT64_TOLERANCE)


def test_momentum_reset_never_carries_every_clients_buffer_on_both_engines(float64, uneven_clients):
    # Two rounds of `original` with momentum 0.5: round 2 starts from each client's round-1
    # buffer under `never` (so it differs from `round`), and both engines agree, the batched one
    # in chunks whose make-up changes between the rounds.
    start = start_params(float64)
    second = {}
    for reset in ("round", "never"):
        defense = {"type": "leadfl", "variant": "original", "momentum_reset": reset}
        sequential, batched = both_engines(float64, uneven_clients, ATTACKS["backdoor, mgda"], defense,
                                           client_chunk=3, momentum=0.5)
        for engine in (sequential, batched):
            engine.train_clients(start, [3, 1, 0, 7, 5], ROUND)
        expected = sequential.train_clients(start, [0, 5, 2, 1], ROUND + 1)
        got = batched.train_clients(start, [0, 5, 2, 1], ROUND + 1)
        assert torch.allclose(got, expected, rtol=0, atol=FLOAT64_TOLERANCE), (got - expected).abs().max()
        second[reset] = expected
        state = sequential.state_dict()
        if reset == "round":
            assert state is None and batched.state_dict() is None
        else:
            assert sorted(state["clients"]) == [0, 1, 2, 3, 5, 7]
            for client, entry in batched.state_dict()["clients"].items():
                for a, b in zip(entry["momentum"], state["clients"][client]["momentum"]):
                    assert torch.allclose(a, b, rtol=0, atol=FLOAT64_TOLERANCE)
    # Clients 0, 5, 1 trained in round 1 (benign and malicious); client 2 did not.
    for row in (0, 1, 3):
        assert not torch.allclose(second["never"][row], second["round"][row], rtol=0, atol=1e-6)
    assert torch.allclose(second["never"][2], second["round"][2], rtol=0, atol=FLOAT64_TOLERANCE)


def test_chunk_size_does_not_change_the_updates(float64, uneven_clients):
    start = start_params(float64)
    updates = [
        both_engines(float64, uneven_clients, ATTACKS["backdoor, mgda"], DEFENSES["ldp"], client_chunk=chunk)[1]
        .train_clients(start, list(range(NUM_CLIENTS)), ROUND)
        for chunk in (1, 3, NUM_CLIENTS)
    ]
    for other in updates[1:]:
        assert torch.allclose(other, updates[0], rtol=0, atol=FLOAT64_TOLERANCE)


def test_batched_client_without_samples_returns_a_zero_update(dataset, uneven_clients):
    clients = list(uneven_clients[:-1]) + [torch.empty(0, dtype=torch.int64)]
    _, batched = both_engines(dataset, clients, ATTACKS["label_flip"], DEFENSES["leadfl hessian"])
    updates = batched.train_clients(start_params(dataset), [0, NUM_CLIENTS - 1], ROUND)
    assert updates[1].abs().sum().item() == 0.0 and updates[0].abs().sum().item() > 0


def test_chunk_from_free_memory_is_between_one_and_all_clients(dataset, uneven_clients):
    _, batched = both_engines(dataset, uneven_clients, ATTACKS["backdoor, mgda"], DEFENSES["none"])
    assert 1 <= batched.chunk_size(1000) <= 1000
    assert batched.chunk_size(3) == 3


def test_bad_client_chunk_names_the_value_and_the_fix(dataset, uneven_clients):
    with pytest.raises(ConfigError, match=r"client_chunk=0 .*fix: --set client_chunk="):
        both_engines(dataset, uneven_clients, ATTACKS["no attack"], DEFENSES["none"], client_chunk=0)
    with pytest.raises(ConfigError, match=r"client_chunk=0.*>= 1"):
        load_config(overrides=["client_chunk=0"])


# ---------------------------------------------------------------------------------------------
# Whole runs: per-round metrics

RUN = [
    "data.dataset=synthetic",
    "data.synthetic_train_size=300",
    "data.synthetic_test_size=100",
    "data.partition=dirichlet",
    "model=mlp",
    f"clients.num_clients={NUM_CLIENTS}",
    "clients.num_malicious=2",
    "clients.clients_per_round=6",
    "selection.schedule=fixed",
    "selection.fixed_malicious=2",
    "training.local_epochs=1",
    "training.lr=0.1",
    "server.aggregator=fedavg",
    "rounds=3",
]
# One run per attack and one per client defense (every attack and every defense appears).
RUN_CASES = {
    "backdoor mgda, no defense": ["attack.type=backdoor"],
    "backdoor fixed, ldp": ["attack.type=backdoor", "attack.backdoor.blend=fixed", "client_defense.type=ldp"],
    "label_flip, flwbc": ["attack.type=label_flip", "client_defense.type=flwbc"],
    "backdoor, leadfl hessian, multikrum": [
        "client_defense.type=leadfl", "server.aggregator=multikrum", "server.f=1",
    ],
    "no attack, leadfl paper": ["attack.type=none", "client_defense.type=leadfl", "client_defense.variant=paper"],
    "label_flip, leadfl original": [
        "attack.type=label_flip", "client_defense.type=leadfl", "client_defense.variant=original",
    ],
    "backdoor, leadfl original, momentum never": [
        "client_defense.type=leadfl", "client_defense.variant=original", "client_defense.momentum_reset=never",
        "selection.schedule=random", "clients.clients_per_round=4", "training.momentum=0.5",
    ],
    "backdoor, leadfl curvature": ["client_defense.type=leadfl", "client_defense.variant=curvature"],
}


@pytest.mark.parametrize("case", RUN_CASES)
def test_batched_run_metrics_equal_sequential(tmp_path, case):
    rows = {}
    for engine in ("sequential", "batched"):
        cfg = load_config(overrides=[*RUN, *RUN_CASES[case], f"engine={engine}"])
        runner.run(cfg, tmp_path / engine, progress=False)
        rows[engine] = reporting.read_metrics(tmp_path / engine)
    test_size = 100
    assert len(rows["batched"]) == len(rows["sequential"]) == 3
    for got, expected in zip(rows["batched"], rows["sequential"]):
        for column in ("round", "selected", "malicious_ids", "kept", "rejected_nonfinite"):
            assert got[column] == expected[column]
        # Accuracies count test images: float rounding may at most move one image.
        for column in ("main_accuracy", "backdoor_accuracy"):
            if expected[column] is None:
                assert got[column] is None
            else:
                assert got[column] == pytest.approx(expected[column], abs=100 / test_size + 1e-9)
        assert got["test_loss"] == pytest.approx(expected["test_loss"], rel=1e-4)


# ---------------------------------------------------------------------------------------------
# engine: auto


def test_auto_picks_the_sequential_engine_on_cpu_and_says_so(tmp_path, capsys):
    assert choose_engine("cpu")[0] == "sequential"
    assert choose_engine("cuda")[0] == "batched"
    cfg = load_config(overrides=[*RUN, "rounds=1", "engine=auto"])
    summary = runner.run(cfg, tmp_path / "auto", progress=False)
    assert summary["settings"]["engine"] == "auto"
    assert summary["settings"]["engine (resolved)"] == "sequential"
    assert "engine: auto -> sequential" in capsys.readouterr().err


@pytest.mark.parametrize("defense", ["ldp", "leadfl hessian", "leadfl original"])
def test_role_override_trains_the_malicious_clients_as_benign_ones_and_leaves_the_run_alone(dataset, uneven_clients, defense):
    # Retraining a round's clients as benign (a "shadow" trajectory) gives what an engine without
    # malicious clients gives, and the engine's next normal call is unchanged by it.
    training, attack, defense_section = sections({"type": "backdoor", "boost": 3.0}, DEFENSES[defense])
    global_params = start_params(dataset)
    clients = list(range(NUM_CLIENTS))
    for engine_class in (SequentialEngine, BatchedEngine):
        engine = engine_class("mlp", dataset, uneven_clients, MALICIOUS, training, attack, defense_section, 0, "cpu")
        honest = engine_class("mlp", dataset, uneven_clients, [], training, attack, defense_section, 0, "cpu")
        normal = engine.train_clients(global_params, clients, ROUND)
        shadow = engine.train_clients(global_params, clients, ROUND, roles=["benign"] * NUM_CLIENTS)
        assert torch.equal(shadow, honest.train_clients(global_params, clients, ROUND))
        assert not torch.equal(shadow[MALICIOUS], normal[MALICIOUS])
        assert torch.equal(engine.train_clients(global_params, clients, ROUND), normal)
