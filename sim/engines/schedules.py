"""When and on what a client trains: the local learning-rate schedule (docs/algorithms.md §4) and
each client's minibatch schedule. Every engine takes both from here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sim import rng
from sim.errors import ConfigError
from sim.lazy import torch

if TYPE_CHECKING:
    from torch import Tensor


LR_SCHEDULES = ("constant", "step", "cosine")


def local_lr(training, round: int, rounds: int | None = None) -> float:
    """The local learning rate of every client in round `round` (0-based) of a `rounds`-round run.

    * `constant`: `lr`.
    * `step`: `lr * lr_gamma ** (round // lr_step_rounds)`.
    * `cosine`: `lr_min + (lr - lr_min) * (1 + cos(pi * round / rounds)) / 2`, from `lr` in
      round 0 towards `lr_min` (reached at `round = rounds`, one past the last round).

    `training` is the config section (objects without the schedule fields count as `constant`).
    Every engine takes its clients' learning rate from here. A cosine run extended with more
    rounds on resume follows the longer schedule from then on.
    """
    lr = float(training.lr)
    schedule = getattr(training, "lr_schedule", "constant")
    if schedule == "constant":
        return lr
    if schedule == "step":
        return lr * float(training.lr_gamma) ** (int(round) // int(training.lr_step_rounds))
    if schedule == "cosine":
        if rounds is None or rounds < 1:
            raise ValueError(f"the cosine schedule needs the run's number of rounds, got {rounds!r}")
        lr_min = float(training.lr_min)
        return lr_min + (lr - lr_min) * (1.0 + math.cos(math.pi * int(round) / int(rounds))) / 2.0
    raise ConfigError(
        f"training.lr_schedule={schedule!r} is not one of {', '.join(LR_SCHEDULES)}; fix: --set training.lr_schedule=constant"
    )


def num_local_steps(training, num_samples: int) -> int:
    """Local steps of a client holding `num_samples` samples: `local_steps`, or
    `local_epochs` passes of ceil(num_samples / batch_size) minibatches."""
    if training.local_steps is not None:
        return int(training.local_steps)
    return int(training.local_epochs) * math.ceil(num_samples / int(training.batch_size))


@dataclass
class BatchPlan:
    """Which samples a client trains on at each local step.

    `batch_order[e]` is epoch e's permutation of the client's sample ids (into the training
    set); step s reads epoch s // steps_per_epoch, slice [i*batch_size, (i+1)*batch_size) with
    i = s % steps_per_epoch, so an epoch's last batch is short when batch_size does not divide
    the sample count. `generator` is the client's order stream, left where the permutations
    end (label-flip shifts are drawn from it next).
    """

    batch_order: Tensor
    num_steps: int
    steps_per_epoch: int
    batch_size: int
    generator: torch.Generator

    def batch(self, step: int) -> tuple[Tensor, int]:
        """(sample ids, position of the step in its epoch) for local step `step`."""
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        start = step_in_epoch * self.batch_size
        return self.batch_order[epoch, start : start + self.batch_size], step_in_epoch


def plan_batches(sample_indices: Tensor, training, *, seed: int, client: int, round: int, device) -> BatchPlan:
    """The minibatch schedule of client `client` in round `round` (sample order from the
    `(seed, client, round)` order stream); the client must hold at least one sample."""
    num_samples = int(sample_indices.numel())
    batch_size = int(training.batch_size)
    generator = rng.torch_stream(seed, client, round, rng.BATCH_ORDER)
    num_steps = num_local_steps(training, num_samples)
    steps_per_epoch = math.ceil(num_samples / batch_size)
    num_epochs = math.ceil(num_steps / steps_per_epoch)
    # All epochs' sample orders up front: one transfer, then each batch is a slice.
    orders = torch.stack([torch.randperm(num_samples, generator=generator) for _ in range(num_epochs)])
    device = torch.device(device)
    batch_order = sample_indices.to(device)[orders.to(device)]
    return BatchPlan(batch_order, num_steps, steps_per_epoch, batch_size, generator)
