"""What a client computes in a round, written once for every engine (docs/algorithms.md §2).

`ClientTraining.run` trains a stack of clients (row k = the k-th client) from the global model:
each client's minibatches come from its `BatchPlan`, its role decides the loss at every step,
and the client defense's `UpdateRule` (`sim.defenses.client`) applies the step to all rows.
The engine only supplies gradients through a `Gradients` object (autograd on one model for one
row, `vmap` over the stack for many) and decides where the rows live.

Roles, per client:
* `benign`: cross-entropy on its batch; the client defense applies;
* the data-poisoning attack's name (malicious, `sim.attacks.data`): the attack object says how the
  row gets its gradient: the task loss on a poisoned copy of the batch, in the same gradient call
  as the benign rows (`joins_task_group`: label flipping), or a loss of its own (the backdoor's
  blend of the clean and the triggered batch, DBA, Neurotoxin). This module never matches an
  attack's name.
Malicious clients do not run the client defense unless `attack.follow_client_defense` (then they
run it exactly as the benign ones do, on the loss of their attack: a rule that takes the lookahead
gradient takes it of that loss); their update is multiplied by `attack.boost`.

Clients may need different numbers of steps or have a short last batch: at each step the active
rows are grouped by loss kind (the task, or an attack's own loss) and batch length (BatchNorm normalises over the batch, so padding
would change the maths), each group is one gradient call, and a finished row gets zero gradients
and zero momentum, which leaves it exactly where it is.

Randomness (batch order, label shifts, defense noise) comes from `(seed, client, round)`
streams, so a client's update is a pure function of the settings, the global model, those three
numbers and its role: training a client again, e.g. with another role, changes nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence

from sim.attacks.data.registry import build_attack, check_attack
from sim.data import Dataset
from sim.defenses.client import SGD, build_update_rule
from sim.engines.schedules import local_lr, num_local_steps, plan_batches
from sim.errors import ConfigError
from sim.lazy import torch
from sim.models import memory_format_name

if TYPE_CHECKING:
    from torch import Tensor

BENIGN = "benign"
# The server training on data of its own (FLTrust's root set): plain local SGD, no client defense,
# no attack, no boost.
SERVER = "server"


def is_attacker(role: str) -> bool:
    """Whether a row of this role is a malicious client (not a benign one, not the server's own
    training, which is plain task training without the client defense)."""
    return role not in (BENIGN, SERVER)

# Forward passes a client runs after its local training: the LeadFL code tests every client on
# its local test shard (one batch) before it returns its state dict.
LOCAL_TEST_PASSES = 1


class Gradients(Protocol):
    """How an engine differentiates the loss for a group of rows.

    `params` are `[r, ...]` tensors (one row per client of the group), `x` `[r, B, ...]` images
    and `y` `[r, B]` labels; every returned gradient is `[r, ...]`.
    """

    def task(self, params: list[Tensor], x: Tensor, y: Tensor) -> tuple[list[Tensor], Tensor]:
        """Gradients of each row's cross-entropy and the `[r]` losses."""
        ...

    def blended(self, params: list[Tensor], x: Tensor, y: Tensor, poisoned_x: Tensor, poisoned_y: Tensor,
                weight: float) -> list[Tensor]:
        """Gradients of `weight * L(poisoned) + (1 - weight) * L(clean)`, two forward passes."""
        ...


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_training_settings(training, attack, num_classes: int) -> None:
    """Raises `ConfigError` for `training` / `attack` settings no client can train with."""
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
            f"training.local_epochs = {training.local_epochs!r} must be an integer >= 1 (or set training.local_steps).",
        )
    else:
        _require(
            isinstance(training.local_steps, int) and training.local_steps >= 1,
            f"training.local_steps = {training.local_steps!r} must be an integer >= 1, or null to use "
            "training.local_epochs.",
        )
    check_attack(attack, num_classes)
    _require(attack.boost > 0, f"attack.boost = {attack.boost!r} must be > 0 (1 = no boosting).")
    memory_format_name(training)


class ClientTraining:
    """The settings-bound client computation every engine runs; see the module docstring.

    `training`, `attack` and `client_defense` are the config sections of those names; `names`
    the model's trainable parameter names (in `trainable_parameters` order) and `shapes` their
    shapes; `rounds` the run's length (for the learning-rate schedule).
    """

    def __init__(self, dataset: Dataset, training, attack, client_defense, *, names: Sequence[str], seed: int,
                 rounds: int | None, device, shapes: Sequence[Sequence[int]] | None = None,
                 malicious: Sequence[int] = ()):
        check_training_settings(training, attack, dataset.num_classes)
        self.dataset = dataset
        self.training = training
        self.attack = attack
        self.seed = int(seed)
        self.rounds = rounds
        self.device = torch.device(device)
        momentum = float(training.momentum)
        self.rule = build_update_rule(client_defense, momentum=momentum, names=names, shapes=shapes)
        # Rows none of which runs the client defense take plain SGD.
        self.plain_rule = SGD(client_defense, momentum=momentum, names=names)
        # The data-poisoning attack (sim.attacks.data): the role of the malicious clients, None for `none`.
        self.poisoning = build_attack(attack, dataset, self.device, malicious)
        # Whether the malicious clients run the client defense too (attack.follow_client_defense).
        self.follow = bool(getattr(attack, "follow_client_defense", False))

    def roles(self, clients: Sequence[int], malicious) -> list[str]:
        """Each client's role: the attack for a malicious client (when there is one), else benign."""
        if self.poisoning is None:
            return [BENIGN] * len(clients)
        return [self.poisoning.name if client in malicious else BENIGN for client in clients]

    def forward_passes(self, roles: Sequence[str], client_indices: Sequence[Tensor]) -> list[int]:
        """Each client's training-mode forward passes in a round: what every BatchNorm layer's
        `num_batches_tracked` counter would have grown by in the LeadFL code's state dicts.

        Per local step: the attack's `passes_per_step` for a malicious row (2 for `backdoor`: the
        triggered and the clean batch, MGDA or fixed blend; 1 for `label_flip`), 1 for plain
        benign training, and for a benign row under the client
        defense 2 if its rule evaluates the lookahead gradient (LeadFL `hessian`), else 1 (the
        authors' LeadFL, `original`, runs one forward pass per batch: its second step reuses
        the gradient). Plus `LOCAL_TEST_PASSES`. A client without data trains no step.
        """
        counts = []
        for role, indices in zip(roles, client_indices):
            samples = int(indices.numel())
            steps = num_local_steps(self.training, samples) if samples > 0 else 0
            if is_attacker(role):
                # Following the defense, the attack's loss is evaluated again at the lookahead point.
                per_step = self.poisoning.passes_per_step * (2 if self.follow and self.rule.needs_lookahead else 1)
            elif role == BENIGN and self.rule.needs_lookahead:
                per_step = 2
            else:
                per_step = 1
            counts.append(steps * per_step + LOCAL_TEST_PASSES)
        return counts

    def batchnorm_counters(self, roles: Sequence[str], client_indices: Sequence[Tensor], layers: int) -> Tensor:
        """`[n, layers]` float64: every BatchNorm layer counts each client's `forward_passes`."""
        passes = torch.tensor(self.forward_passes(roles, client_indices), dtype=torch.float64)
        return passes[:, None].repeat(1, layers)

    def run(self, gradients: Gradients, params: list[Tensor], global_params: Tensor, clients: Sequence[int],
            roles: Sequence[str], client_indices: Sequence[Tensor], round: int, out: Tensor) -> None:
        """Trains `clients` (row k has role `roles[k]` and samples `client_indices[k]`) from
        `global_params`; `params` are the `[n, ...]` rows the engine trains in place (already
        holding the global model), `out` the `[n, d]` updates `local - global` written here."""
        n = len(clients)
        lr = local_lr(self.training, round, self.rounds)
        defended = [role == BENIGN or (self.follow and is_attacker(role)) for role in roles]
        # A rule with per-client state trains every row, so that state follows every client.
        rule = self.rule if any(defended) or self.rule.keeps_client_state else self.plain_rule
        rule.start(params, defended, clients=clients, seed=self.seed, round=round)
        plans = [
            plan_batches(indices, self.training, seed=self.seed, client=client, round=round, device=self.device)
            if indices.numel() > 0
            else None  # a client without data leaves the model unchanged
            for client, indices in zip(clients, client_indices)
        ]
        steps = [plan.num_steps if plan is not None else 0 for plan in plans]
        if self.poisoning is not None:
            self.poisoning.start_round(clients, roles, plans, steps)
        lookahead_rows = defended if rule.needs_lookahead else None

        finished = [False] * n
        for step in range(max(steps, default=0)):
            active = [step < count for count in steps]
            newly_finished = [row for row in range(n) if not active[row] and not finished[row]]
            if newly_finished:
                rule.finish_rows(newly_finished)
                for row in newly_finished:
                    finished[row] = True
            batches = [plans[row].batch(step) if active[row] else (None, 0) for row in range(n)]
            grads, lookahead = self._gradients(gradients, params, roles, batches, step, lookahead_rows, lr)
            rule.step(grads, lookahead, active, [position for _, position in batches], lr)
        rule.finish_rows([row for row in range(n) if not finished[row]])

        with torch.no_grad():
            torch.cat([p.reshape(n, -1) for p in params], dim=1, out=out)
            out.sub_(global_params)
            boosted = [row for row, role in enumerate(roles) if is_attacker(role)]
            if boosted and self.attack.boost != 1:
                index = torch.tensor(boosted, device=out.device)
                out.index_copy_(0, index, out.index_select(0, index).mul_(float(self.attack.boost)))

    @property
    def needs_last_global_update(self) -> bool:
        return self.poisoning is not None and self.poisoning.needs_last_global_update

    def observe_global_update(self, update: Tensor | None) -> None:
        """What the last round added to the global model, for an attack that reads it."""
        if self.needs_last_global_update:
            self.poisoning.observe_global_update(update)

    def client_state(self, clients: Sequence[int] | None = None) -> dict:
        """The client defense's per-client state kept across rounds, `{client: state}` (empty
        unless the rule keeps some), for `clients` (default: all)."""
        return self.rule.client_state(clients)

    def load_client_state(self, entries: dict) -> None:
        self.rule.load_client_state(entries)

    def state_dict(self) -> dict | None:
        """What a checkpoint keeps of the client computation: None without per-client state."""
        if not self.rule.keeps_client_state:
            return None
        return {"clients": self.client_state()}

    def load_state_dict(self, state: dict | None) -> None:
        """Replaces the per-client state by `state` (None: none kept yet)."""
        if self.rule.keeps_client_state:
            self.rule.clear_client_state()
        if state is not None:
            self.load_client_state(state["clients"])

    # ---------------------------------------------------------------------------------------

    def _gradients(self, gradients, params, roles, batches, step, lookahead_rows, lr):
        """Every active row's gradient at this step (zero for finished rows) and, when the rule
        asks for it, the lookahead gradient of its defended rows (the plain gradient elsewhere)."""
        n = len(roles)
        groups: dict[tuple[str, int], list[int]] = {}
        for row, (indices, _) in enumerate(batches):
            if indices is not None:
                own = is_attacker(roles[row]) and not self.poisoning.joins_task_group
                kind = roles[row] if own else "task"
                groups.setdefault((kind, int(indices.numel())), []).append(row)

        whole = len(groups) == 1 and len(next(iter(groups.values()))) == n
        grads = lookahead = None
        if not whole:
            grads = [torch.zeros_like(p) for p in params]
            lookahead = [torch.zeros_like(p) for p in params] if lookahead_rows is not None else None
        for (kind, _), rows in groups.items():
            group_params = params if len(rows) == n else self._rows(params, rows)
            indices = torch.stack([batches[row][0] for row in rows])
            x = self.dataset.train_x[indices]
            y = self.dataset.train_y[indices]
            if kind == "task":
                if self.poisoning is not None:
                    x, y = self.poisoning.poison_task_batch(x, y, rows, step)
                group_grads, _ = gradients.task(group_params, x, y)
            else:
                group_grads = self.poisoning.gradients(gradients, group_params, x, y, rows, step)
            group_lookahead = None
            if lookahead_rows is not None:
                positions = [position for position, row in enumerate(rows) if lookahead_rows[row]]
                if kind == "task":
                    def loss(lookahead_params, x, y, subset):
                        return gradients.task(lookahead_params, x, y)[0]
                else:  # an attack's own loss, for its rows that follow the client defense
                    def loss(lookahead_params, x, y, subset, step=step):
                        return self.poisoning.gradients(gradients, lookahead_params, x, y, subset, step)
                group_lookahead = self._lookahead(loss, group_params, list(group_grads), x, y,
                                                  [rows[position] for position in positions], positions, lr)
            if whole:
                grads, lookahead = list(group_grads), group_lookahead
            else:
                index = self._index(rows)
                for full, part in zip(grads, group_grads):
                    full.index_copy_(0, index, part)
                if lookahead is not None:
                    for full, part in zip(lookahead, group_lookahead):
                        full.index_copy_(0, index, part)
        return grads, lookahead

    def _index(self, rows: Sequence[int]) -> Tensor:
        return torch.tensor(list(rows), device=self.device)

    def _rows(self, tensors: list[Tensor], rows: Sequence[int]) -> list[Tensor]:
        index = self._index(rows)
        return [t.index_select(0, index) for t in tensors]

    def _lookahead(self, loss, params, grads, x, y, subset, positions, lr) -> list[Tensor]:
        """g~ = grad L(W - lr*g; same batch) at `positions` of a group (rows `subset` of the
        round), `grads` elsewhere; `loss(params, x, y, subset)` gives the gradients of L."""
        if not positions:
            return grads
        everyone = len(positions) == x.shape[0]
        if not everyone:
            index = self._index(positions)
            params, sub_grads = self._rows(params, positions), self._rows(grads, positions)
            x, y = x.index_select(0, index), y.index_select(0, index)
        else:
            sub_grads = grads
        with torch.no_grad():
            lookahead_params = torch._foreach_add(params, sub_grads, alpha=-lr)
        lookahead_grads = loss(lookahead_params, x, y, subset)
        if everyone:
            return list(lookahead_grads)
        return [full.index_copy(0, index, part) for full, part in zip(grads, lookahead_grads)]
