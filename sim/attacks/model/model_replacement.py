"""Model replacement, constrain-and-scale (Bagdasaryan et al., AISTATS 2020, "How to backdoor
federated learning"; docs/algorithms.md §3.11).

A malicious client trains its backdoored model X from the global model G (its own update
u = X - G, from `attack.type`) and uploads `gamma * u`: with the server averaging the n uploads
of a round (learning rate eta = 1), G + (1/n) sum = X once the benign updates roughly cancel and
the m malicious clients of the round share the replacement, gamma = n / m. `scale` sets gamma
(null: n / m of the round). `norm_bound` (null: none) then projects each upload onto the L2 ball
of that radius, `gamma*u * min(1, norm_bound / ||gamma*u||)`, the projection that keeps it inside
a norm-clipping server's bound; it is applied to the upload, once a round (the paper's
constrain step projects during local training as well)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sim.attacks.model.base import AttackContext, ModelPoisoningAttack
from sim.lazy import torch
from sim.settings import setting

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class ModelReplacementSettings:
    scale: float | None = setting(None, "float", low=0, low_open=True, nullable=True,
                                  help="gamma, the upload's multiple of the own update; null: n / m of the round")
    norm_bound: float | None = setting(None, "float", low=0, low_open=True, nullable=True,
                                       help="L2 radius the scaled upload is projected onto; null: no bound")


class ModelReplacement(ModelPoisoningAttack):
    name = "model_replacement"
    settings = ModelReplacementSettings
    uploads_own_update = True

    def __init__(self, scale: float | None = None, norm_bound: float | None = None):
        self.scale = None if scale is None else float(scale)
        self.norm_bound = None if norm_bound is None else float(norm_bound)

    def gamma(self, n: int, m: int) -> float:
        return n / m if self.scale is None else self.scale

    def craft(self, updates: Tensor, malicious: Tensor, context: AttackContext) -> Tensor:
        count = int(malicious.sum())
        scaled = updates[malicious] * self.gamma(updates.shape[0], max(count, 1))
        if self.norm_bound is None:
            return scaled
        norms = scaled.norm(dim=1, keepdim=True)
        factor = torch.where(norms > self.norm_bound, self.norm_bound / norms.clamp(min=1e-30), torch.ones_like(norms))
        return scaled * factor
