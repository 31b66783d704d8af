"""IPM, inner-product manipulation (Xie, Koyejo, Gupta, UAI 2019, "Fall of Empires";
docs/algorithms.md §3.10): every malicious row is the negative of `epsilon` times the mean of the
benign rows,

    u_mal = -epsilon * (1 / |B|) * sum_{i in B} u_i,

so its inner product with the benign mean is negative; a small `epsilon` keeps it close to the
benign rows (inside a robust rule's acceptance region), a large one outweighs them in a mean.
The benign rows are those of the selected clients that are not malicious, as uploaded (after any
client-level DP); a round without a benign row leaves the malicious rows as they are.
ByzFL ships it as `InnerProductManipulation(tau)`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sim.attacks.model.base import AttackContext, ModelPoisoningAttack
from sim.settings import setting

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class IPMSettings:
    epsilon: float = setting(0.5, "float", low=0, low_open=True,
                             help="the malicious row is -epsilon times the mean of the benign rows")


class IPM(ModelPoisoningAttack):
    name = "ipm"
    settings = IPMSettings

    def __init__(self, epsilon: float = 0.5):
        self.epsilon = float(epsilon)

    def craft(self, updates: Tensor, malicious: Tensor, context: AttackContext) -> Tensor:
        count = int(malicious.sum())
        benign = updates[~malicious]
        if benign.shape[0] == 0:
            return updates[malicious]
        return (-self.epsilon * benign.mean(dim=0)).expand(count, -1).clone()
