"""From trained updates to what the server receives: client-level DP, then model poisoning.

The round loop calls this between the engine and the aggregator, so it works the same for
every engine (engines only train):

    train (engine) -> DP on the protocol-following rows -> model-poisoning attack -> aggregate

* DP (`privacy.type: gaussian`, `sim.defenses.privacy`) clips and noises the rows of the clients that
  follow the protocol: the benign ones, and the malicious ones too when no model-poisoning attack
  is configured (they then poison only through their training data, as the "naive" attack on
  DP-FL does).
* The attack (`model_poisoning.type`, `sim.attacks.model_poisoning`) sees all rows -- benign ones as
  uploaded, malicious ones as their clients trained them, un-noised -- and replaces the rows of the
  selected malicious clients.
* After aggregation `observe` records the global update, which PoisonedFL reads next round.
* `benign` is the same stage for a round in which every client follows the protocol (the
  attack-effect shadow, `sim.attack_effect`): DP on every row with each client's own noise
  stream, no attack, no state read or written.

With `privacy.type: none` and `model_poisoning.type: none` nothing is touched and no state is
kept, so such runs are what they were before this stage existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Sequence

from sim.attacks.model_poisoning import AttackContext, attack_generator, build_model_poisoning
from sim.defenses.privacy import build_privacy, noise_generator
from sim.lazy import torch
from sim.server.krum import byzantine_f

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["UploadPipeline"]


class UploadPipeline:
    """DP and model poisoning for one run; `cfg` is the run's Config."""

    def __init__(self, cfg, malicious: Sequence[int], num_parameters: int):
        self.seed = int(cfg.seed)
        self.malicious = frozenset(int(client) for client in malicious)
        self.privacy = build_privacy(cfg.privacy)
        self.attack = build_model_poisoning(
            cfg.model_poisoning, num_parameters=num_parameters, seed=self.seed, krum_f=byzantine_f(cfg.server, cfg.clients.clients_per_round, cfg.clients.num_clients, cfg.clients.num_malicious)
        )
        self.last_global_update: Tensor | None = None
        # Set by the round loop when the aggregator reads the last global update too.
        self.keep_global_update = False

    @property
    def active(self) -> bool:
        return self.privacy is not None or self.attack is not None

    def __call__(self, updates: Tensor, clients: Sequence[int], round: int, global_params: Tensor) -> Tensor:
        """The uploads of `clients` (one row each, in order) in round `round`."""
        if not self.active:
            return updates
        malicious = torch.tensor([client in self.malicious for client in clients], dtype=torch.bool)
        if self.privacy is not None:
            follows_protocol = ~malicious if self.attack is not None else torch.ones_like(malicious)
            rows = follows_protocol.nonzero().flatten().tolist()
            if rows:
                generators = [noise_generator(self.seed, clients[row], round) for row in rows]
                updates = updates.clone()
                updates[rows] = self.privacy.privatize(updates[rows], generators)
        if self.attack is not None:
            context = AttackContext(
                round=int(round),
                global_params=global_params,
                last_global_update=self.last_global_update,
                generator=attack_generator(self.seed, int(round)),
                clients=list(clients),
                seed=self.seed,
                privacy=self.privacy,
            )
            updates = self.attack(updates, malicious.to(updates.device), context)
        return updates

    def benign(self, updates: Tensor, clients: Sequence[int], round: int) -> Tensor:
        """The uploads of `clients` had every one of them followed the protocol: DP (when on)
        on every row, each with its client's noise stream of round `round`; no attack."""
        if self.privacy is None or not len(clients):
            return updates
        generators = [noise_generator(self.seed, client, round) for client in clients]
        return self.privacy.privatize(updates, generators)

    def observe(self, global_update: Tensor) -> None:
        """Record what this round added to the global model (for the next round's attack)."""
        if self.attack is not None or self.keep_global_update:
            self.last_global_update = global_update.detach().to("cpu", torch.float32).clone()

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_global_update": self.last_global_update,
            "attack": None if self.attack is None else self.attack.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.last_global_update = state.get("last_global_update")
        if self.attack is not None and state.get("attack") is not None:
            self.attack.load_state_dict(state["attack"])
