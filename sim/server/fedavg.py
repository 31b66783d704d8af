"""``fedavg``: the mean of the updates, optionally weighted per row."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from sim.lazy import torch
from sim.server.aggregate import row_mean, split_finite
from sim.server.base import Aggregation, AggregationContext, Aggregator

if TYPE_CHECKING:
    from torch import Tensor


class FedAvg(Aggregator):
    """Mean of the rows; ``weights`` (one per input row, e.g. client data sizes) makes it weighted."""

    def __call__(self, updates: Tensor, context: AggregationContext | None = None,
                 weights: Tensor | Sequence[float] | None = None) -> Aggregation:
        if weights is None and updates.dim() == 2 and updates.is_floating_point() and updates.shape[0] > 0:
            # One pass: a NaN or Inf in any row makes its column's mean non-finite, so a finite
            # mean means every row was finite and there is nothing to set aside.
            mean = updates.mean(dim=0)
            if bool(torch.isfinite(mean).all()):
                return Aggregation(mean, list(range(updates.shape[0])), [])
        finite_updates, finite_rows, rejected_rows = split_finite(updates)
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=finite_updates.dtype, device=finite_updates.device)
            if weights.shape != (updates.shape[0],):
                raise ValueError(
                    f"weights must hold one value per update row ({updates.shape[0]}), "
                    f"got shape {tuple(weights.shape)}"
                )
            if not torch.isfinite(weights).all() or (weights < 0).any():
                raise ValueError(f"weights must be finite and >= 0, got {weights.tolist()}")
        if not finite_rows:
            return Aggregation(updates.new_zeros(updates.shape[1]), [], rejected_rows)
        if weights is None:
            update = row_mean(finite_updates)
        else:
            kept_weights = weights[finite_rows]
            total = kept_weights.sum()
            if total <= 0:
                raise ValueError(
                    f"the weights of the finite rows {finite_rows} sum to {float(total)}; "
                    "at least one kept row needs a positive weight"
                )
            update = kept_weights @ finite_updates / total
            if not bool(torch.isfinite(update).all()):  # the weighted sum overflowed: normalise first
                update = (kept_weights / total) @ finite_updates
        return Aggregation(update, list(finite_rows), rejected_rows)
