"""Main-task accuracy, test loss, backdoor accuracy and backdoor margin of a model on the test set.

A run scores its global model every round (or every `eval.every` rounds) on the same images, so
the work that does not depend on the model is done once per run: `TestSet` cuts the clean
batches and stamps the triggered ones when the run starts, and `Scorer` holds a copy of the
model prepared for scoring (`sim.models.scoring_copy`) into which each round's parameters are
loaded. The scores are those of the plain loop `evaluate` transcribes (the same batches, the
same forward values, the loss summed batch by batch in the same order), bit for bit; the
counts stay on the device until one read at the end of a scoring.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sim.attacks.data.registry import metric_name
from sim.lazy import F, inference_mode, nn, torch
from sim.models import load_flat_parameters_, scoring_copy

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["Scorer", "TestSet", "attack_metric_name", "evaluate", "is_scored_round", "margins", "score",
           "trigger_to_target_rate"]


def is_scored_round(round_index: int, rounds: int, every: int) -> bool:
    """Whether round `round_index` (from 0) of a run of `rounds` rounds is scored under
    `eval.every`: every `every`-th round (`every - 1`, `2 * every - 1`, ...) and the last."""
    return (round_index + 1) % every == 0 or round_index == rounds - 1


def attack_metric_name(attack_type: str) -> str:
    """What the `backdoor_accuracy` score measures under `attack.type`, for tables and plots: the
    triggered images sent to the target label are a backdoor's success only when the attack trains
    one (`DataPoisoningAttack.trains_backdoor`); otherwise it is the model's trigger-to-target rate."""
    return metric_name(attack_type)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


class TestSet:
    """The scoring batches of test tensors ``x, y``, cut and stamped once.

    ``clean`` holds the (images, labels) batches of ``batch_size`` consecutive test images;
    ``triggered`` the batches of the images whose label is not ``target_label``, in test-set
    order, ``batch_size`` at a time, each batch passed through ``stamp``; ``pieces`` the same
    batches passed through each of ``piece_stamps`` (parts of the trigger the attack is also
    scored by, DBA's pieces). The simulator's models use batch-statistics BatchNorm, so the scores
    depend on exactly these batches.
    """

    __test__ = False  # not a pytest class

    def __init__(self, x: Tensor, y: Tensor, *, target_label: int | None = None,
                 stamp: Callable[[Tensor], Tensor] | None = None, batch_size: int = 1000,
                 piece_stamps: Sequence[Callable[[Tensor], Tensor]] = ()):
        _check_batch_size(batch_size)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} images but y has {y.shape[0]} labels; pass matching test tensors")
        if x.shape[0] == 0:
            raise ValueError("the test set is empty; evaluation needs at least one image")
        if target_label is not None and stamp is None:
            raise ValueError("target_label is set but stamp is None; pass the trigger function or target_label=None")
        self.target_label = target_label
        self.num_clean = int(x.shape[0])
        self.clean = [(x[start : start + batch_size], y[start : start + batch_size])
                      for start in range(0, x.shape[0], batch_size)]
        self.triggered: list[Tensor] = []
        self.pieces: list[list[Tensor]] = []
        self.num_triggered = 0
        if target_label is None and piece_stamps:
            raise ValueError("piece_stamps are set but target_label is None; pass the target label")
        if target_label is not None:
            others = x[y != target_label]
            self.num_triggered = int(others.shape[0])

            def stamped(stamp_batch):
                return [stamp_batch(others[start : start + batch_size]) for start in range(0, others.shape[0], batch_size)]

            self.triggered = stamped(stamp)
            self.pieces = [stamped(piece) for piece in piece_stamps]


def margins(logits: Tensor, target_label: int) -> Tensor:
    """Per image, ``logits[target] - max(logits of the other classes)``: positive where the model
    gives the target class (docs/algorithms.md §6, the backdoor margin)."""
    others = logits.clone()
    others[:, target_label] = -math.inf
    return logits[:, target_label] - others.max(dim=1).values


@inference_mode
def score(model: nn.Module, test_set: TestSet, *, margin: bool = False) -> dict[str, float | None]:
    """Scores ``model`` (already holding the parameters to score) on ``test_set``.

    Returns ``main_accuracy`` (percent of clean images classified correctly), ``test_loss`` (mean
    cross-entropy per clean image) and ``backdoor_accuracy``: the percent of the test images
    whose true label is not the target that the model assigns to the target once triggered.
    Images of the target class are left out of that share, since calling them the target would
    be correct. ``backdoor_accuracy`` is None without a target label or when no test image has
    another label. With the test set's ``pieces``, ``backdoor_accuracy_pieces`` lists the same
    rate for each piece of the trigger alone. With ``margin``, ``backdoor_margin`` is the mean over
    the triggered images (those of ``backdoor_accuracy``) of ``logit[target] - max over the other
    classes' logits`` (`margins`), from the same forward passes (None where
    ``backdoor_accuracy`` is None); the other scores are the same with or without it.
    """
    losses, correct = [], []
    for images, labels in test_set.clean:
        logits = model(images)
        losses.append(F.cross_entropy(logits, labels, reduction="sum"))
        correct.append((logits.argmax(dim=1) == labels).sum())
    margin_sums = []

    def hit_count(batch: Tensor, keep_margin: bool) -> Tensor:
        logits = model(batch)
        if keep_margin:  # before the next call: the scoring copy reuses its buffers
            margin_sums.append(margins(logits, test_set.target_label).to(torch.float64).sum())
        return (logits.argmax(dim=1) == test_set.target_label).sum()

    hits = [[hit_count(triggered, margin and index == 0) for triggered in batches]
            for index, batches in enumerate([test_set.triggered, *test_set.pieces]) if batches]
    # One read from the device. The loss is summed as a Python float, batch by batch in order,
    # as the per-batch loop did (Python's sum() would compensate, and round differently).
    batch_losses = torch.stack(losses).tolist()
    counts = torch.stack([torch.stack(correct).sum(), *(torch.stack(batches).sum() for batches in hits)]).tolist()
    loss_sum = 0.0
    for value in batch_losses:
        loss_sum += value
    rates = [100.0 * count / test_set.num_triggered for count in counts[1:]]
    results: dict[str, Any] = {
        "main_accuracy": 100.0 * counts[0] / test_set.num_clean,
        "test_loss": loss_sum / test_set.num_clean,
        "backdoor_accuracy": rates[0] if rates else None,
    }
    if margin:
        results["backdoor_margin"] = (float(torch.stack(margin_sums).sum()) / test_set.num_triggered
                                      if margin_sums else None)
    if test_set.pieces:
        results["backdoor_accuracy_pieces"] = rates[1:] if rates else [None] * len(test_set.pieces)
    return results


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    target_label: int | None = None,
    stamp: Callable[[Tensor], Tensor] | None = None,
    batch_size: int = 1000,
) -> dict[str, float | None]:
    """Scores ``model`` on test tensors ``x, y`` once (`score` on a `TestSet` of them, the model
    called as it is); `stamp` adds the trigger to a batch of images. The scores depend on
    ``batch_size`` through the models' batch-statistics BatchNorm."""
    return score(model, TestSet(x, y, target_label=target_label, stamp=stamp, batch_size=batch_size))


def trigger_to_target_rate(model: nn.Module, x: Tensor, y: Tensor, target_label: int,
                           stamp: Callable[[Tensor], Tensor], batch_size: int = 1000) -> float | None:
    """The percent of test images whose true label is not `target_label` that `model` assigns to
    `target_label` once `stamp` has added a trigger (None when no image has another label); the
    triggered batches hold only non-target images."""
    others = x[y != target_label]
    if others.shape[0] == 0:
        return None
    with torch.inference_mode():
        hits = sum(int((model(stamp(others[start : start + batch_size])).argmax(dim=1) == target_label).sum())
                   for start in range(0, others.shape[0], batch_size))
    return 100.0 * hits / others.shape[0]


class Scorer:
    """Scores flat parameter vectors of ``model``'s shape on ``test_set``, round after round.

    It keeps its own scoring copy of the model (`sim.models.scoring_copy`: the same forward
    values, computed faster), built once; ``model`` itself is left as it is. Its scores include
    ``backdoor_margin`` (`score` with ``margin=True``).
    """

    def __init__(self, model: nn.Module, test_set: TestSet):
        self.model = scoring_copy(model)
        self.test_set = test_set

    def __call__(self, params: Tensor) -> dict[str, Any]:
        load_flat_parameters_(self.model, params)
        return {"backdoor_accuracy_pieces": [], **score(self.model, self.test_set, margin=True)}
