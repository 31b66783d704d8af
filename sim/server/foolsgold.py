"""``foolsgold(confidence)`` -- FoolsGold (Fung, Yoon, Beschastnikh, RAID 2020, "The Limitations of
Federated Learning in Sybil Settings", Algorithm 1).

Each client's history ``H_c`` is the sum of every update it has uploaded (this round's included);
it is the rule's state, saved in the run's checkpoint. For the round's ``n`` rows, with ``H_i`` the
history of row ``i``'s client:

```
cs_ij  = cos(H_i, H_j) for i != j, cs_ii = 0        (a zero history has cosine 0 with every other)
v_i    = max_j cs_ij
pardon: cs_ij <- cs_ij * v_i / v_j   wherever v_i < v_j
a_i    = clip(1 - max_j cs_ij, 0, 1);  a <- a / max(a);  a_i = 1 -> 0.99
a_i    = clip(kappa * (ln(a_i / (1 - a_i)) + 0.5), 0, 1)     (kappa = confidence; ln 0 = -inf -> 0)
update = sum_i a_i u_i / sum_i a_i
```

Decided: when every ``a_i`` is 0 (``max(a) = 0``: every history has a perfectly aligned twin, or
after the logit) the update is zero and no row is kept. The weighted sum is divided by the
weights' sum (as BackFed does), so the update is a weighted mean of the rows like the other rules';
the authors' code and FLPoison add ``sum_i a_i u_i`` to the model directly. The optional
feature-importance weighting of the paper is not implemented. Rows set aside as non-finite add
nothing to their client's history. Called without client ids (``context.clients`` empty), each
row is its own client, numbered by position.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sim.lazy import torch
from sim.server.aggregate import gram_matrix, weighted_rows
from sim.server.base import AggregationContext, Aggregator
from sim.settings import setting

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class FoolsGoldSettings:
    confidence: float = setting(1.0, "float", low=0, low_open=True,
                                help="kappa, the logit's confidence (the paper's default 1)")


def cosine_similarities(rows: Tensor) -> Tensor:
    """``cos(r_i, r_j)`` in float64 ``[n, n]``; a zero row has cosine 0 with every row."""
    gram = gram_matrix(rows)
    norms = gram.diagonal().sqrt()
    scale = torch.where(norms > 0, 1 / norms, torch.zeros_like(norms))
    return ((gram + gram.T) / 2 * scale[:, None] * scale[None, :]).clamp(-1, 1)


def foolsgold_weights(histories: Tensor, confidence: float = 1.0) -> Tensor:
    """The FoolsGold weight ``a_i`` of each row (float64, in [0, 1], not normalised)."""
    n = histories.shape[0]
    cs = cosine_similarities(histories)
    cs.fill_diagonal_(0)
    top = cs.max(dim=1).values
    pardon = top[:, None] < top[None, :]
    cs = torch.where(pardon, cs * top[:, None] / torch.where(pardon, top[None, :], torch.ones_like(cs)), cs)
    weights = (1 - cs.max(dim=1).values).clamp(0, 1)
    largest = float(weights.max()) if n else 0.0
    if largest <= 0:
        return torch.zeros_like(weights)
    weights = weights / largest
    weights = torch.where(weights == 1, torch.full_like(weights, 0.99), weights)
    with torch.no_grad():
        logit = torch.where(weights > 0, torch.log(weights / (1 - weights)), torch.full_like(weights, -math.inf))
    return (confidence * (logit + 0.5)).clamp(0, 1)


class FoolsGold(Aggregator):
    """FoolsGold's similarity-weighted mean over clients' update histories (docs/algorithms.md §3.13)."""

    settings = FoolsGoldSettings

    def __init__(self, confidence: float = 1.0):
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < math.inf:
            raise ValueError(f"confidence must be a finite number > 0, got {confidence!r}")
        self.confidence = float(confidence)
        self.history: dict[int, Tensor] = {}

    def _aggregate(self, updates: Tensor, context: AggregationContext) -> tuple[Tensor, list[int]]:
        n, d = updates.shape
        # Without client ids (a direct call) each row is its own client, numbered by position.
        clients = [int(c) for c in context.clients] if len(context.clients) else list(range(n))
        if len(clients) != n:
            raise ValueError(f"foolsgold needs one client id per row: {n} rows, {len(clients)} ids")
        if len(set(clients)) != n:
            raise ValueError(f"foolsgold needs distinct client ids per round, got {clients}")
        for row, client in enumerate(clients):
            past = self.history.get(client)
            if past is not None and past.shape != (d,):
                raise ValueError(
                    f"the FoolsGold history of client {client} has {past.shape[0]} coordinates but the updates "
                    f"have {d}; load a state saved for this model or start a fresh aggregator"
                )
            current = updates[row].detach()
            self.history[client] = current.clone() if past is None else past.to(current) + current
        weights = foolsgold_weights(torch.stack([self.history[c] for c in clients]), self.confidence)
        total = float(weights.sum())
        kept = weights.nonzero().flatten().tolist()
        if total <= 0:
            return updates.new_zeros(d), []
        return weighted_rows((weights / total)[None, :], updates)[0], kept

    def state_dict(self) -> dict[str, Any]:
        clients = sorted(self.history)
        return {
            "clients": clients,
            "history": torch.stack([self.history[c].cpu() for c in clients]) if clients else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        clients, history = list(state["clients"]), state["history"]
        if clients and (history is None or history.dim() != 2 or history.shape[0] != len(clients)):
            raise ValueError("a FoolsGold state needs one history row per client id")
        self.history = {int(c): history[k].detach().clone() for k, c in enumerate(clients)}
