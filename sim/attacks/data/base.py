"""What a data-poisoning attack is to the rest of the simulator (docs/architecture.md, "How to add
an attack").

A data-poisoning attack changes what a malicious client trains on. It is the role of the selected
malicious clients (`ClientTraining.roles`) and owns everything that depends on which attack it is:

* its settings (`settings`, a dataclass of `sim.settings.setting` fields, the config section
  `attack.<name>`) and the checks of the shared `attack.*` settings it reads (`check`);
* how its rows get their gradients each local step: either by the plain task loss on a poisoned
  copy of the batch, computed together with the benign rows of the same batch length
  (`joins_task_group`, `poison_task_batch`), or by a loss of its own (`gradients`);
* the randomness it draws per round (`start_round`, from each client's order stream, so a client's
  update stays a pure function of the settings, the global model, seed, client, round and role);
* the forward passes a step costs (`passes_per_step`, for the BatchNorm counters and the batched
  engine's memory estimate) and the passes-plus-backward cost the sweep's dry run counts
  (`training_cost`);
* what it reads of the run besides its batches: `needs_last_global_update` asks for what the
  previous round added to the global model (`observe_global_update`, called after every round and
  again after a resume, from the copy the checkpoint keeps);
* how it is scored: `trains_backdoor` says whether the triggered test set measures the attack's
  success (the metric name of `metric_name`), `description` words it in captions, and
  `trigger_pieces` lists parts of the trigger scored one by one (a second metric).

`ClientTraining`, the engines, metrics, compare and sweep call these; none of them matches an
attack's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence


if TYPE_CHECKING:
    from torch import Tensor

# The metric names of the `backdoor_accuracy` score.
BACKDOOR_METRIC = "backdoor accuracy"
TRIGGER_RATE_METRIC = "trigger-to-target rate (no backdoor trained)"


class DataPoisoningAttack:
    """The base: a role whose rows train on the clean task (a do-nothing attack).

    `settings` is the attack's own settings (an instance of `cls.settings`, or None), `attack` the
    whole `attack` section (shared settings: `target_label`, `trigger_values`, `boost`), `dataset`
    the run's `sim.data.Dataset`, `malicious` the run's malicious client ids.
    """

    name = ""
    settings: type | None = None
    description = ""
    trains_backdoor = False
    joins_task_group = True
    passes_per_step = 1
    needs_last_global_update = False

    def __init__(self, settings: Any, attack: Any, dataset, device, malicious: Sequence[int] = ()):
        self.options = settings
        self.attack = attack
        self.dataset = dataset
        self.device = device
        self.malicious = sorted(int(client) for client in malicious)

    @classmethod
    def check(cls, settings: Any, attack: Any, num_classes: int) -> None:
        """Raises `ConfigError` for settings this attack cannot train with (beyond their declared
        ranges, which `sim.settings.check_settings` has checked)."""

    @classmethod
    def training_cost(cls, settings: Any) -> int:
        """Forward plus backward passes of one local step, for the sweep's cost estimate (a benign
        step costs 3: one forward, a backward of two passes' work)."""
        return 3

    @classmethod
    def metric_name(cls) -> str:
        return BACKDOOR_METRIC if cls.trains_backdoor else TRIGGER_RATE_METRIC

    def observe_global_update(self, update: Tensor | None) -> None:
        """`needs_last_global_update`: the flat `[d]` update the last round added to the global
        model (None before the first round)."""

    def start_round(self, clients: Sequence[int], roles: Sequence[str], plans: Sequence[Any],
                    steps: Sequence[int]) -> None:
        """Before a round's first step: `plans[k]` is row k's `BatchPlan` (None without data)."""

    def poison_task_batch(self, x: Tensor, y: Tensor, rows: Sequence[int], step: int) -> tuple[Tensor, Tensor]:
        """`joins_task_group`: the `[r, B, ...]` images and `[r, B]` labels of a task group (rows
        `rows` of the round, benign ones among them) with this attack's rows poisoned."""
        return x, y

    def gradients(self, gradients, params: list[Tensor], x: Tensor, y: Tensor, rows: Sequence[int],
                  step: int) -> list[Tensor]:
        """Not `joins_task_group`: the gradients of this attack's loss for rows `rows` (all of them
        this attack's) on their clean batch `x`, `y`, through the engine's `Gradients`."""
        raise NotImplementedError

    @classmethod
    def trigger_pieces(cls, settings: Any) -> list[tuple[tuple[int, int, bool], ...]]:
        """Parts of the trigger (pixel lists as `sim.attacks.data_poisoning.TRIGGER_PIXELS`) the
        test set is also scored with, one by one (none here)."""
        return []
