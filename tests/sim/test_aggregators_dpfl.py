"""Robust-DPFL's aggregation rule, worked by hand."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from sim.server.aggregate import two_means_low_cluster
from sim.server.registry import AGGREGATORS, build_aggregator
from sim.server.robust_dpfl import RobustDPFL
from sim.config import load_config


def test_robust_dpfl_keeps_the_low_score_cluster_and_averages_it():
    # Scores |mean of coordinates|: 0.01, 0.02, 0.5, 0.6.
    # Splits of the sorted scores (within-cluster sums of squares):
    #   {0.01} | {0.02, 0.5, 0.6}:  0 + 0.1923
    #   {0.01, 0.02} | {0.5, 0.6}:  0.00005 + 0.005 = 0.00505   <- best
    #   {0.01, 0.02, 0.5} | {0.6}:  0.1568 + 0
    # Kept: rows 0 and 1; their mean ((0.02 - 0.04) / 2, 0) = (-0.01, 0).
    updates = torch.tensor([[0.02, 0.0], [-0.04, 0.0], [1.0, 0.0], [1.2, 0.0]])
    assert torch.allclose(RobustDPFL.scores(updates), torch.tensor([0.01, 0.02, 0.5, 0.6], dtype=torch.float64))
    result = RobustDPFL()(updates)
    assert result.kept == [0, 1]
    assert torch.allclose(result.update, torch.tensor([-0.01, 0.0]))


def test_robust_dpfl_scores_the_absolute_mean_so_negative_bias_is_caught_too():
    # Row 2's coordinates average -1 (score 1); the others average about 0.
    updates = torch.tensor([[1.0, -1.0], [0.5, -0.4], [-1.0, -1.0], [-0.2, 0.2]])
    assert RobustDPFL()(updates).kept == [0, 1, 3]


def test_two_means_on_equal_scores_keeps_everything():
    assert two_means_low_cluster(torch.tensor([0.3, 0.3, 0.3])) == [0, 1, 2]
    assert two_means_low_cluster(torch.tensor([0.7])) == [0]
    # Two rows: each is its own cluster, the lower one is kept.
    assert two_means_low_cluster(torch.tensor([0.9, 0.1])) == [1]


def test_robust_dpfl_sets_non_finite_rows_aside_first():
    updates = torch.tensor([[0.0, 0.0], [float("nan"), 0.0], [0.1, -0.1], [3.0, 3.0]])
    result = RobustDPFL()(updates)
    assert result.rejected_nonfinite == [1] and result.kept == [0, 2]


def test_robust_dpfl_is_built_from_the_config():
    assert "robust_dpfl" in AGGREGATORS
    assert isinstance(build_aggregator(SimpleNamespace(aggregator="robust_dpfl"), 10, 100, 25), RobustDPFL)
    assert load_config(overrides=["server.aggregator=robust_dpfl"]).server.aggregator == "robust_dpfl"
