"""Neurotoxin (Zhang et al., ICML 2022; docs/algorithms.md §2.3): the backdoor trained only on the
coordinates the benign clients change least, so it is not overwritten by their later updates.

The benign clients' direction is read from what the previous round added to the global model,
`g` (the attackers, as clients, see the global model move). Every round the attacker drops the
`ceil(mask_share * d)` coordinates with the largest `|g_j|` (ties broken by the lower index) and
trains the backdoor (`attack.neurotoxin.blend`, as `backdoor`) with its gradient projected onto the
others, `grad <- grad * mask` at every local step. Before any global update (round 0) nothing is
masked. The mask is a function of that update, which the checkpoint keeps (`upload_state`), so a
resumed run masks exactly as the uninterrupted one."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sim.attacks.data.backdoor import Backdoor, BackdoorSettings
from sim.lazy import torch
from sim.settings import setting


@dataclass
class NeurotoxinSettings(BackdoorSettings):
    mask_share: float = setting(0.1, "float", low=0, high=1, low_open=True, high_open=True,
                                help="share of coordinates, largest |last global update| first, the attack leaves alone")


def neurotoxin_mask(update: torch.Tensor, share: float) -> torch.Tensor:
    """1.0 on the coordinates kept, 0.0 on the `ceil(share * d)` with the largest `|update|`."""
    d = update.numel()
    dropped = min(d, math.ceil(share * d))
    order = torch.argsort(update.abs().reshape(-1), descending=True, stable=True)
    mask = torch.ones(d, dtype=update.dtype, device=update.device)
    mask[order[:dropped]] = 0.0
    return mask


class Neurotoxin(Backdoor):
    name = "neurotoxin"
    settings = NeurotoxinSettings
    description = "Neurotoxin backdoor"
    needs_last_global_update = True

    def __init__(self, settings, attack, dataset, device, malicious=()):
        super().__init__(settings, attack, dataset, device, malicious)
        self.mask = None

    def observe_global_update(self, update):
        self.mask = None if update is None else neurotoxin_mask(update.to(self.device), float(self.options.mask_share))

    def gradients(self, gradients, params, x, y, rows, step):
        grads = super().gradients(gradients, params, x, y, rows, step)
        if self.mask is None:
            return grads
        masked, start = [], 0
        for grad in grads:
            size = grad[0].numel()
            part = self.mask[start:start + size].to(grad.dtype).reshape(1, *grad.shape[1:])
            masked.append(grad * part)
            start += size
        return masked
