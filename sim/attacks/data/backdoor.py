"""The 9-pixel backdoor (docs/algorithms.md §2): a malicious client trains on its batch and on a
fully triggered copy relabelled to `attack.target_label`, loss `a*L_backdoor + (1-a)*L_clean`
with `a` from two-task MGDA or fixed (`attack.backdoor.blend`)."""

from __future__ import annotations

from dataclasses import dataclass

from sim.attacks.data.base import DataPoisoningAttack
from sim.attacks.data_poisoning import BLEND_RULES, mgda_backdoor_weights, poison_batch, trigger_values
from sim.errors import ConfigError
from sim.lazy import torch
from sim.settings import setting


@dataclass
class BackdoorSettings:
    blend: str = setting("mgda", "str", choices=BLEND_RULES,
                         help="mgda: the two-task MGDA weight each step; fixed: blend_weight")
    blend_weight: float = setting(0.5, "float", low=0, high=1, help="the backdoor loss's weight when blend = fixed")


def check_target_label(attack, num_classes: int) -> None:
    target = attack.target_label
    if not (isinstance(target, int) and not isinstance(target, bool) and 0 <= target < num_classes):
        raise ConfigError(
            f"attack.target_label = {target!r} is not a class of the dataset (0..{num_classes - 1}); "
            "fix: --set attack.target_label=8"
        )


class Backdoor(DataPoisoningAttack):
    """Rows of their own (two forward passes a step); scored by the triggered test set."""

    name = "backdoor"
    settings = BackdoorSettings
    description = "9-pixel backdoor"
    trains_backdoor = True
    joins_task_group = False
    passes_per_step = 2

    def __init__(self, settings, attack, dataset, device, malicious=()):
        super().__init__(settings, attack, dataset, device, malicious)
        hi, lo = trigger_values(dataset, getattr(attack, "trigger_values", "data_range"))
        self.trigger_hi, self.trigger_lo = hi.to(device), lo.to(device)

    @classmethod
    def check(cls, settings, attack, num_classes: int) -> None:
        check_target_label(attack, num_classes)
        if settings.blend not in BLEND_RULES:
            raise ConfigError(f"attack.{cls.name}.blend = {settings.blend!r} is not a known blend rule; allowed: "
                              f"{', '.join(BLEND_RULES)}; fix: --set attack.{cls.name}.blend=mgda")
        if not 0 <= settings.blend_weight <= 1:
            raise ConfigError(f"attack.{cls.name}.blend_weight = {settings.blend_weight!r} must be in [0, 1] (the "
                              f"backdoor loss's weight); fix: --set attack.{cls.name}.blend_weight=0.5")

    @classmethod
    def training_cost(cls, settings) -> int:
        # MGDA differentiates both losses separately; a fixed blend takes one backward pass.
        return 6 if settings.blend == "mgda" else 3

    def poisoned(self, x, y, rows):
        """The poisoned copy of `[r, B, ...]` images `x` and labels `y` (rows `rows` of the round):
        every image triggered, every label the target."""
        poisoned_x, poisoned_y = poison_batch(x.flatten(0, 1), self.trigger_hi, self.trigger_lo,
                                              self.attack.target_label)
        return poisoned_x.view_as(x), poisoned_y.view_as(y)

    def gradients(self, gradients, params, x, y, rows, step):
        poisoned_x, poisoned_y = self.poisoned(x, y, rows)
        if self.options.blend != "mgda":
            return gradients.blended(params, x, y, poisoned_x, poisoned_y, float(self.options.blend_weight))
        grads_backdoor, loss_backdoor = gradients.task(params, poisoned_x, poisoned_y)
        grads_clean, loss_clean = gradients.task(params, x, y)
        count = x.shape[0]
        weight = mgda_backdoor_weights(
            torch.cat([g.reshape(count, -1) for g in grads_backdoor], dim=1),
            torch.cat([g.reshape(count, -1) for g in grads_clean], dim=1),
            loss_backdoor,
            loss_clean,
        ).to(loss_clean.dtype)
        # The gradient of a*L_b + (1-a)*L_c per row, without a third backward pass.
        blended = []
        for g_backdoor, g_clean in zip(grads_backdoor, grads_clean):
            column = weight.reshape(-1, *([1] * (g_backdoor.dim() - 1)))
            blended.append(g_backdoor * column + g_clean * (1.0 - column))
        return blended
