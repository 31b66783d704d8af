"""``rfa(nu, iterations, ftol, start)`` -- robust federated aggregation by the geometric median
(Pillutla, Kakade, Harchaoui, IEEE TSP 2022), computed with the smoothed Weiszfeld algorithm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sim.lazy import torch
from sim.server.aggregate import distances_to_point, row_mean, weighted_row_sum
from sim.server.base import AggregationContext, Aggregator
from sim.settings import setting

if TYPE_CHECKING:
    from torch import Tensor

STARTS = ("mean", "zero")


@dataclass
class RFASettings:
    nu: float = setting(1e-5, "float", low=0, low_open=True,
                        help="smoothing: distances below nu count as nu in the Weiszfeld weights")
    iterations: int = setting(4, "int", low=1, high=1000, help="largest number of Weiszfeld steps")
    ftol: float = setting(1e-6, "float", low=0,
                          help="stop once the objective improves by less than ftol times itself (0: run every step)")
    start: str = setting("mean", "str", choices=STARTS,
                         help="the first estimate: the mean of the rows (the authors' code) or zero (ByzFL, FLPoison)")


class RFA(Aggregator):
    """Approximate geometric median ``argmin_z sum_i alpha_i ||z - x_i||`` with ``alpha_i = 1/n``.

    Smoothed Weiszfeld (Pillutla et al., Algorithm 2), as the authors' code runs it::

        z_0 = mean_i x_i                      (start: zero -> z_0 = 0)
        repeat up to `iterations` times:
            beta_i  = alpha_i / max(nu, ||z_t - x_i||)
            z_{t+1} = sum_i beta_i x_i / sum_i beta_i
            stop if |F(z_t) - F(z_{t+1})| < ftol * F(z_{t+1}),   F(z) = sum_i alpha_i ||z - x_i||

    Every row is kept (each with a weight; none is dropped). Each step costs one pass for the
    distances and one matrix-vector product; the distances of ``z_{t+1}`` serve both the stopping
    test and the next step's weights."""

    settings = RFASettings

    def __init__(self, nu: float = 1e-5, iterations: int = 4, ftol: float = 1e-6, start: str = "mean"):
        if isinstance(nu, bool) or not isinstance(nu, (int, float)) or not 0 < nu < float("inf"):
            raise ValueError(f"nu must be a finite number > 0, got {nu!r}")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
        if isinstance(ftol, bool) or not isinstance(ftol, (int, float)) or not 0 <= ftol < float("inf"):
            raise ValueError(f"ftol must be a finite number >= 0, got {ftol!r}")
        if start not in STARTS:
            raise ValueError(f"start must be one of {', '.join(STARTS)}, got {start!r}")
        self.nu, self.iterations, self.ftol, self.start = float(nu), iterations, float(ftol), start
        self.steps_run = 0  # Weiszfeld steps of the last call (for tests and benchmarks)

    def _aggregate(self, updates: Tensor, context: AggregationContext) -> tuple[Tensor, list[int]]:
        n = updates.shape[0]
        median = row_mean(updates) if self.start == "mean" else updates.new_zeros(updates.shape[1])
        distances = distances_to_point(updates, median)
        objective = float(distances.sum()) / n
        self.steps_run = 0
        for _ in range(self.iterations):
            weights = 1.0 / distances.clamp(min=self.nu)  # alpha_i = 1/n cancels in the normalisation
            median = weighted_row_sum(weights / weights.sum(), updates)
            self.steps_run += 1
            if self.ftol == 0 and self.steps_run == self.iterations:
                break  # no stopping test and no further step: the last distances are not needed
            distances = distances_to_point(updates, median)
            previous, objective = objective, float(distances.sum()) / n
            if abs(previous - objective) < self.ftol * objective:
                break
        return median, list(range(n))
