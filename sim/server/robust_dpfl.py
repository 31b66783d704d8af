"""``robust_dpfl`` -- Qi et al. 2024 (Robust-DPFL): each row's detection score is the absolute
mean of its coordinates; the scores are split into two clusters by exact 1-D 2-means and the
rows of the lower-score cluster are averaged."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sim.lazy import torch
from sim.server.aggregate import column_chunks, row_mean, two_means_low_cluster
from sim.server.base import AggregationContext, Aggregator

if TYPE_CHECKING:
    from torch import Tensor


class RobustDPFL(Aggregator):
    """Robust-DPFL (Qi, Wang, Huang, AAAI 2024): keep the rows whose |mean of coordinates| falls
    in the lower of two 2-means clusters, and average them.

    Honest DP uploads are dominated by zero-mean noise, whose coordinate mean is about
    sigma / sqrt(d); a poisoned update rescaled to the noisy norm keeps its own, larger, mean.
    (The authors' code scores the uploaded model vectors; here, as for every rule, the rows are
    updates. It clusters with scikit-learn's KMeans; the exact 1-D split is what KMeans aims for.)
    """

    @staticmethod
    def scores(updates: Tensor) -> Tensor:
        n, d = updates.shape
        sums = updates.new_zeros(n, dtype=torch.float64)
        starts, step = column_chunks(n, d)
        for start in starts:  # chunks: no [n, d] float64 copy of the updates
            sums += updates[:, start : start + step].to(torch.float64).sum(dim=1)
        return (sums / d).abs()

    def _aggregate(self, updates: Tensor, context: AggregationContext) -> tuple[Tensor, list[int]]:
        kept = two_means_low_cluster(self.scores(updates))
        return row_mean(updates[kept]), kept
