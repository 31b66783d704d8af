"""FLAME: worked by hand, against a transcription of the paper's Algorithm 1, and its settings."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.cluster import HDBSCAN

from sim import rng as streams
from sim.config import load_config
from sim.errors import ConfigError
from sim.server.base import AggregationContext, aggregation_context
from sim.server.flame import Flame
from sim.server.registry import build_aggregator


def context(global_params=None, seed=0, round=0, rule=None):
    generator = streams.torch_stream(seed, round, streams.AGGREGATION)
    return AggregationContext(round=round, generator=generator, global_params=global_params)


def test_flame_drops_the_outlying_direction_clips_to_the_median_norm_and_averages():
    # Updates (cluster_on: update, no noise):
    #   row 0 (1, 0)      norm 1    direction (1, 0)
    #   row 1 (1.6, 1.2)  norm 2    direction (0.8, 0.6)
    #   row 2 (4, 0)      norm 4    direction (1, 0)
    #   row 3 (2.4, 1.8)  norm 3    direction (0.8, 0.6)
    #   row 4 (-10, 0)    norm 10   direction (-1, 0)
    # Cosine distances: 0 within {0, 2} and {1, 3}, 0.2 between them, 1.8 or 2 to row 4: HDBSCAN
    # with min_cluster_size 5 // 2 + 1 = 3 admits rows 0-3.
    # Median norm S = 3 (of 1, 2, 4, 3, 10); scales min(1, 3/e) = 1, 1, 3/4, 1.
    # Clipped: (1, 0), (1.6, 1.2), (3, 0), (2.4, 1.8) -> sum (8, 3) -> mean (2, 0.75).
    updates = torch.tensor([[1.0, 0.0], [1.6, 1.2], [4.0, 0.0], [2.4, 1.8], [-10.0, 0.0]], dtype=torch.float64)
    result = Flame(noise=0.0, cluster_on="update")(updates, context())
    assert result.kept == [0, 1, 2, 3]
    assert torch.allclose(result.update, torch.tensor([2.0, 0.75], dtype=torch.float64), rtol=1e-12)


def test_flame_noise_is_lambda_times_the_median_norm_from_the_round_stream():
    updates = torch.randn(7, 50, generator=torch.Generator().manual_seed(1))
    quiet = Flame(noise=0.0, cluster_on="update")(updates, context())
    noisy = Flame(noise=0.01, cluster_on="update")(updates, context(seed=3, round=5))
    bound = float(np.median(updates.double().norm(dim=1).numpy()))
    draw = torch.randn(50, generator=streams.torch_stream(3, 5, streams.AGGREGATION), dtype=torch.float64)
    assert noisy.kept == quiet.kept
    assert torch.allclose(noisy.update - quiet.update, (draw * 0.01 * bound).float(), atol=1e-6)
    # the same round and seed draw the same noise; another round another
    again = Flame(noise=0.01, cluster_on="update")(updates, context(seed=3, round=5))
    other = Flame(noise=0.01, cluster_on="update")(updates, context(seed=3, round=6))
    assert torch.equal(again.update, noisy.update) and not torch.equal(other.update, noisy.update)


def test_flame_admits_every_row_when_hdbscan_finds_no_cluster():
    # Four orthogonal directions: no three rows are closer to each other than to the rest.
    updates = torch.eye(4, dtype=torch.float64)
    result = Flame(noise=0.0, cluster_on="update")(updates, context())
    assert result.kept == [0, 1, 2, 3]


def test_flame_clusters_local_models_by_default():
    # The update directions differ a lot, but the models (global + update) are almost equal.
    rule = Flame(noise=0.0)
    assert rule.needs == {"generator", "global_params"}
    g = torch.full((3,), 100.0, dtype=torch.float64)
    updates = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [-1.0, 0, 0], [0, -1.0, 0]], dtype=torch.float64)
    assert rule(updates, context(global_params=g)).kept == [0, 1, 2, 3, 4]
    ctx = aggregation_context(rule, round=0, clients=[0, 1], seed=0, global_params=g)
    assert ctx.global_params is g and ctx.generator is not None


# ----------------------------------------------------------------------------------------------
# against a transcription of the paper's Algorithm 1, with scikit-learn computing the cosine
# distances inside HDBSCAN (metric="cosine" on the vectors; ours passes a precomputed matrix)


def oracle_flame(updates, global_params, noise_lambda, draw, on_models):
    n = len(updates)
    vectors = updates + global_params if on_models else updates
    labels = HDBSCAN(min_cluster_size=n // 2 + 1, min_samples=1, metric="cosine",
                     allow_single_cluster=True, copy=True).fit(vectors).labels_
    if (labels >= 0).any():
        values, counts = np.unique(labels[labels >= 0], return_counts=True)
        admitted = [i for i in range(n) if labels[i] == values[np.argmax(counts)]]
    else:
        admitted = list(range(n))
    e = [float(np.linalg.norm(updates[i])) for i in range(n)]
    bound = float(np.median(e))
    total = np.zeros(updates.shape[1])
    for i in admitted:
        total += updates[i] * min(1.0, bound / e[i])
    return total / len(admitted) + draw * noise_lambda * bound, admitted


def test_flame_matches_the_oracle_on_random_cases():
    rng = np.random.default_rng(0)
    filtered = 0
    for case in range(200):
        n = int(rng.integers(3, 21))
        d = int(rng.integers(2, 30))
        updates = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=(n, 1))
        attackers = rng.choice(n, size=int(rng.integers(0, (n - 1) // 2 + 1)), replace=False)
        updates[attackers] = rng.normal(size=d) * 4 + rng.normal(size=(len(attackers), d)) * 0.1
        global_params = rng.normal(size=d) * rng.choice([0.0, 1.0, 10.0])
        on_models = bool(rng.random() < 0.5)
        lam = float(rng.choice([0.0, 0.001, 0.1]))
        draw = torch.randn(d, generator=streams.torch_stream(7, case, streams.AGGREGATION), dtype=torch.float64).numpy()
        expected, admitted = oracle_flame(updates, global_params, lam, draw, on_models)
        rule = Flame(noise=lam, cluster_on="model" if on_models else "update")
        result = rule(torch.from_numpy(updates), context(torch.from_numpy(global_params), seed=7, round=case))
        assert result.kept == admitted, case
        assert np.allclose(result.update.numpy(), expected, rtol=1e-9, atol=1e-12), case
        filtered += len(admitted) < n
    assert filtered > 50  # the cases do exercise the filter


# ----------------------------------------------------------------------------------------------
# settings


def test_flame_is_built_from_the_config():
    rule = build_aggregator(SimpleNamespace(aggregator="flame", flame={"noise": 0.01, "min_cluster_size": 4}), 10, 100, 25)
    assert isinstance(rule, Flame) and rule.noise == 0.01 and rule.min_cluster_size == 4 and rule.cluster_on == "model"
    cfg = load_config(overrides=["server.aggregator=flame", "server.flame.cluster_on=update"])
    assert cfg.server.flame.cluster_on == "update"


@pytest.mark.parametrize("value", ["-0.1", "nan", "abc"])
def test_flame_refuses_a_bad_noise(value):
    with pytest.raises(ConfigError, match="server.flame.noise"):
        load_config(overrides=["server.aggregator=flame", f"server.flame.noise={value}"])


@pytest.mark.parametrize("value", ["1", "0", "2.5", "11"])
def test_flame_refuses_a_bad_min_cluster_size(value):
    # 1 and 0: below 2; 2.5: not whole; 11: more than the 10 clients per round of the defaults
    with pytest.raises(ConfigError, match="server.flame.min_cluster_size"):
        load_config(overrides=["server.aggregator=flame", f"server.flame.min_cluster_size={value}"])


def test_flame_refuses_an_unknown_cluster_on():
    with pytest.raises(ConfigError, match="server.flame.cluster_on"):
        load_config(overrides=["server.aggregator=flame", "server.flame.cluster_on=gradients"])
