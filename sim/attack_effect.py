"""The attack effect (docs/algorithms.md §6): how far the attack moved the global model.

With `metrics.attack_effect: true` a run carries a shadow global model `W^M` next to its own
`W`. Both start from the same initial model; each round the shadow takes the same step as the
run, except that the round's selected malicious clients train as benign clients:

    train  the same selected clients from W^M_t, every one with role `benign` (same data, same
           `(seed, client, round)` streams, the client defense on every row)
    upload every row follows the protocol: client-level DP on every row, with each client's own
           noise stream (the malicious rows get the noise they would get as benign clients);
           no model poisoning
    aggregate with the same aggregation rule, a separate instance (its state is the shadow's)
    W^M_{t+1} = W^M_t + the aggregate

So the shadow is exactly the run in which the malicious clients are honest (a run with
`attack.type: none` and the same selections), and `delta_t = W_t - W^M_t` after round t is the
attack effect of FL-WBC (Sun et al., 2021), the quantity LeadFL is built to shrink. In a run in
which no malicious client is ever selected (or the attack does nothing) `delta_t` is exactly 0.

Each round records `||delta_t||`, its uniform part (per parameter tensor, the projection of
delta on the normalised all-ones vector; the norm of those projections together), the rest
(the norm of delta minus those projections), `||delta_t|| / ||delta_{t-1}||` and the shadow's
main accuracy. The shadow costs a second training of every selected client and a second
evaluation per round (`bench/attack_effect.py`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from sim.engines.client_training import BENIGN
from sim.server.base import aggregation_context
from sim.state import restore, state_of


def split_uniform(delta: Tensor, sizes: Sequence[int]) -> tuple[float, float, float]:
    """(||delta||, ||uniform part||, ||rest||) for a flat `delta` made of tensors of `sizes`.

    The uniform part of tensor i is `mean(delta_i) * 1` (delta_i projected on `1 / sqrt(n_i)`);
    the rest is `delta_i - mean(delta_i)`, orthogonal to it.
    """
    delta = delta.detach().to(torch.float64)
    uniform_sq, rest_sq = 0.0, 0.0
    for part in torch.split(delta, list(sizes)):
        mean = part.mean()
        uniform_sq += float(mean * mean) * part.numel()
        rest_sq += float(torch.sum((part - mean) ** 2))
    return float(torch.linalg.vector_norm(delta)), math.sqrt(uniform_sq), math.sqrt(rest_sq)


class ShadowRun:
    """The shadow trajectory of one run and the attack-effect fields of each round's record.

    `engine`, `uploads` and `aggregator` are the run's (the aggregator a separate instance of the
    same rule); `score(params)` evaluates a flat parameter vector and returns the main accuracy;
    `reseed(round)` resets the global generators as the round loop does at a round's start.
    """

    def __init__(self, engine, uploads, aggregator, initial_params: Tensor, sizes: Sequence[int],
                 score: Callable[[Tensor], float], reseed: Callable[[int], None],
                 counters: Callable[..., Tensor] | None = None, seed: int = 0,
                 reference: Callable[[int, Tensor], Tensor] | None = None):
        self.engine = engine
        self.uploads = uploads
        self.aggregator = aggregator
        self.sizes = list(sizes)
        self.score = score
        self.reseed = reseed
        self.params = initial_params.detach().clone()
        self.previous_norm: float | None = 0.0  # delta_{-1} = 0: both start from the same model
        # `counters(clients, roles)`: the BatchNorm counters, for a rule that asks for them
        self.counters = counters
        self.seed = int(seed)
        # `reference(round, params)`: the server's own update (FLTrust), for a rule that asks for it
        self.reference = reference
        # The shadow's own last global update, kept only for a rule that reads it.
        self.last_update: Tensor | None = None
        # The client defense's per-client state kept across rounds (momentum_reset: never) is the
        # shadow's own: the engine holds the run's, swapped out around the shadow's training.
        self.client_state: dict | None = None

    def _reference(self, round: int, params: Tensor) -> Tensor:
        # The server's training on the shadow's model, with the shadow's client-defense state.
        run_state = self._swap_client_state(self.client_state)
        try:
            return self.reference(round, params)
        finally:
            self.client_state = self._swap_client_state(run_state)

    def step(self, global_params: Tensor, clients: list[int], round: int, *, scored: bool = True) -> dict[str, Any]:
        """Advances the shadow through round `round` (after the run's own round, whose new
        global model is `global_params`) and returns the attack-effect fields of its record;
        the shadow model's accuracy only when the round is `scored` (eval.every)."""
        self.reseed(round)  # as a separate run would be at this point
        params = self.params.to(global_params.device)
        roles = [BENIGN] * len(clients)
        run_state = self._swap_client_state(self.client_state)
        updates = self.engine.train_clients(params, clients, round, roles=roles)
        self.client_state = self._swap_client_state(run_state)
        updates = self.uploads.benign(updates, clients, round)
        counters = None if self.counters is None else (lambda ids: self.counters(ids, roles))
        context = aggregation_context(self.aggregator, round=round, clients=clients, seed=self.seed, counters=counters,
                                      global_params=params, last_global_update=self.last_update,
                                      reference_update=None if self.reference is None else self._reference)
        aggregation = self.aggregator(updates, context)
        update = aggregation.update.to(device=params.device, dtype=params.dtype)
        self.params = params + update
        if "last_global_update" in self.aggregator.needs:
            self.last_update = update.detach().to("cpu", torch.float32).clone()

        norm, uniform, rest = split_uniform(global_params - self.params, self.sizes)
        ratio = norm / self.previous_norm if self.previous_norm else None
        self.previous_norm = norm
        return {
            "attack_effect": norm,
            "attack_effect_uniform": uniform,
            "attack_effect_rest": rest,
            "attack_effect_ratio": ratio,
            "shadow_main_accuracy": float(self.score(self.params)) if scored else None,
        }

    def _swap_client_state(self, state: dict | None) -> dict | None:
        """Puts `state` into the engine's per-client store and returns what it held (None where
        the engine keeps no such state)."""
        if not hasattr(self.engine, "state_dict"):
            return None
        held = self.engine.state_dict()
        if held is not None or state is not None:
            self.engine.load_state_dict(state)
        return held

    def state_dict(self) -> dict[str, Any]:
        return {
            "params": self.params.detach().cpu(),
            "previous_norm": self.previous_norm,
            "aggregator": state_of(self.aggregator),
            "client_state": self.client_state,
            **({} if self.last_update is None else {"last_update": self.last_update}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.params = state["params"].to(self.params.device)
        self.previous_norm = state["previous_norm"]
        restore(self.aggregator, state.get("aggregator"))
        self.client_state = state.get("client_state")
        self.last_update = state.get("last_update")


def summarize_attack_effect(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The attack effect of a run in a few numbers (rows with the attack-effect columns).

    `mean_decay_ratio` is the mean of `||delta_t|| / ||delta_{t-1}||` over the rounds without a
    malicious client that follow a round with a nonzero attack effect: how much of the effect
    one benign round keeps (below 1: it fades; FL-WBC and LeadFL aim to make it small).
    """
    measured = [row for row in rows if row.get("attack_effect") is not None]
    if not measured:
        return {}
    norms = [row["attack_effect"] for row in measured]
    decay = [row["attack_effect_ratio"] for row in measured
             if row["malicious_selected"] == 0 and row["attack_effect_ratio"] is not None]
    shares = [(row["attack_effect_uniform"] / row["attack_effect"]) ** 2 for row in measured if row["attack_effect"] > 0]
    last = measured[-1]
    return {
        "final_norm": last["attack_effect"],
        "max_norm": max(norms),
        "mean_norm": sum(norms) / len(norms),
        "mean_decay_ratio": sum(decay) / len(decay) if decay else None,
        "benign_rounds_with_decay_ratio": len(decay),
        "mean_uniform_share": sum(shares) / len(shares) if shares else None,
        "final_shadow_main_accuracy": last["shadow_main_accuracy"],
        "final_main_accuracy_shadow_minus_run": last["shadow_main_accuracy"] - last["main_accuracy"],
    }
