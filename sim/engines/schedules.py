"""One client's local training, benign or malicious, returning its update `local - global`.

A `LocalTrainer` owns one model instance (plus a twin for LeadFL's lookahead) and reuses it for
every client: loading the global vector is one in-place copy, a minibatch is an index gather
from the dataset tensors already on the device, and the optimizer steps are multi-tensor
(`torch._foreach_*`) ops on preallocated state. A step therefore costs about what a bare
`torch.optim.SGD` loop costs.

Client roles per step, with SGD(lr, momentum) throughout:
* benign, client defense `none` / `ldp` / `flwbc`: an SGD-momentum step, then the defense's
  noise (see `sim.defenses.client`);
* benign, `leadfl`: the LeadFL update through `leadfl_ext` in the configured variant;
* malicious `backdoor`: the batch and its fully triggered copy relabelled to the target, loss
  `a*L_backdoor + (1-a)*L_clean` with `a` from two-task MGDA or fixed, update times `boost`;
* malicious `label_flip`: plain training on labels shifted by a random r in 1..C-1 per batch.
Malicious clients never run the client defense.

Randomness (batch order, label shifts, defense noise) comes from generators seeded by
`(seed, client, round)`, so a client's update is a pure function of the configuration, the
global parameters and those three numbers.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sim.attacks.data_poisoning import (
    ATTACK_TYPES,
    BLEND_RULES,
    draw_label_shifts,
    flip_labels,
    mgda_backdoor_weight_tensor,
    poison_batch,
)
from sim.data import Dataset
from sim.defenses.client import LEADFL_VARIANTS, build_client_defense
from sim.errors import ConfigError
from sim.models import build_model, load_flat_parameters_, trainable_parameters

# Independent random streams per (seed, client, round).
_STREAM_BATCH_ORDER = 0
_STREAM_DEFENSE_NOISE = 1


def derive_seed(*words: int) -> int:
    """A 63-bit seed that depends on every word (distinct tuples give unrelated streams)."""
    state = np.random.SeedSequence([int(word) for word in words]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def noise_generator(seed: int, client: int, round: int, device) -> torch.Generator:
    """The client-defense noise stream of client `client` in round `round`, on `device`."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(derive_seed(seed, client, round, _STREAM_DEFENSE_NOISE))
    return generator


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

    def batch_length(self, step: int) -> int:
        num_samples = self.batch_order.shape[1]
        start = (step % self.steps_per_epoch) * self.batch_size
        return min(self.batch_size, num_samples - start)


def plan_batches(sample_indices: Tensor, training, *, seed: int, client: int, round: int, device) -> BatchPlan:
    """The minibatch schedule of client `client` in round `round` (sample order from the
    `(seed, client, round)` order stream); the client must hold at least one sample."""
    num_samples = int(sample_indices.numel())
    batch_size = int(training.batch_size)
    generator = torch.Generator().manual_seed(derive_seed(seed, client, round, _STREAM_BATCH_ORDER))
    num_steps = num_local_steps(training, num_samples)
    steps_per_epoch = math.ceil(num_samples / batch_size)
    num_epochs = math.ceil(num_steps / steps_per_epoch)
    # All epochs' sample orders up front: one transfer, then each batch is a slice.
    orders = torch.stack([torch.randperm(num_samples, generator=generator) for _ in range(num_epochs)])
    device = torch.device(device)
    batch_order = sample_indices.to(device)[orders.to(device)]
    return BatchPlan(batch_order, num_steps, steps_per_epoch, batch_size, generator)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate_training_settings(training, attack, client_defense, num_classes: int) -> None:
    """Raises `ConfigError` for settings the trainer cannot run."""
    _require(training.lr > 0, f"training.lr = {training.lr!r} must be > 0. Set e.g. training.lr=0.01.")
    _require(
        0 <= training.momentum < 1,
        f"training.momentum = {training.momentum!r} must be in [0, 1). Set e.g. training.momentum=0.1.",
    )
    _require(
        isinstance(training.batch_size, int) and training.batch_size >= 1,
        f"training.batch_size = {training.batch_size!r} must be an integer >= 1. Set e.g. training.batch_size=16.",
    )
    if training.local_steps is None:
        _require(
            isinstance(training.local_epochs, int) and training.local_epochs >= 1,
            f"training.local_epochs = {training.local_epochs!r} must be an integer >= 1 "
            "(or set training.local_steps).",
        )
    else:
        _require(
            isinstance(training.local_steps, int) and training.local_steps >= 1,
            f"training.local_steps = {training.local_steps!r} must be an integer >= 1, or null to "
            "use training.local_epochs.",
        )
    _require(
        attack.type in ATTACK_TYPES,
        f"attack.type = {attack.type!r} is not a known attack; allowed: {', '.join(ATTACK_TYPES)}.",
    )
    if attack.type == "backdoor":
        _require(
            isinstance(attack.target_label, int) and 0 <= attack.target_label < num_classes,
            f"attack.target_label = {attack.target_label!r} must be a class id in 0..{num_classes - 1}.",
        )
        _require(
            attack.blend in BLEND_RULES,
            f"attack.blend = {attack.blend!r} is not a known blend rule; allowed: {', '.join(BLEND_RULES)}.",
        )
        _require(
            0 <= attack.blend_weight <= 1,
            f"attack.blend_weight = {attack.blend_weight!r} must be in [0, 1] (the backdoor loss's weight).",
        )
    _require(attack.boost > 0, f"attack.boost = {attack.boost!r} must be > 0 (1 = no boosting).")
    if client_defense.type == "leadfl":
        _require(
            client_defense.variant in LEADFL_VARIANTS,
            f"client_defense.variant = {client_defense.variant!r} is not a LeadFL variant; allowed: "
            f"{', '.join(LEADFL_VARIANTS)}.",
        )
        _require(client_defense.q > 0, f"client_defense.q = {client_defense.q!r} must be > 0 (the clip bound).")
        _require(client_defense.alpha >= 0, f"client_defense.alpha = {client_defense.alpha!r} must be >= 0.")


def _import_leadfl_ext():
    try:
        import leadfl_ext
    except ImportError as error:
        raise ConfigError(
            f"client_defense.type = 'leadfl' needs the leadfl_ext package, which failed to import "
            f"({error}). Build and install it with `pip install -e .` from the repository root."
        ) from error
    return leadfl_ext


class LocalTrainer:
    """Trains one client at a time from a global parameter vector; see the module docstring.

    `training`, `attack` and `client_defense` are the config sections of those names (any
    objects with the fields of the YAML schema).
    """

    def __init__(self, model_name: str, dataset: Dataset, training, attack, client_defense, device, *, rounds=None):
        validate_training_settings(training, attack, client_defense, dataset.num_classes)
        self.dataset = dataset
        self.training = training
        self.rounds = rounds  # the run's length, for the cosine learning-rate schedule
        self.attack = attack
        self.client_defense = client_defense
        self.device = torch.device(device)
        self.lr = float(training.lr)
        self.momentum = float(training.momentum)
        self.batch_size = int(training.batch_size)

        self.model = build_model(model_name, dataset.image_shape, dataset.num_classes).to(self.device)
        named = trainable_parameters(self.model)
        self.param_names = [name for name, _ in named]
        self.params = [param for _, param in named]
        # Detached aliases of the parameters: in-place updates on them skip autograd's checks
        # and land in the same storage the model reads.
        self.param_data = [param.detach() for param in self.params]
        self.num_parameters = sum(param.numel() for param in self.params)
        self.momentum_buffers = [torch.zeros_like(param) for param in self.param_data]

        self.defense = build_client_defense(client_defense, self.param_names, self.params, lr=self.lr)
        self.leadfl_variant = client_defense.variant if client_defense.type == "leadfl" else None
        self.leadfl_ext = _import_leadfl_ext() if self.leadfl_variant else None
        if self.leadfl_variant == "hessian":
            # The lookahead point W~ = W - lr*g lives in a twin model, so its forward pass needs
            # no parameter swapping and no per-step allocation.
            self.lookahead_model = copy.deepcopy(self.model)
            self.lookahead_params = [param for _, param in trainable_parameters(self.lookahead_model)]
            self.lookahead_data = [param.detach() for param in self.lookahead_params]
        if self.leadfl_variant == "paper":
            self.deltas = [torch.zeros_like(param) for param in self.param_data]
        self.trigger_hi = dataset.trigger_hi.to(self.device)
        self.trigger_lo = dataset.trigger_lo.to(self.device)

    # ---------------------------------------------------------------------------------------

    def steps_per_epoch(self, num_samples: int) -> int:
        return math.ceil(num_samples / self.batch_size)

    def num_steps(self, num_samples: int) -> int:
        return num_local_steps(self.training, num_samples)

    def train(
        self,
        global_params: Tensor,
        sample_indices: Tensor,
        *,
        malicious: bool,
        seed: int,
        client: int,
        round: int,
        out: Tensor | None = None,
    ) -> Tensor:
        """Trains client `client` in round `round` on `sample_indices` of the training set,
        starting from `global_params`, and returns (or writes into `out`) `local - global`."""
        if out is None:
            out = torch.empty(self.num_parameters, dtype=global_params.dtype, device=self.device)
        num_samples = int(sample_indices.numel())
        if num_samples == 0:
            return out.zero_()  # a client without data leaves the model unchanged

        load_flat_parameters_(self.model, global_params)
        for buffer in self.momentum_buffers:
            buffer.zero_()
        self.lr = local_lr(self.training, round, self.rounds)
        if hasattr(self.defense, "lr"):
            self.defense.lr = self.lr  # the noise defenses scale their noise by the current lr

        plan = plan_batches(sample_indices, self.training, seed=seed, client=client, round=round, device=self.device)
        batch_order, num_steps, steps_per_epoch = plan.batch_order, plan.num_steps, plan.steps_per_epoch
        order_generator = plan.generator

        attack_type = self.attack.type if malicious else "none"
        if attack_type == "backdoor":
            self._train_backdoor(batch_order, num_steps, steps_per_epoch)
        elif attack_type == "label_flip":
            shifts = draw_label_shifts(num_steps, self.dataset.num_classes, order_generator).to(self.device)
            self._train_plain(batch_order, num_steps, steps_per_epoch, label_shifts=shifts)
        elif self.leadfl_variant is not None:
            self._train_leadfl(batch_order, num_steps, steps_per_epoch)
        else:
            self.defense.start_local_training(noise_generator(seed, client, round, self.device))
            self._train_plain(batch_order, num_steps, steps_per_epoch, defense=self.defense)

        with torch.no_grad():
            torch.cat([param.reshape(-1) for param in self.param_data], out=out)
            out.sub_(global_params)
            if malicious and self.attack.type != "none" and self.attack.boost != 1:
                out.mul_(float(self.attack.boost))
        return out

    # ---------------------------------------------------------------------------------------

    def _batch(self, batch_order: Tensor, step: int, steps_per_epoch: int) -> tuple[Tensor, Tensor, int]:
        epoch, step_in_epoch = divmod(step, steps_per_epoch)
        start = step_in_epoch * self.batch_size
        indices = batch_order[epoch, start : start + self.batch_size]
        x = self.dataset.train_x.index_select(0, indices)
        y = self.dataset.train_y.index_select(0, indices)
        return x, y, step_in_epoch

    def _loss(self, model, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(x), y)

    @torch.no_grad()
    def _momentum_sgd_step(self, grads) -> None:
        if self.momentum:
            torch._foreach_mul_(self.momentum_buffers, self.momentum)
            torch._foreach_add_(self.momentum_buffers, grads)
            torch._foreach_add_(self.param_data, self.momentum_buffers, alpha=-self.lr)
        else:
            torch._foreach_add_(self.param_data, grads, alpha=-self.lr)

    def _train_plain(self, batch_order, num_steps, steps_per_epoch, *, label_shifts=None, defense=None) -> None:
        for step in range(num_steps):
            x, y, step_in_epoch = self._batch(batch_order, step, steps_per_epoch)
            if label_shifts is not None:
                y = flip_labels(y, label_shifts[step], self.dataset.num_classes)
            grads = torch.autograd.grad(self._loss(self.model, x, y), self.params)
            self._momentum_sgd_step(grads)
            if defense is not None:
                defense.after_step(step_in_epoch, grads)

    def _train_backdoor(self, batch_order, num_steps, steps_per_epoch) -> None:
        use_mgda = self.attack.blend == "mgda"
        fixed_weight = float(self.attack.blend_weight)
        for step in range(num_steps):
            x, y, _ = self._batch(batch_order, step, steps_per_epoch)
            poisoned_x, poisoned_y = poison_batch(x, self.trigger_hi, self.trigger_lo, self.attack.target_label)
            # Two forward passes, so BatchNorm normalises clean and triggered images separately.
            loss_backdoor = self._loss(self.model, poisoned_x, poisoned_y)
            loss_clean = self._loss(self.model, x, y)
            if use_mgda:
                grads_backdoor = torch.autograd.grad(loss_backdoor, self.params)
                grads_clean = torch.autograd.grad(loss_clean, self.params)
                weight = mgda_backdoor_weight_tensor(
                    torch.cat([g.reshape(-1) for g in grads_backdoor]),
                    torch.cat([g.reshape(-1) for g in grads_clean]),
                    loss_backdoor,
                    loss_clean,
                ).to(loss_clean.dtype)
                # The gradient of a*L_b + (1-a)*L_c, without a third backward pass.
                grads = torch._foreach_mul(grads_backdoor, weight)
                torch._foreach_add_(grads, torch._foreach_mul(grads_clean, 1.0 - weight))
            else:
                blended = fixed_weight * loss_backdoor + (1.0 - fixed_weight) * loss_clean
                grads = torch.autograd.grad(blended, self.params)
            self._momentum_sgd_step(grads)

    # ---------------------------------------------------------------------------------------
    # LeadFL

    def _train_leadfl(self, batch_order, num_steps, steps_per_epoch) -> None:
        if self.leadfl_variant == "original":
            self._train_leadfl_original(batch_order, num_steps, steps_per_epoch)
            return
        lr, mu = self.lr, self.momentum
        alpha, q = float(self.client_defense.alpha), float(self.client_defense.q)
        ext = self.leadfl_ext
        hessian = self.leadfl_variant == "hessian"
        if not hessian:
            for delta in self.deltas:
                delta.zero_()
        for step in range(num_steps):
            x, y, _ = self._batch(batch_order, step, steps_per_epoch)
            grads = list(torch.autograd.grad(self._loss(self.model, x, y), self.params))
            if hessian:
                with torch.no_grad():
                    torch._foreach_copy_(self.lookahead_data, self.param_data)
                    torch._foreach_add_(self.lookahead_data, grads, alpha=-lr)
                lookahead_grads = list(
                    torch.autograd.grad(self._loss(self.lookahead_model, x, y), self.lookahead_params)
                )
            with torch.no_grad():
                if mu:
                    # Momentum carries the task gradient only: W -= lr*mu*v_prev here, the
                    # LeadFL op then takes W -= lr*g + lr*alpha*R, and v = mu*v_prev + g.
                    torch._foreach_mul_(self.momentum_buffers, mu)
                    torch._foreach_add_(self.param_data, self.momentum_buffers, alpha=-lr)
                if hessian:
                    ext.fused_step_(self.param_data, grads, lookahead_grads, lr=lr, alpha=alpha, q=q)
                else:
                    ext.paper_step_(self.param_data, grads, self.deltas, lr=lr, alpha=alpha, q=q)
                    if mu:
                        # D is the step's total change, the momentum shift included.
                        torch._foreach_add_(self.deltas, self.momentum_buffers, alpha=-lr)
                if mu:
                    torch._foreach_add_(self.momentum_buffers, grads)

    def _train_leadfl_original(self, batch_order, num_steps, steps_per_epoch) -> None:
        ext = self.leadfl_ext
        optimizer = ext.LeadFL(
            ext.leadfl_param_groups(self.model),
            lr=self.lr,
            alpha=float(self.client_defense.alpha),
            q=float(self.client_defense.q),
            variant="original",
            momentum=self.momentum,
        )
        for step in range(num_steps):
            x, y, step_in_epoch = self._batch(batch_order, step, steps_per_epoch)
            if step_in_epoch == 0:
                optimizer.reset_local_epoch()

            def closure(x=x, y=y):
                optimizer.zero_grad()
                loss = self._loss(self.model, x, y)
                loss.backward()
                return loss

            optimizer.step(closure)
        optimizer.zero_grad()
