"""``fltrust(root_size)`` -- FLTrust (Cao, Fang, Liu, Gong, NDSS 2021, "FLTrust: Byzantine-robust
Federated Learning via Trust Bootstrapping", Algorithm 1).

The server holds a small root set (``root_size`` training samples drawn with the run's seed and
held out of every client's data, ``sim.data.hold_out``) and trains on it every round from the
round's global model, through the run's engine with the clients' training settings (no client
defense, no attack): its update ``g0`` is the context's ``reference_update``. For the rows ``u_i``:

```
TS_i   = ReLU(cos(u_i, g0))                           trust score (0 for a zero row)
u_i'   = u_i * ||g0|| / ||u_i||                       every row rescaled to the server's norm
update = sum_i TS_i u_i' / sum_i TS_i
```

Decided: when every trust score is 0 (or ``g0 = 0``) the update is zero and no row is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sim.lazy import torch
from sim.server.aggregate import row_dots, weighted_rows
from sim.server.base import AggregationContext, Aggregator
from sim.settings import setting

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class FLTrustSettings:
    root_size: int = setting(100, "int", low=1,
                             help="training samples of the server's root set (seeded, held out of every client; paper: 100)")


def trust_coefficients(updates: Tensor, reference: Tensor) -> Tensor:
    """Each row's coefficient ``TS_i ||g0|| / (||u_i|| sum_j TS_j)`` (float64; all 0 when no row
    is trusted)."""
    reference = reference.to(device=updates.device, dtype=torch.float64)
    dots, norms = row_dots(updates, reference)
    norms = norms.sqrt()
    reference_norm = reference.norm()
    positive = (norms > 0) & (reference_norm > 0)
    cosine = torch.where(positive, dots / torch.where(positive, norms * reference_norm, torch.ones_like(norms)),
                         torch.zeros_like(norms))
    trust = cosine.clamp(min=0)
    total = trust.sum()
    if not float(total) > 0:
        return torch.zeros_like(trust)
    return torch.where(trust > 0, trust * reference_norm / torch.where(positive, norms, torch.ones_like(norms)),
                       torch.zeros_like(trust)) / total


class FLTrust(Aggregator):
    """FLTrust's trust-weighted, norm-rescaled mean against the server's own update (docs/algorithms.md §3.14)."""

    settings = FLTrustSettings
    needs = frozenset({"reference_update"})

    def __init__(self, root_size: int = 100):
        if isinstance(root_size, bool) or not isinstance(root_size, int) or root_size < 1:
            raise ValueError(f"root_size must be an integer >= 1, got {root_size!r}")
        self.root_size = root_size

    def _aggregate(self, updates: Tensor, context: AggregationContext) -> tuple[Tensor, list[int]]:
        if context.reference_update is None:
            raise ValueError("fltrust needs the server's reference update of the round")
        reference = context.reference_update.reshape(-1)
        if reference.shape[0] != updates.shape[1]:
            raise ValueError(
                f"the server's reference update has {reference.shape[0]} coordinates, the rows {updates.shape[1]}"
            )
        coefficients = trust_coefficients(updates, reference)
        kept = coefficients.nonzero().flatten().tolist()
        if not kept:
            return updates.new_zeros(updates.shape[1]), []
        return weighted_rows(coefficients[None, :], updates)[0], kept
