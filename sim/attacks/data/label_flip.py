"""Label flipping (docs/algorithms.md §2): every label of a malicious client's batch shifted by one
random r in 1..C-1 per batch, drawn from the client's order stream after its batch order."""

from __future__ import annotations

from sim.attacks.data.base import DataPoisoningAttack
from sim.attacks.data_poisoning import draw_label_shifts, flip_labels
from sim.lazy import torch


class LabelFlip(DataPoisoningAttack):
    """Task gradients on flipped labels, in the same gradient call as the benign rows."""

    name = "label_flip"
    description = "label flipping"

    def start_round(self, clients, roles, plans, steps) -> None:
        self.shifts = None
        if self.name not in roles:
            return
        # Zero for every other row, so a task group's labels are flipped in one pass.
        self.shifts = torch.zeros(len(roles), max(steps), dtype=torch.int64, device=self.device)
        for row, (role, plan) in enumerate(zip(roles, plans)):
            if role == self.name and plan is not None:
                self.shifts[row, : plan.num_steps] = draw_label_shifts(
                    plan.num_steps, self.dataset.num_classes, plan.generator).to(self.device)

    def poison_task_batch(self, x, y, rows, step):
        if self.shifts is None:
            return x, y
        index = torch.tensor(list(rows), device=self.device)
        return x, flip_labels(y, self.shifts[index, step][:, None], self.dataset.num_classes)
