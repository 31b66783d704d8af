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

With `metrics.shadow_kept: run` the shadow does not run the rule on its own rows: its update is
the mean of its rows at the positions the run's aggregator kept (`SHADOW_KEPT_RULES`, the rules
whose aggregate is the unweighted mean of the rows they keep), so the shadow is the run with the
same rows kept, honest.

Each round records `||delta_t||`, its uniform part (per parameter tensor, the projection of
delta on the normalised all-ones vector; the norm of those projections together), the rest
(the norm of delta minus those projections), `||delta_t|| / ||delta_{t-1}||`, the shadow's
main accuracy and backdoor margin, and with a backdoor target `attack_effect_backdoor`: the
component of delta along the gradient of the backdoor task's loss at the shadow model
(`backdoor_gradient`; negative: the attack moved the model downhill on the backdoor loss). The
shadow costs a second training of every selected client and a second
evaluation per round (`bench/attack_effect.py`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from sim.engines.client_training import BENIGN
from sim.lazy import F, nn, torch
from sim.models import load_flat_parameters_, trainable_parameters
from sim.server.aggregate import row_mean, split_finite
from sim.server.base import aggregation_context
from sim.state import restore, state_of

if TYPE_CHECKING:
    from torch import Tensor


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


# The rules whose aggregate is the unweighted mean of the rows they keep (`Aggregation.kept`), the
# ones `metrics.shadow_kept: run` accepts: FedAvg (the round loop passes no weights), Krum (one
# row kept), Multi-Krum, and the LeadFL code's `multiKrum` and `bulyan` (sim.server.fltk).
SHADOW_KEPT_RULES = ("fedavg", "krum", "multikrum", "fltk_multikrum", "fltk_bulyan")
SHADOW_KEPT = ("own", "run")


def backdoor_gradient(model: nn.Module, images: Tensor, target_label: int) -> Callable[[Tensor], Tensor]:
    """`gradient(params)`: the flat gradient, at the flat parameters `params` of `model`'s shape,
    of the mean cross-entropy of `images` (the triggered images) towards `target_label`. `model`
    is the function's own copy (its parameters are overwritten)."""
    params = [param for _, param in trainable_parameters(model)]
    targets = torch.full((images.shape[0],), int(target_label), dtype=torch.long, device=images.device)

    def gradient(flat: Tensor) -> Tensor:
        load_flat_parameters_(model, flat.to(params[0].device, params[0].dtype))
        with torch.enable_grad():
            loss = F.cross_entropy(model(images), targets)
            grads = torch.autograd.grad(loss, params)
        return torch.cat([grad.reshape(-1) for grad in grads])

    return gradient


def along(delta: Tensor, direction: Tensor) -> float | None:
    """`(delta . direction) / ||direction||` in float64 (None for a zero direction)."""
    direction = direction.detach().to(torch.float64)
    norm = float(torch.linalg.vector_norm(direction))
    if norm == 0.0 or not math.isfinite(norm):
        return None
    return float(delta.detach().to(device=direction.device, dtype=torch.float64) @ direction) / norm


def kept_mean(updates: Tensor, kept: Sequence[int]) -> Tensor:
    """The unweighted mean of the rows `kept` of `updates`, added in that order
    (`metrics.shadow_kept: run` passes the run's `Aggregation.order`, so that equal rows give the
    rule's own bits); rows holding NaN or Inf are set aside as every rule sets them aside; zeros
    when none is left."""
    rows = updates[list(kept)] if len(kept) else updates[:0]
    finite, _, _ = split_finite(rows)
    if finite.shape[0] == 0:
        return updates.new_zeros(updates.shape[1])
    return row_mean(finite)


class ShadowRun:
    """The shadow trajectory of one run and the attack-effect fields of each round's record.

    `engine`, `uploads` and `aggregator` are the run's (the aggregator a separate instance of the
    same rule); `score(params)` scores a flat parameter vector (a mapping with `main_accuracy` and
    `backdoor_margin`, as `sim.metrics.Scorer` gives); `reseed(round)` resets the global
    generators as the round loop does at a round's start. `gradient(params)` (None without a
    backdoor target) is the backdoor task's gradient (`backdoor_gradient`); with `kept="run"` the
    shadow's aggregate is `kept_mean` of its rows at the run's kept positions.
    """

    def __init__(self, engine, uploads, aggregator, initial_params: Tensor, sizes: Sequence[int],
                 score: Callable[[Tensor], float], reseed: Callable[[int], None],
                 counters: Callable[..., Tensor] | None = None, seed: int = 0,
                 reference: Callable[[int, Tensor], Tensor] | None = None,
                 gradient: Callable[[Tensor], Tensor] | None = None, kept: str = "own"):
        if kept not in SHADOW_KEPT:
            raise ValueError(f"kept={kept!r} is not one of {', '.join(SHADOW_KEPT)}")
        self.kept = kept
        self.gradient = gradient
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

    def step(self, global_params: Tensor, clients: list[int], round: int, *, scored: bool = True,
             run_kept: Sequence[int] | None = None) -> dict[str, Any]:
        """Advances the shadow through round `round` (after the run's own round, whose new
        global model is `global_params`, whose aggregator kept the rows `run_kept`) and returns
        the attack-effect fields of its record; the shadow model's scores only when the round is
        `scored` (eval.every)."""
        self.reseed(round)  # as a separate run would be at this point
        params = self.params.to(global_params.device)
        roles = [BENIGN] * len(clients)
        run_state = self._swap_client_state(self.client_state)
        updates = self.engine.train_clients(params, clients, round, roles=roles)
        self.client_state = self._swap_client_state(run_state)
        updates = self.uploads.benign(updates, clients, round)
        if self.kept == "run":
            if run_kept is None:
                raise ValueError("kept='run' needs the run's kept rows (run_kept)")
            update = kept_mean(updates, run_kept).to(device=params.device, dtype=params.dtype)
        else:
            counters = None if self.counters is None else (lambda ids: self.counters(ids, roles))
            context = aggregation_context(self.aggregator, round=round, clients=clients, seed=self.seed,
                                          counters=counters, global_params=params, last_global_update=self.last_update,
                                          reference_update=None if self.reference is None else self._reference)
            aggregation = self.aggregator(updates, context)
            update = aggregation.update.to(device=params.device, dtype=params.dtype)
        self.params = params + update
        if "last_global_update" in self.aggregator.needs:
            self.last_update = update.detach().to("cpu", torch.float32).clone()

        delta = global_params - self.params
        norm, uniform, rest = split_uniform(delta, self.sizes)
        ratio = norm / self.previous_norm if self.previous_norm else None
        self.previous_norm = norm
        backdoor = None if self.gradient is None else along(delta, self.gradient(self.params))
        scores = self.score(self.params) if scored else {}
        return {
            "attack_effect": norm,
            "attack_effect_uniform": uniform,
            "attack_effect_rest": rest,
            "attack_effect_ratio": ratio,
            "shadow_main_accuracy": _float_or_none(scores.get("main_accuracy")),
            "shadow_backdoor_margin": _float_or_none(scores.get("backdoor_margin")),
            "attack_effect_backdoor": backdoor,
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


def _float_or_none(value) -> float | None:
    return None if value is None else float(value)


def summarize_attack_effect(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The attack effect of a run in a few numbers (rows with the attack-effect columns).

    `mean_decay_ratio` is the mean of `||delta_t|| / ||delta_{t-1}||` over the rounds without a
    malicious client that follow a round with a nonzero attack effect: how much of the effect
    one benign round keeps (below 1: it fades; FL-WBC and LeadFL aim to make it small).
    Where the rows hold them (a backdoor target), the final and mean `backdoor_margin` (the run's
    model), `shadow_backdoor_margin` and `attack_effect_backdoor`, over the rows with a value.
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
        **_final_and_mean(measured, "backdoor_margin"),
        **_final_and_mean(measured, "shadow_backdoor_margin"),
        **_final_and_mean(measured, "attack_effect_backdoor"),
    }


def _final_and_mean(rows: list[dict[str, Any]], column: str) -> dict[str, float]:
    """{"final_<column>", "mean_<column>"} over the rows where `column` has a value; {} if none has."""
    values = [row[column] for row in rows if row.get(column) is not None]
    if not values:
        return {}
    return {f"final_{column}": values[-1], f"mean_{column}": sum(values) / len(values)}
