"""``norm_clipping(clip, noise_std)`` -- Sun, Kairouz, Suresh, McMahan 2019, "Can you really
backdoor federated learning?": every update is scaled to L2 norm at most ``clip`` (norm
thresholding), the scaled updates are averaged, and with ``noise_std > 0`` Gaussian noise of that
standard deviation is added to every coordinate of the result (their "weak differential
privacy")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sim.lazy import torch
from sim.server.aggregate import weighted_row_sum
from sim.server.base import AggregationContext, Aggregator
from sim.settings import setting

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class NormClippingSettings:
    clip: float = setting(3.0, "float", low=0, low_open=True,
                          help="M: the L2 bound every update is scaled down to")
    noise_std: float = setting(0.0, "float", low=0,
                               help="weak DP: std of the Gaussian noise added to every coordinate of the mean (0: none)")


class NormClipping(Aggregator):
    """Mean of the updates clipped to L2 norm ``clip``, plus ``N(0, noise_std^2)`` per coordinate.

        u = (1/n) sum_i x_i / max(1, ||x_i||_2 / clip)  +  noise_std * N(0, I_d)

    Every row is kept. The noise comes from the round's aggregation stream (the context's
    generator, on the CPU), so a run draws the same noise on every device and engine."""

    settings = NormClippingSettings
    needs = frozenset({"generator"})

    def __init__(self, clip: float = 3.0, noise_std: float = 0.0):
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not 0 < clip < float("inf"):
            raise ValueError(f"clip must be a finite number > 0, got {clip!r}")
        if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or not 0 <= noise_std < float("inf"):
            raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
        self.clip, self.noise_std = float(clip), float(noise_std)

    def scales(self, updates: Tensor) -> Tensor:
        """Per row, min(1, clip / ||x_i||) in float64 (1 for a zero row)."""
        norms = torch.linalg.vector_norm(updates, dim=1)
        if not bool(torch.isfinite(norms).all()):  # float32 overflow of a huge finite row
            norms = torch.linalg.vector_norm(updates.to(torch.float64), dim=1)
        return (self.clip / norms.to(torch.float64)).clamp(max=1.0)

    def _aggregate(self, updates: Tensor, context: AggregationContext) -> tuple[Tensor, list[int]]:
        n, d = updates.shape
        # The mean of the scaled rows as one matrix-vector product: no scaled [n, d] copy.
        update = weighted_row_sum(self.scales(updates) / n, updates)
        if self.noise_std > 0:
            if context.generator is None:
                raise ValueError("norm_clipping with noise_std > 0 needs the round's generator in its context")
            noise = torch.randn(d, generator=context.generator, dtype=torch.float32)
            update = update + (noise * self.noise_std).to(device=updates.device, dtype=updates.dtype)
        return update, list(range(n))
