"""FLTrust: worked by hand, against a transcription of the paper's Algorithm 1, its settings, and
the server's root set (held out of every client, trained by both engines, resumed)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from sim import runner
from sim.config import load_config, to_dict
from sim.data import hold_out
from sim.errors import ConfigError
from sim.runner import run
from sim.server.base import AggregationContext
from sim.server.fltrust import FLTrust
from sim.server.registry import build_aggregator
from simtest import metrics_without_timing, run_on_two_gloo_ranks


def call(updates, reference):
    return FLTrust()(torch.as_tensor(updates, dtype=torch.float64),
                     AggregationContext(reference_update=torch.as_tensor(reference, dtype=torch.float64)))


def test_fltrust_weights_rows_by_relu_cosine_and_rescales_them_to_the_server_norm():
    # g0 = (3, 4), norm 5.
    #   row 0 (1, 0):  cos 3/5 = 0.6  -> TS 0.6, rescaled (5, 0)
    #   row 1 (0, 2):  cos 8/10 = 0.8 -> TS 0.8, rescaled (0, 5)
    #   row 2 (-1, 0): cos -0.6       -> TS 0
    #   row 3 (0, 0):  zero row       -> TS 0
    # update = (0.6 (5, 0) + 0.8 (0, 5)) / 1.4 = (3, 4) / 1.4
    result = call([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [0.0, 0.0]], [3.0, 4.0])
    assert result.kept == [0, 1]
    assert np.allclose(result.update.numpy(), [3 / 1.4, 4 / 1.4], rtol=1e-12)


def test_fltrust_with_no_trusted_row_takes_no_step():
    result = call([[-1.0, 0.0], [0.0, -2.0]], [1.0, 1.0])
    assert result.kept == [] and torch.equal(result.update, torch.zeros(2, dtype=torch.float64))
    assert call([[1.0, 0.0]], [0.0, 0.0]).kept == []  # the server's own update is zero


def oracle_fltrust(updates, reference):
    n = len(updates)
    g0_norm = float(np.linalg.norm(reference))
    trust, rescaled = [], []
    for i in range(n):
        norm = float(np.linalg.norm(updates[i]))
        cosine = float(np.dot(updates[i], reference)) / (norm * g0_norm) if norm > 0 and g0_norm > 0 else 0.0
        trust.append(max(0.0, cosine))
        rescaled.append(updates[i] * g0_norm / norm if norm > 0 else updates[i])
    total = sum(trust)
    if total == 0:
        return np.zeros(updates.shape[1]), []
    return sum(t * r for t, r in zip(trust, rescaled)) / total, [i for i in range(n) if trust[i] > 0]


def test_fltrust_matches_the_oracle_on_random_cases():
    rng = np.random.default_rng(0)
    dropped = 0
    for case in range(500):
        n, d = int(rng.integers(1, 15)), int(rng.integers(1, 20))
        reference = rng.normal(size=d) * rng.choice([1e-3, 1.0, 100.0])
        updates = rng.normal(size=(n, d)) * rng.uniform(0.01, 10, size=(n, 1)) + reference * rng.uniform(-1, 1)
        if rng.random() < 0.2:
            updates[rng.integers(n)] = 0
        expected, kept = oracle_fltrust(updates, reference)
        result = call(updates, reference)
        assert result.kept == kept, case
        assert np.allclose(result.update.numpy(), expected, rtol=1e-9, atol=1e-12 * np.abs(reference).max()), case
        dropped += len(kept) < n
    assert dropped > 100


# ----------------------------------------------------------------------------------------------
# settings


def test_fltrust_is_built_from_the_config():
    rule = build_aggregator(SimpleNamespace(aggregator="fltrust", fltrust={"root_size": 50}), 10, 100, 25)
    assert isinstance(rule, FLTrust) and rule.root_size == 50 and rule.needs == {"reference_update"}


@pytest.mark.parametrize("value", ["0", "-3", "2.5", "many"])
def test_fltrust_refuses_a_bad_root_size(value):
    with pytest.raises(ConfigError, match="server.fltrust.root_size"):
        load_config(overrides=["server.aggregator=fltrust", f"server.fltrust.root_size={value}"])


TINY = [
    "data.dataset=synthetic", "data.synthetic_train_size=300", "data.synthetic_test_size=100", "model=mlp",
    "clients.num_clients=6", "clients.num_malicious=2", "clients.clients_per_round=4",
    "selection.schedule=fixed", "selection.fixed_malicious=1", "training.local_steps=2", "training.batch_size=16",
    "server.aggregator=fltrust", "server.fltrust.root_size=40", "eval.batch_size=50", "eval.test_size=60",
]


def tiny(*extra):
    return load_config(overrides=[*TINY, *extra])


def test_a_root_set_larger_than_the_training_data_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"root set of 300 samples cannot be held out of 300.*server.fltrust.root_size"):
        run(tiny("server.fltrust.root_size=300", "rounds=1"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "metrics.csv").exists()


@pytest.mark.usefixtures("one_thread")
def test_the_root_set_is_seeded_and_held_out_of_every_client():
    parts = runner._Parts(tiny(), torch.device("cpu"))
    assert parts.server_client == 6 and len(parts.partitions) == 7
    root = set(parts.partitions[6].tolist())
    assert len(root) == 40
    for client in range(6):
        assert not root & set(parts.partitions[client].tolist())
    held, _ = hold_out(300, 40, 0)
    assert root == set(held.tolist())
    assert set(hold_out(300, 40, 1)[0].tolist()) != root  # another seed, another draw
    # without fltrust there is no root set and no server client
    plain = runner._Parts(tiny("server.aggregator=fedavg"), torch.device("cpu"))
    assert plain.server_client is None and len(plain.partitions) == 6


@pytest.mark.usefixtures("one_thread")
def test_the_server_trains_its_root_set_without_the_client_defense_on_both_engines():
    references = {}
    for engine in ("sequential", "batched"):
        for defense in ("none", "ldp"):
            parts = runner._Parts(tiny(f"engine={engine}", f"client_defense.type={defense}"), torch.device("cpu"))
            reference = parts.reference_update(0, parts.initial_params)
            assert reference.shape == parts.initial_params.shape and float(reference.norm()) > 0
            references[engine, defense] = reference
    # LDP noise would change the update: the server runs plain local SGD
    assert torch.equal(references["sequential", "none"], references["sequential", "ldp"])
    assert torch.equal(references["batched", "none"], references["batched", "ldp"])
    assert torch.allclose(references["sequential", "none"], references["batched", "none"], atol=1e-5)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("engine", ["sequential", "batched"])
def test_fltrust_runs_and_resumes_exactly(tmp_path, engine):
    run(tiny(f"engine={engine}", "rounds=4", "metrics.attack_effect=true"), tmp_path / "straight", progress=False)
    run(tiny(f"engine={engine}", "rounds=2", "metrics.attack_effect=true"), tmp_path / "stopped", progress=False)
    run(tiny(f"engine={engine}", "rounds=4", "metrics.attack_effect=true"), tmp_path / "stopped", resume=True,
        progress=False)
    assert metrics_without_timing(tmp_path / "stopped") == metrics_without_timing(tmp_path / "straight")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_fltrust_under_two_gloo_ranks_gives_the_metrics_of_one_process(tmp_path):
    # The server's root set is one more "client": on two ranks its training lands on one of them.
    cfg = load_config(overrides=[*TINY, "rounds=3", "engine=sequential"])
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(cfg)))
    finished = run_on_two_gloo_ranks(config_file, tmp_path / "two")
    assert finished.returncode == 0, finished.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(cfg, tmp_path / "one", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert metrics_without_timing(tmp_path / "two") == metrics_without_timing(tmp_path / "one")


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("engine", ["sequential", "batched"])
def test_the_servers_update_is_plain_task_training_whatever_the_attack(engine):
    # The server is neither an attacker nor a client under the client defense: its root-set update
    # is the same with no attack, with any data-poisoning attack (those with a loss of their own
    # included) and with an attacker that follows the client defense.
    settings = {
        "none": ["attack.type=none"],
        "backdoor": ["attack.type=backdoor"],
        "dba": ["attack.type=dba"],
        "neurotoxin": ["attack.type=neurotoxin"],
        "label_flip": ["attack.type=label_flip"],
        "lie": ["attack.type=none", "model_poisoning.type=lie"],
        "backdoor, LeadFL followed": ["attack.type=backdoor", "client_defense.type=leadfl",
                                      "client_defense.variant=original", "attack.follow_client_defense=true"],
    }
    references = {}
    for name, extra in settings.items():
        parts = runner._Parts(tiny(f"engine={engine}", *extra), torch.device("cpu"))
        references[name] = parts.reference_update(0, parts.initial_params)
    for name, reference in references.items():
        assert torch.equal(reference, references["none"]), name


@pytest.mark.usefixtures("one_thread")
def test_fltrust_runs_with_no_attack_and_with_model_poisoning(tmp_path):
    for name, extra in {"clean": ["attack.type=none"],
                        "lie": ["attack.type=none", "model_poisoning.type=lie"]}.items():
        summary = run(tiny("rounds=2", *extra), tmp_path / name, progress=False)
        assert summary["rounds"] == 2
