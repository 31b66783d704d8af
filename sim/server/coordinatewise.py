"""Coordinate-wise rules: ``median`` and ``trimmed_mean``.

* ``median`` -- coordinate-wise median (the mean of the two middle values when ``n`` is even).
* ``trimmed_mean(beta)`` -- coordinate-wise mean after dropping ``floor(beta * n)`` values from each
  end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sim.lazy import np, torch
from sim.server.aggregate import coordinate_median, per_column_chunk, row_mean
from sim.server.base import AggregationContext, Aggregator
from sim.settings import setting

if TYPE_CHECKING:
    from torch import Tensor


class Median(Aggregator):
    """Coordinate-wise median; for even ``n`` the mean of the two middle values."""

    def _aggregate(self, updates: Tensor, context: AggregationContext) -> tuple[Tensor, list[int]]:
        return per_column_chunk(updates, coordinate_median), list(range(updates.shape[0]))


@dataclass
class TrimmedMeanSettings:
    beta: float = setting(0.1, "float", low=0, high=0.5, high_open=True,
                          help="share of the values dropped from each end, per coordinate")


class TrimmedMean(Aggregator):
    """Coordinate-wise mean after dropping ``floor(beta * n)`` largest and smallest values."""

    settings = TrimmedMeanSettings

    def __init__(self, beta: float = 0.1):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 0.5:
            raise ValueError(f"beta must be a number in [0, 0.5), got {beta!r}")
        self.beta = float(beta)

    def _aggregate(self, updates: Tensor, context: AggregationContext) -> tuple[Tensor, list[int]]:
        n = updates.shape[0]
        # The small epsilon keeps e.g. 0.3 * 10 = 3.0000000000000004 and 0.29 * 100 = 28.999... exact.
        trimmed = math.floor(self.beta * n + 1e-9)
        if trimmed == 0:
            return row_mean(updates), list(range(n))

        def trimmed_mean(rows: Tensor) -> Tensor:
            if rows.device.type == "cpu" and rows.dtype in (torch.float32, torch.float64):
                # np.partition with both cut ranks leaves exactly the untrimmed values between them.
                middle = torch.from_numpy(np.partition(rows.detach().numpy(), [trimmed, n - trimmed - 1], axis=0))
            else:
                middle = rows.sort(dim=0).values
            return row_mean(middle[trimmed : n - trimmed])

        return per_column_chunk(updates, trimmed_mean), list(range(n))
