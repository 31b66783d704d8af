"""``centered_clipping(tau, iterations)`` -- Karimireddy, He, Jaggi (ICML 2021), "Learning from
history for Byzantine robust optimization": the rows are clipped to radius ``tau`` around a
center, starting from the previous round's aggregate, and the center moves by the mean of the
clipped differences."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sim.lazy import torch
from sim.server.aggregate import distances_to_point, weighted_row_sum
from sim.server.base import AggregationContext, Aggregator
from sim.settings import setting

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class CenteredClippingSettings:
    tau: float = setting(10.0, "float", low=0, low_open=True,
                         help="clipping radius around the center (L2)")
    iterations: int = setting(1, "int", low=1, high=1000, help="L: clipping steps per round")


class CenteredClipping(Aggregator):
    """Centered clipping (Karimireddy et al. 2021, their CClip), ``L = iterations`` steps::

        v_0     = the previous round's global update (zeros in round 0)
        v_{l+1} = v_l + (1/n) sum_i (x_i - v_l) * min(1, tau / ||x_i - v_l||)

    The paper's center is the server's previous aggregate (its clients send momentum); here it is
    the context's ``last_global_update``, what the previous round added to the global model,
    which is that aggregate unless the round loop rejected it as non-finite (then zeros). The
    rule keeps no state of its own, so a resumed run needs nothing from it. Every row is kept.

    A step is computed as ``v (1 - mean_i c_i) + (1/n) sum_i c_i x_i`` (``c_i`` the clip factors):
    one distance pass and one matrix-vector product, no [n, d] copy of the differences."""

    settings = CenteredClippingSettings
    needs = frozenset({"last_global_update"})

    def __init__(self, tau: float = 10.0, iterations: int = 1):
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau < float("inf"):
            raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
        self.tau, self.iterations = float(tau), iterations

    def _aggregate(self, updates: Tensor, context: AggregationContext) -> tuple[Tensor, list[int]]:
        n, d = updates.shape
        center = context.last_global_update
        if center is None:
            center = updates.new_zeros(d)
        else:
            if center.shape != (d,):
                raise ValueError(
                    f"the center (last_global_update) has shape {tuple(center.shape)} but the updates have {d} "
                    "coordinates; pass the previous global update of this model"
                )
            center = center.to(device=updates.device, dtype=updates.dtype)
            if not bool(torch.isfinite(center).all()):
                center = updates.new_zeros(d)
        for _ in range(self.iterations):
            distances = distances_to_point(updates, center)
            factors = (self.tau / distances).clamp(max=1.0)  # a row at the center: tau / 0 = inf -> 1
            center = center * (1.0 - float(factors.sum()) / n) + weighted_row_sum(factors / n, updates)
        return center, list(range(n))
