"""What a model-poisoning attack is to the rest of the simulator: the context it reads each round,
what the run gives it to be built, and the base class (docs/architecture.md, "How to add an
attack"). The attacks live one per file beside this one or in `sim.attacks.model_poisoning`, whose
`MODEL_POISONING` registers them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from sim import rng
from sim.lazy import torch
from sim.state import Component

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class AttackContext:
    round: int
    global_params: Tensor  # [d], the model the round started from
    last_global_update: Tensor | None  # [d], what the previous round added to the model; None in round 0
    generator: torch.Generator  # CPU, seeded from (seed, round)
    clients: Sequence[int] = ()  # the selected client ids, one per row
    seed: int = 0
    privacy: Any = None  # sim.defenses.privacy.GaussianPrivacy or None


def attack_generator(seed: int, round: int) -> torch.Generator:
    return rng.torch_stream(seed, round, rng.MODEL_POISONING)


def _mean_and_std(rows: Tensor) -> tuple[Tensor, Tensor]:
    mean = rows.mean(dim=0)
    if rows.shape[0] < 2:
        return mean, torch.zeros_like(mean)  # one row has no spread
    return mean, rows.std(dim=0, correction=1)


def _check_mask(updates: Tensor, malicious: Tensor) -> Tensor:
    if updates.dim() != 2:
        raise ValueError(f"updates must be [clients, parameters], got shape {tuple(updates.shape)}")
    malicious = torch.as_tensor(malicious, dtype=torch.bool, device=updates.device)
    if malicious.shape != (updates.shape[0],):
        raise ValueError(f"malicious must hold one flag per row ({updates.shape[0]}), got shape {tuple(malicious.shape)}")
    return malicious


@dataclass
class AttackSetup:
    """What the run gives an attack to be built from besides its own settings."""

    num_parameters: int  # d
    seed: int
    krum_f: int  # the Byzantine count the server's Krum assumes (sim.server.krum.byzantine_f)


class ModelPoisoningAttack(Component):
    """Base: `craft` returns the malicious rows; `__call__` puts them in place of the originals.

    `settings` is the dataclass of the attack's parameters (`sim.settings`; None: it has none);
    `from_config` builds the attack from it. `requires_privacy`: the attack reads the DP
    mechanism (`privacy.type` must not be none); `uploads_own_update`: it sends the malicious
    client's own trained update, so `attack.type` must train one."""

    name = "base"
    settings: type | None = None
    requires_privacy = False
    uploads_own_update = False

    @classmethod
    def from_config(cls, settings, setup: AttackSetup) -> "ModelPoisoningAttack":
        return cls() if settings is None else cls(**dataclasses.asdict(settings))

    def __call__(self, updates: Tensor, malicious: Tensor, context: AttackContext) -> Tensor:
        malicious = _check_mask(updates, malicious)
        crafted = self.craft(updates, malicious, context)
        count = int(malicious.sum())
        if count == 0:
            return updates
        if crafted.shape != (count, updates.shape[1]):
            raise RuntimeError(f"{self.name} crafted {tuple(crafted.shape)} rows for {count} malicious rows")
        result = updates.clone()
        result[malicious] = crafted.to(dtype=updates.dtype, device=updates.device)
        return result

    def craft(self, updates: Tensor, malicious: Tensor, context: AttackContext) -> Tensor:
        raise NotImplementedError
